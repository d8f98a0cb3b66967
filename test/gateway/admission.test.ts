// Fair admission in the gateway (smoke tests over HTTP; the order itself is asserted on FairQueue): a flooding key and
// light keys (the light ones are served between the flood's requests, not after its queue), priorities from the key,
// per-key queue caps; and UPSTREAM_CONCURRENCY's permits returned when clients abandon their streams (across
// processes: permits-processes.test.ts).
import { describe, expect, it } from 'vitest';
import type { VllmSimulator } from '../../src/testing/index.js';
import { watchInFlight } from '../helpers/fixtures.js';
import { type GatewaySetup, post, trackGateways } from '../helpers/gateway.js';

const gateways = trackGateways();
const body = JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] });
// Every request comes from 127.0.0.1: the per-IP limit (20 a minute by default) would refuse most of them.
const UNLIMITED_IP = { RATE_LIMIT_POINTS: '1000000' };

/** Requests the gateway has taken in so far: sent to the model server, or waiting in its queue. */
async function takenIn(url: string, sim: VllmSimulator): Promise<number> {
  const metrics = await (await fetch(`${url}/metrics`)).text();
  const depth = Number(/^gateway_queue_depth (\d+)$/m.exec(metrics)?.[1] ?? Number.NaN);
  return sim.stats().requestsReceived + depth;
}

/**
 * Sends the requests in order, each once the one before it has reached the gateway's queue or the model server (or
 * was answered): the arrival order is known, not guessed from a sleep. Resolves with the labels in the order their
 * answers completed, and their statuses.
 */
async function race(url: string, sim: VllmSimulator, requests: { label: string; key: string }[]) {
  const order: string[] = [];
  const statuses: Record<string, number[]> = {};
  const replies: Promise<void>[] = [];
  for (const { label, key } of requests) {
    const before = await takenIn(url, sim);
    let answered = false;
    replies.push(
      post(url, '/v1/chat/completions', { key, body }).then(async (res) => {
        await res.text();
        answered = true;
        order.push(label);
        (statuses[label] ??= []).push(res.status);
      }),
    );
    await expect.poll(async () => answered || (await takenIn(url, sim)) > before, { interval: 2 }).toBe(true);
  }
  await Promise.all(replies);
  return { order, statuses };
}

async function fairSetup(
  env: Record<string, string>,
  ttftMs = 100,
): Promise<GatewaySetup & { keys: Record<string, string> }> {
  // Each request holds its slot ~140 ms: a queue of 30 takes ~2 s to drain through 2 slots, far longer than the
  // requests take to arrive one after the other.
  const sim = await gateways.simulator({ ttftMs, itlMs: 2, outputTokens: 20 });
  const gateway = await gateways.setup(
    { ...UNLIMITED_IP, LIMIT_CONCURRENCY: '2', MAX_QUEUE: '100', ...env },
    sim,
  );
  const keys: Record<string, string> = {};
  for (const [name, priority] of [
    ['flood', 0],
    ['a', 0],
    ['b', 0],
    ['c', 0],
    ['vip', 5],
  ] as const) {
    keys[name] = (await gateway.gateway.keyStore.create(name, { priority })).key;
  }
  return { ...gateway, keys };
}

const flood = (keys: Record<string, string>, n: number) =>
  Array.from({ length: n }, () => ({ label: 'flood', key: keys.flood! }));

describe('fair admission (QUEUE_POLICY)', () => {
  it('serves light keys between the flood’s requests (fair), not after its whole queue (fifo)', async () => {
    for (const policy of ['fair', 'fifo'] as const) {
      const { url, sim, keys } = await fairSetup({ QUEUE_POLICY: policy });
      const { order } = await race(url, sim, [
        ...flood(keys, 30),
        { label: 'a', key: keys.a! },
        { label: 'b', key: keys.b! },
        { label: 'c', key: keys.c! },
      ]);
      const lastLight = Math.max(order.indexOf('a'), order.indexOf('b'), order.indexOf('c'));
      // Fair: after the two running and one turn of the flood per light key. FIFO: behind all thirty.
      if (policy === 'fair') expect(lastLight).toBeLessThanOrEqual(9);
      else expect(lastLight).toBeGreaterThanOrEqual(30);
    }
  }, 60_000);

  it('starts a key with a higher priority before the flood’s waiting requests', async () => {
    const { url, sim, keys } = await fairSetup({});
    const { order } = await race(url, sim, [...flood(keys, 20), { label: 'vip', key: keys.vip! }]);
    expect(order.indexOf('vip')).toBeLessThanOrEqual(4);
  }, 60_000);

  it('caps one key’s queue (MAX_QUEUE_PER_KEY): the flood gets 503 queue_full first, the others still queue', async () => {
    // Slow answers (~340 ms): none of the flood's first two ends before all thirteen requests have arrived.
    const { url, sim, keys } = await fairSetup({ MAX_QUEUE_PER_KEY: '5' }, 300);
    const { statuses } = await race(url, sim, [...flood(keys, 12), { label: 'a', key: keys.a! }]);
    // 2 running + 5 waiting of the flood are served; the other 5 are refused; the light key is served.
    expect(statuses.flood!.filter((s) => s === 200)).toHaveLength(7);
    expect(statuses.flood!.filter((s) => s === 503)).toHaveLength(5);
    expect(statuses.a).toEqual([200]);
  }, 60_000);
});

describe('UPSTREAM_CONCURRENCY', () => {
  const streamBody = { messages: [{ role: 'user', content: 'hi' }], stream: true };

  it('returns the permits of streams the clients abandon', async () => {
    const sim = await gateways.simulator({ ttftMs: 5, itlMs: 5, outputTokens: 200 });
    const gateway = await gateways.setup({ ...UNLIMITED_IP, UPSTREAM_CONCURRENCY: '3' }, sim);
    const streams = Array.from({ length: 30 }, async () => {
      const controller = new AbortController();
      const res = await post(gateway.url, '/v1/chat/completions', {
        key: gateway.key,
        body: JSON.stringify(streamBody),
      }).catch(() => null);
      if (res === null) return;
      const reader = res.body!.getReader();
      await reader.read().catch(() => undefined);
      await reader.cancel().catch(() => undefined);
      controller.abort();
    });
    await Promise.all(streams);
    await expect.poll(() => sim.stats().running + sim.stats().waiting, { timeout: 5000 }).toBe(0);
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    expect(metrics).toMatch(/gateway_upstream_permits\{upstream="[^"]+",state="held"\} 0/);
    // The full limit is available again.
    const watch = watchInFlight(sim);
    await Promise.all(
      Array.from({ length: 9 }, async () => {
        const res = await post(gateway.url, '/v1/chat/completions', {
          key: gateway.key,
          body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 20 }),
        });
        await res.text();
      }),
    );
    expect(watch.stop()).toBe(3);
  }, 60_000);
});
