// vllm-kit/browser in real headless Chromium (Debian's chromium, driven by playwright-core), against a loopback
// server that counts /auth/verify requests.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { buildSync } from 'esbuild';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { launchChromium } from '../helpers/chromium.js';

const root = resolve(import.meta.dirname, '../..');
const TOKEN = 'sk-browser-test-0123456789';

let server: Server;
let origin: string;
let browser: Browser;
let verifyCalls = 0;
let bundleDir: string;

const PAGE = `<!doctype html><meta charset="utf-8"><title>t</title>
<script type="module">
import { createBrowserTokenCache } from '/dist/browser.js';
window.__now = 1_000_000;
window.__verify = async (token) => {
  const res = await fetch('/auth/verify', { headers: { authorization: 'Bearer ' + token } });
  if (res.status === 401) return null;
  if (!res.ok) throw new Error('verify failed: ' + res.status);
  return res.json();
};
window.makeCache = (extra = {}) => {
  window.cache = createBrowserTokenCache({ verify: window.__verify, now: () => window.__now, ...extra });
  window.cache.onInvalidate(() => { window.__loggedOut = true; });
  return window.cache.backend;
};
window.__ready = true;
</script>`;

beforeAll(async () => {
  // The browser entry bundled on its own (the package test checks the shipped dist/browser.js for Node built-ins).
  bundleDir = mkdtempSync(join(tmpdir(), 'vllm-kit-browser-'));
  buildSync({
    entryPoints: [join(root, 'src/browser/index.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    outfile: join(bundleDir, 'browser.js'),
  });
  server = createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/auth/verify') {
      verifyCalls++;
      if (req.headers.authorization === `Bearer ${TOKEN}`) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id: 'key_1', name: 'alice' }));
      } else {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(
          '{"error":{"message":"invalid key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}',
        );
      }
      return;
    }
    if (url === '/dist/browser.js') {
      try {
        const body = readFileSync(join(bundleDir, 'browser.js'));
        res.writeHead(200, { 'content-type': 'text/javascript' });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(PAGE);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  origin = `http://localhost:${(server.address() as AddressInfo).port}`;
  browser = await launchChromium();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await new Promise((done) => server?.close(done));
  if (bundleDir) rmSync(bundleDir, { recursive: true, force: true });
});

beforeEach(() => {
  verifyCalls = 0;
});

async function open(context: BrowserContext): Promise<Page> {
  const page = await context.newPage();
  await page.goto(origin);
  await page.waitForFunction(() => (window as unknown as { __ready?: boolean }).__ready === true);
  return page;
}

const check = (page: Page, token: string) =>
  page.evaluate((t) => (window as any).cache.check(t), token) as Promise<unknown>;

describe('createBrowserTokenCache in Chromium', () => {
  it('answers a cache hit without any network request, and stores only a hash of the token', async () => {
    const context = await browser.newContext();
    try {
      const page = await open(context);
      const requests: string[] = [];
      page.on('request', (request) => requests.push(request.url()));
      expect(await page.evaluate(() => (window as any).makeCache())).toBe('storage');
      expect(await check(page, TOKEN)).toEqual({ id: 'key_1', name: 'alice' });
      for (let i = 0; i < 5; i++) expect(await check(page, TOKEN)).toEqual({ id: 'key_1', name: 'alice' });
      expect(requests.filter((u) => u.endsWith('/auth/verify'))).toHaveLength(1);
      expect(verifyCalls).toBe(1);
      const stored = await page.evaluate(() => localStorage.getItem('vllm-kit:auth'));
      expect(stored).not.toBeNull();
      expect(stored).not.toContain(TOKEN);
      expect(JSON.parse(stored!).h).toMatch(/^[0-9a-f]{64}$/);
      // An invalid token is asked about (and not cached as valid).
      expect(await check(page, 'wrong')).toBeNull();
      expect(verifyCalls).toBe(2);
    } finally {
      await context.close();
    }
  });

  it('shares one verification among concurrent checks', async () => {
    const context = await browser.newContext();
    try {
      const page = await open(context);
      await page.evaluate(() => (window as any).makeCache());
      const results = await page.evaluate(
        (t) => Promise.all(Array.from({ length: 20 }, () => (window as any).cache.check(t))),
        TOKEN,
      );
      expect(results).toHaveLength(20);
      expect(verifyCalls).toBe(1);
    } finally {
      await context.close();
    }
  });

  it('expires the answer after the TTL (injected clock)', async () => {
    const context = await browser.newContext();
    try {
      const page = await open(context);
      await page.evaluate(() => (window as any).makeCache({ ttlMs: 300_000 }));
      await check(page, TOKEN);
      await page.evaluate(() => {
        (window as any).__now += 299_999;
      });
      await check(page, TOKEN);
      expect(verifyCalls).toBe(1);
      await page.evaluate(() => {
        (window as any).__now += 1;
      });
      await check(page, TOKEN);
      expect(verifyCalls).toBe(2);
    } finally {
      await context.close();
    }
  });

  it('logging out in one tab invalidates the others', async () => {
    const context = await browser.newContext();
    try {
      const tabA = await open(context);
      const tabB = await open(context);
      await tabA.evaluate(() => (window as any).makeCache());
      await tabB.evaluate(() => (window as any).makeCache());
      await check(tabA, TOKEN);
      // Chromium carries a localStorage write to another tab's renderer asynchronously: wait until B sees it.
      await tabB.waitForFunction(() => localStorage.getItem('vllm-kit:auth') !== null);
      // Tab B reads tab A's answer from shared storage: no request.
      await check(tabB, TOKEN);
      expect(verifyCalls).toBe(1);
      await tabA.evaluate(() => (window as any).cache.invalidate());
      await tabB.waitForFunction(() => (window as any).__loggedOut === true);
      await check(tabB, TOKEN);
      expect(verifyCalls).toBe(2);
    } finally {
      await context.close();
    }
  });

  it('still works, in memory, when storage is disabled or full', async () => {
    const context = await browser.newContext();
    try {
      await context.addInitScript(() => {
        Object.defineProperty(window, 'localStorage', {
          get() {
            throw new DOMException('The operation is insecure.', 'SecurityError');
          },
        });
      });
      const page = await open(context);
      expect(await page.evaluate(() => (window as any).makeCache())).toBe('memory');
      await check(page, TOKEN);
      await check(page, TOKEN);
      expect(verifyCalls).toBe(1);
      // A storage that refuses writes (quota) falls back the same way.
      const backend = await page.evaluate(() =>
        (window as any).makeCache({
          storage: {
            getItem: () => null,
            setItem: () => {
              throw new DOMException('full', 'QuotaExceededError');
            },
            removeItem: () => {},
          },
        }),
      );
      expect(backend).toBe('memory');
      await check(page, TOKEN);
      await check(page, TOKEN);
      expect(verifyCalls).toBe(2);
    } finally {
      await context.close();
    }
  });

  it('refuses bad options with a message naming the option', async () => {
    const context = await browser.newContext();
    try {
      const page = await open(context);
      const message = await page.evaluate(() => {
        try {
          (window as any).makeCache({ ttlMs: -1 });
          return 'no error';
        } catch (error) {
          return (error as Error).message;
        }
      });
      expect(message).toBe('Expected `ttlMs` to be a number > 0, got `-1` (number)');
    } finally {
      await context.close();
    }
  });
});
