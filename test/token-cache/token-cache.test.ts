// The token cache: TTLs on an injected clock, the sweep on fake timers, single flight, errors, expiry, revocation.
import { inspect } from 'node:util';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  createTokenCache,
  isInvalidOptionError,
  isRequestAbortedError,
  isTokenVerificationError,
  type TokenCache,
  type TokenCacheOptions,
} from '../../src/index.js';

const TOKEN = 'sk-live-0123456789abcdef-secret';
const caches: TokenCache<unknown>[] = [];
afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(caches.splice(0).map((c) => c.close()));
});

interface Principal {
  id: string;
  expires?: number;
}

/** A cache over a fake lookup that records its calls, on a clock the test moves. */
function setup(
  options: Partial<TokenCacheOptions<Principal>> = {},
  answer: (token: string) => Principal | null = () => ({ id: 'k1' }),
) {
  const clock = { now: 1_000_000 };
  const lookup = vi.fn(async (token: string) => answer(token));
  const cache = createTokenCache<Principal>({
    verify: lookup,
    now: () => clock.now,
    sweepIntervalMs: 0,
    ...options,
  });
  caches.push(cache as TokenCache<unknown>);
  return { cache, lookup, clock };
}

describe('createTokenCache', () => {
  it('serves hits from the cache until the TTL, then looks up again', async () => {
    const { cache, lookup, clock } = setup({ ttlMs: 300_000 });
    expect(await cache.verify(TOKEN)).toEqual({ id: 'k1' });
    expect(await cache.verify(TOKEN)).toEqual({ id: 'k1' });
    expect(lookup).toHaveBeenCalledTimes(1);
    clock.now += 299_999;
    await cache.verify(TOKEN);
    expect(lookup).toHaveBeenCalledTimes(1);
    clock.now += 1;
    await cache.verify(TOKEN);
    expect(lookup).toHaveBeenCalledTimes(2);
    expect(cache.stats()).toMatchObject({ hits: 2, misses: 2, lookups: 2, size: 1 });
  });

  it('caches "invalid" for negativeTtlMs, and not at all with 0', async () => {
    const { cache, lookup, clock } = setup({ negativeTtlMs: 30_000 }, () => null);
    expect(await cache.verify('bad')).toBeNull();
    expect(await cache.verify('bad')).toBeNull();
    expect(lookup).toHaveBeenCalledTimes(1);
    expect(cache.stats().negativeHits).toBe(1);
    clock.now += 30_000;
    await cache.verify('bad');
    expect(lookup).toHaveBeenCalledTimes(2);

    const never = setup({ negativeTtlMs: 0 }, () => null);
    await never.cache.verify('bad');
    await never.cache.verify('bad');
    expect(never.lookup).toHaveBeenCalledTimes(2);
  });

  it('keeps "invalid" answers apart: a flood of bad tokens neither evicts valid ones nor repeats lookups', async () => {
    const { cache, lookup } = setup({ max: 10, negativeMax: 100 }, (token) =>
      token.startsWith('good') ? { id: token } : null,
    );
    for (let i = 0; i < 5; i++) await cache.verify(`good-${i}`);
    // 2,000 distinct wrong tokens: one lookup each, but the five valid tokens stay cached.
    for (let i = 0; i < 2000; i++) await cache.verify(`bad-${i}`);
    expect(lookup).toHaveBeenCalledTimes(2005);
    for (let i = 0; i < 5; i++) expect(await cache.verify(`good-${i}`)).toEqual({ id: `good-${i}` });
    expect(lookup).toHaveBeenCalledTimes(2005);
    expect(cache.stats()).toMatchObject({ size: 5, negativeSize: 100, evictions: 0 });
    // The most recent bad tokens are remembered: repeating them costs no lookup.
    for (let i = 1900; i < 2000; i++) expect(await cache.verify(`bad-${i}`)).toBeNull();
    expect(lookup).toHaveBeenCalledTimes(2005);
    expect(cache.stats().negativeHits).toBe(100);
  });

  it('never lets an entry outlive the credential’s own expiry', async () => {
    const clock0 = 1_000_000;
    const { cache, lookup, clock } = setup({ expiresAt: (p) => p.expires }, () => ({
      id: 'k1',
      expires: clock0 + 10_000,
    }));
    expect(await cache.verify(TOKEN)).toMatchObject({ id: 'k1' });
    clock.now += 9_999;
    await cache.verify(TOKEN);
    expect(lookup).toHaveBeenCalledTimes(1);
    clock.now += 1;
    // The lookup still says the (now expired) credential: it is refused.
    expect(await cache.verify(TOKEN)).toBeNull();
    expect(lookup).toHaveBeenCalledTimes(2);
  });

  it('accepts a Date from expiresAt', async () => {
    const { cache, lookup, clock } = setup({ expiresAt: () => new Date(1_000_000 + 5_000) });
    await cache.verify(TOKEN);
    clock.now += 5_000;
    await cache.verify(TOKEN);
    expect(lookup).toHaveBeenCalledTimes(2);
  });

  it('shares one lookup among 1,000 concurrent verifications of a token', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const lookup = vi.fn(async () => {
      await gate;
      return { id: 'k1' };
    });
    const cache = createTokenCache({ verify: lookup });
    caches.push(cache);
    const all = Promise.all(Array.from({ length: 1000 }, () => cache.verify(TOKEN)));
    expect(cache.stats().inFlight).toBe(1);
    release();
    const results = await all;
    expect(lookup).toHaveBeenCalledTimes(1);
    expect(results.every((r) => (r as { id: string }).id === 'k1')).toBe(true);
    expect(cache.stats().inFlight).toBe(0);
  });

  it('does not cache a failed lookup and raises a typed error', async () => {
    let down = true;
    const lookup = vi.fn(async () => {
      if (down) throw new Error('connection refused by the database');
      return { id: 'k1' };
    });
    const cache = createTokenCache({ verify: lookup });
    caches.push(cache);
    const error = await cache.verify(TOKEN).catch((e: unknown) => e);
    expect(isTokenVerificationError(error)).toBe(true);
    expect((error as Error).cause).toMatchObject({ message: 'connection refused by the database' });
    expect(String((error as Error).message)).not.toContain(TOKEN);
    down = false;
    expect(await cache.verify(TOKEN)).toEqual({ id: 'k1' });
    expect(lookup).toHaveBeenCalledTimes(2);
    expect(cache.stats()).toMatchObject({ lookupErrors: 1, size: 1 });
  });

  it('serves a recent positive answer while the lookup fails, within staleIfErrorMs only', async () => {
    let down = false;
    const clock = { now: 0 };
    const cache = createTokenCache<Principal>({
      verify: async () => {
        if (down) throw new Error('db down');
        return { id: 'k1' };
      },
      ttlMs: 1000,
      staleIfErrorMs: 5000,
      now: () => clock.now,
      sweepIntervalMs: 0,
    });
    caches.push(cache as TokenCache<unknown>);
    await cache.verify(TOKEN);
    down = true;
    clock.now = 1000 + 4999;
    expect(await cache.verify(TOKEN)).toEqual({ id: 'k1' });
    expect(cache.stats().staleHits).toBe(1);
    clock.now = 1000 + 5000;
    await expect(cache.verify(TOKEN)).rejects.toSatisfy(isTokenVerificationError);
  });

  it('keeps no raw token anywhere it holds state', async () => {
    // A plain lookup, not a vi.fn (which would itself record the token among its calls).
    const cache = createTokenCache({ verify: async (token) => (token === TOKEN ? { id: 'k1' } : null) });
    caches.push(cache);
    await cache.verify(TOKEN);
    await cache.verify(`${TOKEN}-other`);
    const everything = inspect(cache, {
      depth: Number.POSITIVE_INFINITY,
      showHidden: true,
      maxArrayLength: null,
    });
    expect(everything).not.toContain(TOKEN);
    expect(everything).not.toContain('0123456789abcdef');
    expect(JSON.stringify(cache.stats())).not.toContain(TOKEN);
  });

  it('invalidate() forgets a token at once, and a lookup in flight is not cached', async () => {
    const { cache, lookup } = setup();
    await cache.verify(TOKEN);
    await cache.invalidate(TOKEN);
    await cache.verify(TOKEN);
    expect(lookup).toHaveBeenCalledTimes(2);

    let release!: () => void;
    const slow = createTokenCache({
      verify: async () => {
        await new Promise<void>((resolve) => (release = resolve));
        return { id: 'k1' };
      },
    });
    caches.push(slow);
    const pending = slow.verify(TOKEN);
    await slow.invalidate(TOKEN);
    release();
    await pending;
    expect(slow.stats().size).toBe(0);
  });

  it('lets a caller stop waiting without cancelling the shared lookup', async () => {
    let release!: () => void;
    const cache = createTokenCache({
      verify: async () => {
        await new Promise<void>((resolve) => (release = resolve));
        return { id: 'k1' };
      },
    });
    caches.push(cache);
    const controller = new AbortController();
    const impatient = cache.verify(TOKEN, { signal: controller.signal });
    const patient = cache.verify(TOKEN);
    controller.abort(new Error('client left'));
    const error = await impatient.catch((e: unknown) => e);
    expect(isRequestAbortedError(error)).toBe(true);
    expect(((error as Error).cause as Error).message).toBe('client left');
    release();
    expect(await patient).toEqual({ id: 'k1' });
    expect(cache.stats().size).toBe(1);
  });

  it('sweeps stale entries on one unref()ed interval', async () => {
    vi.useFakeTimers({ now: 0 });
    const cache = createTokenCache({
      verify: async () => ({ id: 'k1' }),
      ttlMs: 1000,
      sweepIntervalMs: 60_000,
    });
    caches.push(cache);
    await cache.verify('a');
    await cache.verify('b');
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(59_999);
    expect(cache.stats()).toMatchObject({ sweeps: 0, size: 2 });
    vi.advanceTimersByTime(1);
    expect(cache.stats()).toMatchObject({ sweeps: 1, size: 0 });
    await cache.close();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('evicts the least recently used beyond max', async () => {
    const { cache } = setup({ max: 2 });
    await cache.verify('a');
    await cache.verify('b');
    await cache.verify('a');
    await cache.verify('c');
    expect(cache.stats()).toMatchObject({ size: 2, evictions: 1 });
  });

  it('aborts running lookups’ signals on close()', async () => {
    let seen: AbortSignal | undefined;
    const cache = createTokenCache({
      verify: (_token, signal) => {
        seen = signal;
        return new Promise((_resolve, reject) =>
          signal.addEventListener('abort', () => reject(signal.reason)),
        );
      },
    });
    const pending = cache.verify(TOKEN).catch((e: unknown) => e);
    await cache.close();
    expect(seen?.aborted).toBe(true);
    expect(isTokenVerificationError(await pending)).toBe(true);
  });

  it('returns null for an empty token without a lookup', async () => {
    const { cache, lookup } = setup();
    expect(await cache.verify('')).toBeNull();
    expect(lookup).not.toHaveBeenCalled();
  });
});

describe('token cache options', () => {
  const verify = async () => null;
  const cases: [Record<string, unknown>, string][] = [
    [{}, 'Expected `verify` to be a function'],
    [{ verify, max: Number.POSITIVE_INFINITY }, 'Expected `max` to be a finite bound'],
    [{ verify, max: 0 }, 'Expected `max` to be an integer >= 1'],
    [{ verify, negativeMax: Number.POSITIVE_INFINITY }, 'Expected `negativeMax` to be a finite bound'],
    [{ verify, negativeMax: 1.5 }, 'Expected `negativeMax` to be an integer >= 1'],
    [{ verify, ttlMs: 0 }, 'Expected `ttlMs` to be a number >= 1'],
    [{ verify, negativeTtlMs: -1 }, 'Expected `negativeTtlMs` to be a number >= 0'],
    [{ verify, sweepIntervalMs: 'often' }, 'got `"often"` (string)'],
    [{ verify, redis: { client: {} } }, 'Expected `redis.client` to be an ioredis client'],
    [{ verify, ttl: 5 }, 'Unknown option `ttl`'],
  ];
  it.each(cases)('refuses %j', (options, message) => {
    let error: unknown;
    try {
      createTokenCache(options as never);
    } catch (e) {
      error = e;
    }
    expect(isInvalidOptionError(error)).toBe(true);
    expect((error as Error).message).toContain(message);
  });

  it('refuses an unbounded cache by type', () => {
    // @ts-expect-error `verify` is required
    expect(() => createTokenCache({ max: 10 })).toThrow();
  });
});
