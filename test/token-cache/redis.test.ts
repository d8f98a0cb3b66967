// Revocation through the real Redis: between two caches in one process, and between two processes.
import { resolve } from 'node:path';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { createTokenCache, type TokenCache } from '../../src/index.js';
import { forkTs } from '../helpers/child.js';
import { REDIS_URL, uniqueName } from '../helpers/services.js';

const TOKEN = 'sk-revoke-me-123';
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()));
});

function redis(): Redis {
  const client = new Redis(REDIS_URL, { lazyConnect: false, maxRetriesPerRequest: 1 });
  cleanups.push(() => client.quit());
  return client;
}

function cache(channel: string, counter: { lookups: number }): TokenCache<{ id: string }> {
  const tokens = createTokenCache({
    verify: async () => {
      counter.lookups++;
      return { id: 'k1' };
    },
    redis: { client: redis(), channel },
  });
  cleanups.push(() => tokens.close());
  return tokens;
}

describe('revocation through Redis', () => {
  it('drops a revoked token from every cache on the channel, within a second', async () => {
    const channel = uniqueName('vk-test-revocations');
    const a = { lookups: 0 };
    const b = { lookups: 0 };
    const cacheA = cache(channel, a);
    const cacheB = cache(channel, b);
    await Promise.all([cacheA.ready(), cacheB.ready()]);
    await cacheA.verify(TOKEN);
    await cacheB.verify(TOKEN);
    await cacheB.verify(TOKEN);
    expect(b.lookups).toBe(1);
    await cacheA.invalidate(TOKEN);
    await expect.poll(() => cacheB.stats().invalidations, { timeout: 1000 }).toBe(1);
    await cacheB.verify(TOKEN);
    expect(b.lookups).toBe(2);
  });

  it('publishes only the hash, never the token', async () => {
    const channel = uniqueName('vk-test-revocations');
    const listener = redis();
    const heard: string[] = [];
    await listener.subscribe(channel);
    listener.on('message', (_channel, message) => heard.push(message));
    const tokens = cache(channel, { lookups: 0 });
    await tokens.ready();
    await tokens.invalidate(TOKEN);
    await expect.poll(() => heard.length).toBe(1);
    expect(heard[0]).not.toContain(TOKEN);
    expect(heard[0]).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('reaches another process', async () => {
    const channel = uniqueName('vk-test-revocations');
    const child = forkTs<{ lookups?: number; ready?: boolean }>(
      resolve(import.meta.dirname, 'child-cache.ts'),
      [REDIS_URL, channel],
    );
    cleanups.push(() => child.stop());
    const ask = child.ask;
    expect(await ask()).toEqual({ ready: true });
    expect(await ask({ verify: TOKEN })).toEqual({ lookups: 1 });
    expect(await ask({ verify: TOKEN })).toEqual({ lookups: 1 });
    const here = cache(channel, { lookups: 0 });
    await here.ready();
    await here.invalidate(TOKEN);
    await expect
      .poll(async () => (await ask({ verify: TOKEN })).lookups, { timeout: 1000, interval: 20 })
      .toBe(2);
  });
});
