// examples/express and examples/fastify against the simulator: forwarding (streams included), the rate limit, and
// the upstream request aborted when the client leaves.
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createApp as createExpressApp } from '../../examples/express/app.js';
import { createApp as createFastifyApp } from '../../examples/fastify/app.js';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const body = (extra: object = {}) =>
  JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, ...extra });
const post = (url: string, extra: object = {}) =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: body(extra),
  });

async function exercise(url: string, sim: VllmSimulator) {
  const reply = await post(url);
  expect(reply.status).toBe(200);
  expect(((await reply.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(3);
  const stream = await post(url, { stream: true });
  expect(stream.headers.get('content-type')).toContain('text/event-stream');
  expect((await stream.text()).trimEnd().endsWith('data: [DONE]')).toBe(true);
  // The client leaves mid-stream: the simulator sees the abort.
  const long = await post(url, { stream: true, max_tokens: 1000 });
  const reader = long.body!.getReader();
  await reader.read();
  await reader.cancel();
  await expect.poll(() => sim.stats().aborted).toBe(1);
  // 20 per minute: 3 used so far.
  const statuses: number[] = [];
  for (let i = 0; i < 18; i++) {
    const res = await post(url);
    statuses.push(res.status);
    await res.arrayBuffer();
  }
  expect(statuses.slice(0, 17).every((s) => s === 200)).toBe(true);
  expect(statuses[17]).toBe(429);
}

describe('examples', () => {
  it('express', async () => {
    const sim = await startVllmSimulator({ itlMs: 5 });
    cleanups.push(() => sim.close());
    const { app, close } = createExpressApp(sim.url);
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    cleanups.push(close, () => new Promise((resolve) => server.close(resolve)));
    await exercise(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, sim);
  });

  it('fastify', async () => {
    const sim = await startVllmSimulator({ itlMs: 5 });
    cleanups.push(() => sim.close());
    const app = createFastifyApp(sim.url);
    await app.listen({ port: 0, host: '127.0.0.1' });
    cleanups.push(() => app.close());
    await exercise(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, sim);
  });
});
