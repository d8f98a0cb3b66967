// Adaptive mode (AIMD) against the simulator: it converges near the upstream's capacity and backs off when it drops.
import { describe, expect, it } from 'vitest';
import { createConcurrencyLimiter, type VllmClient } from '../../src/index.js';
import type { VllmSimulator } from '../../src/testing/index.js';
import { messages, trackResources } from '../helpers/fixtures.js';

const use = trackResources();

/** `callers` loops each sending requests through the limiter until `total` have completed. */
async function drive(
  limiter: ReturnType<typeof createConcurrencyLimiter>,
  client: VllmClient,
  sim: VllmSimulator,
  total: number,
) {
  let sent = 0;
  let peakWaiting = 0;
  const loop = async () => {
    while (sent < total) {
      sent++;
      await limiter
        .run(async ({ signal }) => {
          await client.chatCompletion({ messages, max_tokens: 4 }, { signal });
          peakWaiting = Math.max(peakWaiting, sim.stats().waiting);
        })
        .catch(() => undefined);
    }
  };
  await Promise.all(Array.from({ length: 64 }, loop));
  return { peakWaiting };
}

describe('adaptive concurrency', () => {
  it('converges near the simulator’s capacity, then backs off when capacity shrinks', async () => {
    const big = await use.simulator({ maxNumSeqs: 8, ttftMs: 10, itlMs: 5 });
    const small = await use.simulator({ maxNumSeqs: 2, ttftMs: 10, itlMs: 5 });
    const bigClient = use.client({ baseUrl: big.url });
    const smallClient = use.client({ baseUrl: small.url });
    const limiter = createConcurrencyLimiter({
      concurrency: 40,
      maxQueue: Number.POSITIVE_INFINITY,
      adaptive: { min: 1, max: 100 },
    });
    use.onCleanup(() => limiter.close());

    await drive(limiter, bigClient, big, 600);
    const settled = limiter.stats().concurrency;
    // Started at 40 with a capacity of 8 running slots: it came down near 8 (AIMD oscillates just above it).
    expect(settled).toBeGreaterThanOrEqual(4);
    expect(settled).toBeLessThanOrEqual(20);
    // And the upstream's own queue stayed short once it had converged.
    const { peakWaiting } = await drive(limiter, bigClient, big, 300);
    expect(peakWaiting).toBeLessThanOrEqual(16);

    await drive(limiter, smallClient, small, 400);
    const shrunk = limiter.stats().concurrency;
    expect(shrunk).toBeLessThan(settled);
    expect(shrunk).toBeLessThanOrEqual(8);
  }, 60_000);

  it('halves quickly on upstream overload errors (503) down to min', async () => {
    const sim = await use.simulator({ faults: { status: { status: 503 } } });
    const client = use.client({ baseUrl: sim.url, maxRetries: 0 });
    const limiter = createConcurrencyLimiter({
      concurrency: 32,
      adaptive: { min: 2, max: 64, backoffRatio: 0.5 },
    });
    use.onCleanup(() => limiter.close());
    for (let i = 0; i < 10; i++) {
      await limiter.run(() => client.chatCompletion({ messages, max_tokens: 1 })).catch(() => undefined);
    }
    expect(limiter.stats().concurrency).toBe(2);
  });

  it('samples time to first token when the task marks it (gradient on an injected clock)', async () => {
    let t = 0;
    const limiter = createConcurrencyLimiter({
      concurrency: 10,
      adaptive: { min: 1, max: 50, minRttSamples: 2, window: 2, minRttInterval: 1000 },
      now: () => t,
    });
    use.onCleanup(() => limiter.close());
    const stream = (ttft: number, rest: number) =>
      limiter.run(async ({ markFirstByte }) => {
        t += ttft;
        markFirstByte();
        t += rest;
      });
    // The first sample starts the minRTT phase (limit pinned to min), two more measure minRTT = 10.
    for (let i = 0; i < 3; i++) await stream(10, 1000);
    expect(limiter.stats().concurrency).toBe(10);
    // Long streams with the same time to first token are not "slow": the limit grows.
    await stream(10, 5000);
    await stream(10, 5000);
    const grown = limiter.stats().concurrency;
    expect(grown).toBeGreaterThan(10);
    // Time to first token 5× the minimum: it backs off.
    await stream(50, 0);
    await stream(50, 0);
    expect(limiter.stats().concurrency).toBeLessThan(grown);
  });
});
