// Limits held in Redis while Redis is down and after it restarts empty: each process counts only its share of the
// limit meanwhile (limit ÷ processes), and what it admitted then is handed to Redis once it is back, so the window
// does not start over. Two limiters stand for two processes; a private redis-server is killed and restarted.
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { createIpRateLimiter, createKeyBudgets } from '../../src/index.js';
import { startPrivateRedis } from '../helpers/services.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function connect(url: string): Promise<Redis> {
  const client = new Redis(url, {
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => 50,
  });
  client.on('error', () => {});
  cleanups.push(async () => client.disconnect());
  await new Promise((ready) => client.once('ready', ready));
  return client;
}

/** Resolves once both clients are connected again (after a restart). */
async function reconnected(...clients: Redis[]): Promise<void> {
  await expect.poll(() => clients.every((c) => c.status === 'ready'), { timeout: 5000 }).toBe(true);
}

describe('limits while Redis is down and after it restarts empty', () => {
  it('per-IP limit: two processes together admit at most the limit across the outage and the restart', async () => {
    const redis = await startPrivateRedis();
    cleanups.push(() => redis.kill());
    const [a, b] = [await connect(redis.url), await connect(redis.url)];
    const options = { points: 10, windowSec: 60, name: 'outage', processes: 2 } as const;
    const limiters = [a, b].map((store) => createIpRateLimiter({ ...options, store }));
    for (const limiter of limiters) cleanups.push(() => limiter.close());
    let admitted = 0;
    const ask = async (i: number) => {
      const decision = await limiters[i % 2]!.check('198.51.100.7');
      if (decision.allowed) admitted++;
      return decision;
    };
    for (let i = 0; i < 4; i++) await ask(i);
    expect(admitted).toBe(4);
    await redis.kill();
    // Down: each counts its share (10 ÷ 2 = 5) itself; it once admitted its whole 10 on each.
    for (let i = 0; i < 20; i++) expect((await ask(i)).degraded).toBe(true);
    expect(admitted).toBe(4 + 10);
    await redis.restart();
    await reconnected(a, b);
    // Back and empty: each hands over what it admitted meanwhile (5 each) before deciding again, so only the 4
    // counted before the outage (lost with the restart) can come on top: 4 + 10 + 4 at most, never 30.
    for (let i = 0; i < 20; i++) await ask(i);
    expect(admitted).toBeLessThanOrEqual(4 + 10 + 4);
    const more = await ask(0);
    expect(more).toMatchObject({ allowed: false, degraded: false });
  }, 30_000);

  it('key budgets: each process admits its share of rpm while Redis is down, and Redis learns them once back', async () => {
    const redis = await startPrivateRedis();
    cleanups.push(() => redis.kill());
    const [a, b] = [await connect(redis.url), await connect(redis.url)];
    const budgets = [a, b].map((store) => createKeyBudgets({ store, name: 'outage', processes: 2 }));
    for (const budget of budgets) cleanups.push(() => budget.close());
    const limits = { requests: 10, tokens: 1000 };
    let admitted = 0;
    const ask = async (i: number) => {
      const decision = await budgets[i % 2]!.admit('key', limits);
      if (decision.allowed) admitted++;
      return decision;
    };
    await redis.kill();
    for (let i = 0; i < 20; i++) await ask(i);
    // 5 each, not 10 each.
    expect(admitted).toBe(10);
    await redis.restart();
    await reconnected(a, b);
    // Each process hands its outage windows over before its first new decision there. Only a request admitted by one
    // before the other has handed its own over can come on top (one here): 11 at most, never 10 + 10.
    await ask(0);
    await ask(1);
    await expect
      .poll(async () => Number(await a.hget('vllm-kit:kb:outage:key', 'r')), { timeout: 3000 })
      .toBeGreaterThanOrEqual(10);
    for (let i = 0; i < 10; i++) await ask(i);
    expect(admitted).toBeLessThanOrEqual(11);
    expect(await ask(0)).toMatchObject({ allowed: false, degraded: false });
  }, 30_000);
});
