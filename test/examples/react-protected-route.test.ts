// The React protected-route example, built with Vite and driven in headless Chromium against a stub gateway.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { extname, join, resolve } from 'node:path';
import type { Browser } from 'playwright-core';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from '../helpers/chromium.js';

const example = resolve(import.meta.dirname, '../../examples/react-protected-route');
const KEY = 'sk-example-valid-key';
let outDir: string;
let server: Server;
let origin: string;
let browser: Browser;
let verifyCalls = 0;

beforeAll(async () => {
  outDir = mkdtempSync(join(tmpdir(), 'vllm-kit-react-example-'));
  await build({
    configFile: join(example, 'vite.config.ts'),
    logLevel: 'silent',
    build: { outDir, emptyOutDir: true },
  });
  server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/auth/verify') {
      verifyCalls++;
      const ok = req.headers.authorization === `Bearer ${KEY}`;
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
      res.end(ok ? '{"id":"key_1","name":"alice"}' : '{"error":{"message":"invalid key"}}');
      return;
    }
    // Static files, and index.html for every client-side route.
    const file =
      url.pathname.startsWith('/assets/') && !url.pathname.includes('..') ? url.pathname : '/index.html';
    try {
      const body = readFileSync(join(outDir, file));
      res.writeHead(200, { 'content-type': extname(file) === '.js' ? 'text/javascript' : 'text/html' });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  origin = `http://localhost:${(server.address() as AddressInfo).port}`;
  browser = await launchChromium();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await new Promise((done) => server?.close(done));
  if (outDir) rmSync(outDir, { recursive: true, force: true });
});

describe('examples/react-protected-route', () => {
  it('guards the routes and verifies the key once across navigations and reloads', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      // No key: the protected route sends us to the login page, without asking the gateway.
      await page.goto(`${origin}/chat`);
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      expect(verifyCalls).toBe(0);

      await page.getByLabel('API key').fill(KEY);
      await page.getByRole('button', { name: 'Continue' }).click();
      await expect.poll(() => page.getByTestId('who').textContent()).toBe('Signed in as alice');
      expect(verifyCalls).toBe(1);

      // Navigating between protected routes reuses the cached answer: no more requests.
      for (const name of ['Settings', 'Chat', 'Settings']) {
        await page.getByRole('button', { name }).click();
        await expect.poll(() => page.getByTestId('page').textContent()).toBe(name);
      }
      await page.reload();
      await expect.poll(() => page.getByTestId('who').textContent()).toBe('Signed in as alice');
      expect(verifyCalls).toBe(1);

      // Log out: back to the login page, and the protected routes are closed again.
      await page.getByRole('button', { name: 'Log out' }).click();
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      await page.goto(`${origin}/settings`);
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();

      // A wrong key is refused by the gateway.
      await page.getByLabel('API key').fill('sk-wrong');
      await page.getByRole('button', { name: 'Continue' }).click();
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      await expect.poll(() => verifyCalls).toBe(2);
    } finally {
      await context.close();
    }
  }, 60_000);
});
