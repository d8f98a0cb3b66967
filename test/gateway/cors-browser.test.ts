// A browser front end on another origin calling the gateway, in real headless Chromium: the preflight, the call with
// a bearer key, and the headers a script may read — and the browser's refusal when the origin is not allowed.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from '../helpers/chromium.js';
import { generations, trackGateways } from '../helpers/gateway.js';

const { setup } = trackGateways();
let browser: Browser;
let page: Server;
let appOrigin: string;

beforeAll(async () => {
  browser = await launchChromium();
  page = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>app</title>');
  });
  await new Promise<void>((resolve) => page.listen(0, '127.0.0.1', resolve));
  appOrigin = `http://127.0.0.1:${(page.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await browser?.close();
  await new Promise((resolve) => page?.close(resolve));
});

/** Runs a chat call from a page on appOrigin; resolves with what the script saw. */
async function callFromPage(gatewayUrl: string, key: string) {
  const context = await browser.newContext();
  try {
    const tab = await context.newPage();
    await tab.goto(appOrigin);
    return await tab.evaluate(
      async ({ url, key }) => {
        try {
          const reply = await fetch(`${url}/v1/chat/completions`, {
            method: 'POST',
            headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
            body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
          });
          const body = await reply.json();
          return { ok: true, status: reply.status, requestId: reply.headers.get('x-request-id'), body };
        } catch (error) {
          return { ok: false, error: String(error) };
        }
      },
      { url: gatewayUrl, key },
    );
  } finally {
    await context.close();
  }
}

describe('CORS in a real browser (9)', () => {
  it('a front end on an allowed origin calls the gateway with its key and reads the request id', async () => {
    const { url, key } = await setup({ CORS_ORIGINS: appOrigin });
    const result = await callFromPage(url, key);
    expect(result).toMatchObject({ ok: true, status: 200, body: { object: 'chat.completion' } });
    expect(result.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('the browser refuses the call when the origin is not allowed', async () => {
    const { url, key, sim } = await setup({ CORS_ORIGINS: 'https://elsewhere.example' });
    const result = await callFromPage(url, key);
    expect(result).toMatchObject({ ok: false });
    expect(result.error).toContain('Failed to fetch');
    expect(generations(sim)).toBe(0);
  });
});
