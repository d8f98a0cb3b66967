// The gateway against what an attacker or a careless operator sends: each test here failed before its fix
// (issue 13's items, numbered as there).
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { post, trackGateways } from '../helpers/gateway.js';

const { setup, simulator, onCleanup } = trackGateways();

/** A bare upstream answering every request with `status`, `headers` and an OpenAI-style error body. */
async function fixedUpstream(status: number, headers: Record<string, string> = {}) {
  let requests = 0;
  const server = createServer((req, res) => {
    requests++;
    req.resume();
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify({ error: { message: 'nope', type: 'x', param: null, code: status } }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onCleanup(() => new Promise((resolve) => server.close(resolve)));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests: () => requests };
}

describe('client addresses behind a proxy (1)', () => {
  it('a client-sent Forwarded header cannot pick its rate-limit key (TRUST_PROXY=1)', async () => {
    const { url, key } = await setup({ TRUST_PROXY: '1', RATE_LIMIT_POINTS: '20' });
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) {
      const reply = await post(url, '/v1/chat/completions', {
        key,
        headers: { forwarded: `for=198.51.100.${i}`, 'x-forwarded-for': '203.0.113.9' },
      });
      await reply.arrayBuffer();
      statuses.push(reply.status);
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(20);
    expect(statuses.slice(20).every((s) => s === 429)).toBe(true);
  });

  it('TRUST_PROXY_HEADER=forwarded reads Forwarded and ignores X-Forwarded-For', async () => {
    const { url, key } = await setup({
      TRUST_PROXY: '1',
      TRUST_PROXY_HEADER: 'forwarded',
      RATE_LIMIT_POINTS: '1',
    });
    const status = async (headers: Record<string, string>) => {
      const reply = await post(url, '/v1/chat/completions', { key, headers });
      await reply.arrayBuffer();
      return reply.status;
    };
    expect(await status({ forwarded: 'for=198.51.100.1' })).toBe(200);
    expect(await status({ forwarded: 'for=198.51.100.2' })).toBe(200);
    expect(await status({ forwarded: 'for=198.51.100.1' })).toBe(429);
    expect(await status({ 'x-forwarded-for': '198.51.100.3' })).toBe(200);
    expect(await status({ 'x-forwarded-for': '198.51.100.4' })).toBe(429);
  });
});

describe('upstream refusals (4, 5)', () => {
  it('an upstream 429 is answered at once with its Retry-After, and the slot is free for the next request', async () => {
    const sim = await simulator({ faults: { status: { status: 429, retryAfterSec: 7, times: 1 } } });
    const { url, key } = await setup({ LIMIT_CONCURRENCY: '1', MAX_QUEUE: '0' }, sim);
    const refused = await post(url, '/v1/chat/completions', { key });
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('7');
    await refused.arrayBuffer();
    expect(sim.stats().requestsReceived).toBe(1);
    // With one slot and no queue, this would be a 503 queue_full if the 429 still held the slot.
    const next = await post(url, '/v1/chat/completions', { key });
    expect(next.status).toBe(200);
    await next.arrayBuffer();
  });

  it('passes retry-after-ms through on a 503', async () => {
    const upstream = await fixedUpstream(503, { 'retry-after': '2', 'retry-after-ms': '1500' });
    const { url, key } = await setup({}, upstream);
    const reply = await post(url, '/v1/chat/completions', { key });
    expect(reply.status).toBe(503);
    expect(reply.headers.get('retry-after')).toBe('2');
    expect(reply.headers.get('retry-after-ms')).toBe('1500');
    await reply.arrayBuffer();
    expect(upstream.requests()).toBe(1);
  });

  it('/health asks each replica once through the client', async () => {
    const a = await fixedUpstream(503);
    const b = await fixedUpstream(503);
    const sim = await simulator();
    const { url } = await setup({}, sim, [a.url, b.url]);
    const reply = await fetch(`${url}/health`);
    expect(reply.status).toBe(200);
    expect(await reply.json()).toMatchObject({
      upstreams: [
        { url: sim.url, healthy: true },
        { url: a.url, healthy: false },
        { url: b.url, healthy: false },
      ],
    });
    expect([a.requests(), b.requests()]).toEqual([1, 1]);
  });
});
