// The shared upstream limit: permits granted in order, waits that time out or are aborted, the client taking a permit
// per POST (in-flight at the simulator never above the limit), permits returned by cancelled streams and timeouts,
// two processes on Redis sharing one limit, a SIGKILLed holder's permits expiring with their lease, a Redis outage.
import { resolve } from 'node:path';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createPermitPool,
  createVllmClient,
  isPermitTimeoutError,
  isRequestAbortedError,
  type Permit,
  type PermitPool,
} from '../../src/index.js';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';
import { forkTs } from '../helpers/child.js';
import { watchInFlight } from '../helpers/fixtures.js';
import { REDIS_URL, startPrivateRedis, uniqueName } from '../helpers/services.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
const track = <T extends { close(): Promise<unknown> }>(thing: T): T => {
  cleanups.push(() => thing.close());
  return thing;
};

async function simulator(options: Parameters<typeof startVllmSimulator>[0] = {}): Promise<VllmSimulator> {
  return track(await startVllmSimulator({ model: 'm', ...options }));
}

async function redisClient(url = REDIS_URL): Promise<Redis> {
  const client = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false });
  client.on('error', () => {});
  cleanups.push(async () => client.disconnect());
  await new Promise((ready) => client.once('ready', ready));
  return client;
}

describe('createPermitPool (memory)', () => {
  it('grants up to the limit per resource, then in order as permits come back; waits time out or abort', async () => {
    const pool = track(createPermitPool({ permits: 2 }));
    const a = await pool.acquire('r1');
    const b = await pool.acquire('r1');
    // Another resource has its own limit.
    const other = await pool.acquire('r2');
    const order: string[] = [];
    const inOrder = (label: string) => (permit: Permit) => {
      order.push(label);
      return permit;
    };
    const c = pool.acquire('r1').then(inOrder('c'));
    const d = pool.acquire('r1').then(inOrder('d'));
    const timedOut = pool.acquire('r1', { timeoutMs: 30 });
    const controller = new AbortController();
    const aborted = pool.acquire('r1', { signal: controller.signal });
    controller.abort();
    await expect(aborted).rejects.toSatisfy(isRequestAbortedError);
    await expect(timedOut).rejects.toSatisfy(isPermitTimeoutError);
    expect(pool.stats()).toMatchObject({ held: 3, waiting: 2, byResource: { r1: { held: 2, waiting: 2 } } });
    a.release();
    a.release(); // a second release does nothing
    b.release();
    const [pc, pd] = await Promise.all([c, d]);
    expect(order).toEqual(['c', 'd']);
    pc.release();
    pd.release();
    other.release();
    expect(pool.stats()).toMatchObject({ held: 0, waiting: 0, acquired: 5, timedOut: 1, aborted: 1 });
    expect(pool.stats().byResource).toEqual({ r1: { held: 0, waiting: 0 }, r2: { held: 0, waiting: 0 } });
    const waiting = pool.acquire('r1');
    await pool.close();
    await expect(waiting).resolves.toBeDefined();
  });

  it('validates its options', () => {
    expect(() => createPermitPool({} as never)).toThrow(/permits/);
    expect(() => createPermitPool({ permits: 0 })).toThrow(/permits/);
    expect(() => createPermitPool({ permits: 1, store: 'disk' as never })).toThrow(/store/);
    expect(() => createPermitPool({ permits: 1, leaseMs: 5 })).toThrow(/leaseMs/);
    expect(() => createPermitPool({ permits: 1, store: 'cluster' })).toThrow(/serveCluster\(\)/);
    expect(() => createVllmClient({ baseUrl: 'http://x', permits: {} as never })).toThrow(/permits/);
  });
});

describe('the client with a permit pool', () => {
  it('never has more than the limit in flight at the simulator, and uses all of it', async () => {
    const sim = await simulator({ ttftMs: 5, itlMs: 2, outputTokens: 20 });
    const pool = track(createPermitPool({ permits: 4 }));
    const client = track(createVllmClient({ baseUrl: sim.url, permits: pool }));
    const watch = watchInFlight(sim);
    await Promise.all(
      Array.from({ length: 40 }, () =>
        client.chatCompletion({ messages: [{ role: 'user', content: 'hi' }] }),
      ),
    );
    expect(watch.stop()).toBe(4);
    // Probes never wait for a permit.
    expect(await client.health()).toBe(true);
    expect(pool.stats()).toMatchObject({ held: 0, waiting: 0, acquired: 40 });
  });

  it('returns every permit after 1,000 mixed calls: completed, streams abandoned mid-way, aborts while waiting, upstream timeouts', async () => {
    const sim = await simulator({ ttftMs: 1, itlMs: 1, outputTokens: 30, maxNumSeqs: 1000 });
    const pool = track(createPermitPool({ permits: 8 }));
    const client = track(createVllmClient({ baseUrl: sim.url, permits: pool, connections: 64 }));
    const messages = [{ role: 'user', content: 'hi' }];
    const calls = Array.from({ length: 1000 }, async (_, i) => {
      const controller = new AbortController();
      switch (i % 4) {
        case 0:
          return client.chatCompletion({ messages });
        case 1: {
          // A stream the caller stops reading after 3 chunks.
          let n = 0;
          for await (const _ of client.streamChatCompletion({ messages })) if (++n === 3) break;
          return n;
        }
        case 2:
          setTimeout(() => controller.abort(), Math.random() * 20);
          return client.chatCompletion({ messages }, { signal: controller.signal });
        default:
          // The upstream is too slow for this call's total timeout.
          return client.chatCompletion({ messages, max_tokens: 200 }, { timeoutMs: 5 + Math.random() * 10 });
      }
    });
    const results = await Promise.allSettled(calls);
    expect(results.filter((r) => r.status === 'fulfilled').length).toBeGreaterThanOrEqual(500);
    expect(pool.stats()).toMatchObject({ held: 0, waiting: 0 });
    await expect.poll(() => sim.stats().running + sim.stats().waiting, { timeout: 5000 }).toBe(0);
  }, 60_000);
});

describe('store: Redis', () => {
  it('two processes never exceed the shared limit at the simulator, and use it', async () => {
    const sim = await simulator({ ttftMs: 10, itlMs: 3, outputTokens: 20 });
    const name = uniqueName('vk-permits').replaceAll(':', '-');
    const children = [0, 1].map(() =>
      forkTs<{ ready?: boolean; ok?: number; held?: number }>(resolve(import.meta.dirname, 'child-pool.ts'), [
        REDIS_URL,
        name,
        '5',
        '5000',
        sim.url,
      ]),
    );
    for (const child of children) cleanups.push(() => child.stop());
    for (const child of children) expect((await child.ask()).ready).toBe(true);
    const watch = watchInFlight(sim);
    const replies = await Promise.all(children.map((child) => child.ask({ load: 30 })));
    const peak = watch.stop();
    expect(peak).toBeLessThanOrEqual(5);
    expect(peak).toBe(5);
    expect(replies.map((r) => r.ok)).toEqual([30, 30]);
    expect(replies.map((r) => r.held)).toEqual([0, 0]);
  }, 60_000);

  it('returns the permits of a SIGKILLed process within the lease time', async () => {
    const sim = await simulator();
    const name = uniqueName('vk-permits').replaceAll(':', '-');
    const leaseMs = 1000;
    const child = forkTs<{ ready?: boolean; held?: number }>(resolve(import.meta.dirname, 'child-pool.ts'), [
      REDIS_URL,
      name,
      '3',
      String(leaseMs),
      sim.url,
    ]);
    expect((await child.ask()).ready).toBe(true);
    expect((await child.ask({ hold: 3 })).held).toBe(3);
    const pool = track(createPermitPool({ permits: 3, store: await redisClient(), name, leaseMs }));
    // Held elsewhere: nothing for us yet.
    await expect(pool.acquire(sim.url, { timeoutMs: 200 })).rejects.toSatisfy(isPermitTimeoutError);
    const killedAt = performance.now();
    const exited = new Promise((done) => child.child.once('exit', done));
    child.child.kill('SIGKILL');
    await exited;
    // All three come back once their leases (renewed every third of the lease until the kill) expire.
    const permits = await Promise.all([0, 1, 2].map(() => pool.acquire(sim.url, { timeoutMs: 3 * leaseMs })));
    expect(performance.now() - killedAt).toBeLessThan(leaseMs + 500);
    for (const permit of permits) permit.release();
  }, 30_000);

  it('registers the leases it holds again when Redis comes back empty, before granting anything new', async () => {
    const redisServer = await startPrivateRedis();
    cleanups.push(() => redisServer.kill());
    const client = await redisClient(redisServer.url);
    const pool: PermitPool = track(
      createPermitPool({ permits: 4, store: client, name: 'restart', leaseMs: 3000, pollMs: 20 }),
    );
    const held = await Promise.all([0, 1, 2].map(() => pool.acquire('r')));
    await redisServer.kill();
    // During the outage: one more, its share's last (4 ÷ 1 member, the 3 in flight counted).
    const during = await pool.acquire('r', { timeoutMs: 2000 });
    expect(pool.stats()).toMatchObject({ degraded: true, held: 4 });
    await redisServer.restart();
    // Redis is back and empty: the 4 leases in flight are registered again first, so nothing more is granted.
    await expect(pool.acquire('r', { timeoutMs: 1500 })).rejects.toSatisfy(isPermitTimeoutError);
    expect(pool.stats().degraded).toBe(false);
    const other = await redisClient(redisServer.url);
    expect(await other.zcard('{vllm-kit:permits:restart}:r')).toBe(4);
    // Released, they leave Redis too (the one granted locally included), and the next is granted.
    for (const permit of [...held, during]) permit.release();
    await expect.poll(() => other.zcard('{vllm-kit:permits:restart}:r')).toBe(0);
    (await pool.acquire('r', { timeoutMs: 1000 })).release();
  }, 30_000);

  it('falls back to its share of the limit while Redis is down, never throwing', async () => {
    const redisServer = await startPrivateRedis();
    cleanups.push(() => redisServer.kill());
    const client = await redisClient(redisServer.url);
    const pool: PermitPool = track(
      createPermitPool({ permits: 4, store: client, name: 'outage', leaseMs: 300 }),
    );
    const before = await pool.acquire('r');
    await expect.poll(() => pool.stats().members).toBe(1);
    await redisServer.kill();
    // Down: this process may hold its share (4 ÷ 1 member) itself, the permit it held before the outage included
    // (it is still in flight: counting only new ones let 5 through); the fifth waits, and times out cleanly.
    const during = await Promise.all([0, 1, 2].map(() => pool.acquire('r', { timeoutMs: 2000 })));
    expect(pool.stats()).toMatchObject({ degraded: true, fallbackAcquired: 3, share: 4, held: 4 });
    await expect(pool.acquire('r', { timeoutMs: 100 })).rejects.toSatisfy(isPermitTimeoutError);
    for (const permit of [before, ...during]) permit.release();
    expect(pool.stats().held).toBe(0);
  }, 30_000);
});
