// createTokenCache: caches the answer of a token verification (database lookup, JWT check, auth service) by the
// token's hash, with a TTL, a periodic sweep, single-flight lookups, negative caching and cross-process revocation.
import * as crypto from 'node:crypto';
import { LRUCache } from 'lru-cache';
import {
  ClosedError,
  InvalidOptionError,
  RequestAbortedError,
  TokenVerificationError,
} from '../errors/index.js';
import {
  clockOption,
  invalid,
  numberOption,
  objectOption,
  rejectUnknownKeys,
  stringOption,
} from '../internal/validate.js';

/** The slice of an ioredis client the cache uses (structural, so ioredis stays an optional peer). */
export interface RedisLike {
  publish(channel: string, message: string): Promise<unknown>;
  /** A second connection for subscribing (a subscribed ioredis connection cannot publish). */
  duplicate(): RedisSubscriberLike;
}

export interface RedisSubscriberLike {
  subscribe(channel: string): Promise<unknown>;
  on(event: 'message', listener: (channel: string, message: string) => void): unknown;
  quit(): Promise<unknown>;
}

export interface TokenCacheOptions<P> {
  /**
   * The lookup: resolves the principal for a valid token, `null` for an invalid one, and throws when it could not
   * check (database down). The signal fires when the cache closes.
   */
  verify: (token: string, signal: AbortSignal) => Promise<P | null>;
  /** How long a valid answer is served from the cache, ms. @default 300000 (5 min, the seed's) */
  ttlMs?: number;
  /** How long an "invalid" answer is cached, ms, so floods of bad tokens don't reach the database. 0 = never. @default 30000 */
  negativeTtlMs?: number;
  /** How often stale entries are purged, ms (one unref()ed interval). 0 = only lazily. @default 60000 (the seed's) */
  sweepIntervalMs?: number;
  /** Most valid tokens kept (least recently used go first). A bound is required. @default 10000 */
  max?: number;
  /**
   * Most "invalid" answers kept, in a cache of their own: a flood of distinct bad tokens then never evicts valid
   * ones, and repeats of a bad token stay off the database. @default 1000
   */
  negativeMax?: number;
  /** The credential's own expiry (epoch ms or a Date): an entry never outlives it. */
  expiresAt?: (principal: P) => number | Date | undefined;
  /**
   * While the lookup throws, keep serving a positive answer up to this long past its TTL, ms. 0 = off (a failed
   * lookup always fails the check). @default 0
   */
  staleIfErrorMs?: number;
  /** Revocation across processes and hosts: `invalidate()` publishes the token's hash, every cache drops it. */
  redis?: { client: RedisLike; channel?: string };
  /** Clock, epoch ms (for tests and `expiresAt`). @default Date.now */
  now?: () => number;
}

export interface TokenCacheStats {
  hits: number;
  misses: number;
  /** Answers served from a cached "invalid". */
  negativeHits: number;
  /** Positive answers served past their TTL because the lookup failed (`staleIfErrorMs`). */
  staleHits: number;
  /** Lookups running now. */
  inFlight: number;
  /** Lookups started (single flight: one per token at a time). */
  lookups: number;
  lookupErrors: number;
  /** Valid tokens cached. */
  size: number;
  /** "Invalid" answers cached. */
  negativeSize: number;
  /** Valid entries pushed out by `max`. */
  evictions: number;
  sweeps: number;
  invalidations: number;
}

export interface TokenCache<P> {
  /**
   * The principal for a valid token, `null` for an invalid one. Rejects with {@link TokenVerificationError} when the
   * lookup fails (it cannot tell), with `RequestAbortedError` when `signal` aborts (the shared lookup goes on for the
   * others; the signal's reason is the error's `cause`), and with `ClosedError` after `close()`.
   */
  verify(token: string, options?: { signal?: AbortSignal }): Promise<P | null>;
  /** Forgets a token here and, with `redis`, in every process sharing the channel. */
  invalidate(token: string): Promise<void>;
  clear(): void;
  stats(): TokenCacheStats;
  /** Resolves once the Redis revocation subscription is live (at once without `redis`). */
  ready(): Promise<void>;
  /** Stops the sweep, aborts running lookups' signals, drops the entries and the Redis subscription. */
  close(): Promise<void>;
}

interface Entry<P> {
  principal: P;
  /** Served as fresh until then (epoch ms). */
  freshUntil: number;
}

interface Lookup<P> {
  promise: Promise<P | null>;
  /** Set when the token was invalidated while the lookup ran: its answer must not be cached. */
  revoked: boolean;
}

const KEYS = [
  'verify',
  'ttlMs',
  'negativeTtlMs',
  'sweepIntervalMs',
  'max',
  'negativeMax',
  'expiresAt',
  'staleIfErrorMs',
  'redis',
  'now',
] as const satisfies readonly (keyof TokenCacheOptions<unknown>)[];

/** The cache key: SHA-256 of the token. The raw token is never stored, logged or published. */
export function hashToken(token: string): string {
  return oneShotHash === undefined
    ? crypto.createHash('sha256').update(token).digest('base64url')
    : oneShotHash('sha256', token, 'base64url');
}

// crypto.hash (Node >= 20.12) skips the Hash object: about twice as fast for short inputs.
const oneShotHash = (crypto as { hash?: (algorithm: string, data: string, encoding: 'base64url') => string })
  .hash;

/**
 * Creates a verification cache.
 *
 * @example
 * const tokens = createTokenCache({ verify: (token) => db.findKeyByHash(sha256(token)) });
 * const principal = await tokens.verify(bearer); // null → 401
 */
export function createTokenCache<P>(options: TokenCacheOptions<P>): TokenCache<P> {
  return new Cache(options);
}

class Cache<P> implements TokenCache<P> {
  private readonly lookupFn: TokenCacheOptions<P>['verify'];
  private readonly ttlMs: number;
  private readonly negativeTtlMs: number;
  private readonly staleIfErrorMs: number;
  private readonly expiresAt: TokenCacheOptions<P>['expiresAt'];
  private readonly now: () => number;
  private readonly cache: LRUCache<string, Entry<P>>;
  /** "Invalid" answers: token hash → fresh until (epoch ms). */
  private readonly negative: LRUCache<string, number> | undefined;
  private readonly inflight = new Map<string, Lookup<P>>();
  private readonly closing = new AbortController();
  private readonly sweepTimer: NodeJS.Timeout | undefined;
  private readonly channel: string | undefined;
  private readonly publisher: RedisLike | undefined;
  private readonly subscriber: RedisSubscriberLike | undefined;
  private readonly subscribed: Promise<void> | undefined;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly counts = {
    hits: 0,
    misses: 0,
    negativeHits: 0,
    staleHits: 0,
    lookups: 0,
    lookupErrors: 0,
    evictions: 0,
    sweeps: 0,
    invalidations: 0,
  };

  constructor(input: TokenCacheOptions<P>) {
    const options = objectOption('options', input);
    if (options === undefined) throw invalid('options', 'an object', input);
    rejectUnknownKeys('', options, KEYS);
    if (typeof options.verify !== 'function')
      throw invalid('verify', 'a function (token, signal) => Promise<principal | null>', options.verify);
    if (options.max === Number.POSITIVE_INFINITY) {
      throw new InvalidOptionError(
        'max',
        'Expected `max` to be a finite bound: an unbounded cache can exhaust memory',
      );
    }
    this.lookupFn = options.verify as TokenCacheOptions<P>['verify'];
    this.ttlMs = numberOption('ttlMs', options.ttlMs, 300_000, { min: 1, max: 2_147_483_647 });
    this.negativeTtlMs = numberOption('negativeTtlMs', options.negativeTtlMs, 30_000, {
      min: 0,
      max: 2_147_483_647,
    });
    this.staleIfErrorMs = numberOption('staleIfErrorMs', options.staleIfErrorMs, 0, {
      min: 0,
      max: 2_147_483_647,
    });
    const sweepIntervalMs = numberOption('sweepIntervalMs', options.sweepIntervalMs, 60_000, {
      min: 0,
      max: 2_147_483_647,
    });
    const max = numberOption('max', options.max, 10_000, { min: 1, max: 100_000_000, integer: true });
    if (options.negativeMax === Number.POSITIVE_INFINITY) {
      throw new InvalidOptionError(
        'negativeMax',
        'Expected `negativeMax` to be a finite bound: an unbounded cache can exhaust memory',
      );
    }
    const negativeMax = numberOption('negativeMax', options.negativeMax, 1000, {
      min: 1,
      max: 100_000_000,
      integer: true,
    });
    if (options.expiresAt !== undefined && typeof options.expiresAt !== 'function') {
      throw invalid('expiresAt', 'a function (principal) => epoch ms | Date | undefined', options.expiresAt);
    }
    this.expiresAt = options.expiresAt as TokenCacheOptions<P>['expiresAt'];
    this.now = clockOption(options.now);

    this.cache = new LRUCache<string, Entry<P>>({
      max,
      // lru-cache keeps each entry until its own TTL (freshness plus the stale-if-error window) on our clock.
      ttl: this.ttlMs + this.staleIfErrorMs,
      // +1: lru-cache treats a start time of 0 as "no TTL", which an injected clock starting at 0 would hit.
      perf: { now: () => this.now() + 1 },
      // Read the clock each time rather than caching it behind a timer per millisecond.
      ttlResolution: 0,
      dispose: (_value, _key, reason) => {
        if (reason === 'evict') this.counts.evictions++;
      },
    });

    if (this.negativeTtlMs > 0) {
      this.negative = new LRUCache<string, number>({
        max: negativeMax,
        ttl: this.negativeTtlMs,
        perf: { now: () => this.now() + 1 },
        ttlResolution: 0,
      });
    }

    if (sweepIntervalMs > 0) {
      this.sweepTimer = setInterval(() => this.sweep(), sweepIntervalMs);
      this.sweepTimer.unref();
    }

    const redis = objectOption('redis', options.redis);
    if (redis !== undefined) {
      rejectUnknownKeys('redis', redis, ['client', 'channel']);
      const client = redis.client as RedisLike | undefined;
      if (typeof client?.publish !== 'function' || typeof client?.duplicate !== 'function') {
        throw invalid('redis.client', 'an ioredis client', client);
      }
      this.channel = stringOption('redis.channel', redis.channel, 'vllm-kit:token-revocations');
      this.publisher = client;
      this.subscriber = client.duplicate();
      this.subscriber.on('message', (channel, hash) => {
        if (channel === this.channel) this.forget(hash);
      });
      const subscriber = this.subscriber;
      const channel = this.channel;
      // A client without an offline queue refuses commands until connected: try again shortly until it takes.
      this.subscribed = new Promise<void>((resolve) => {
        const subscribe = () => {
          subscriber.subscribe(channel).then(
            () => resolve(),
            () => {
              if (this.closed) return;
              this.retryTimer = setTimeout(subscribe, 200);
              this.retryTimer.unref();
            },
          );
        };
        subscribe();
      });
    }
  }

  async verify(token: string, options?: { signal?: AbortSignal }): Promise<P | null> {
    if (this.closed) throw new ClosedError('token cache');
    if (typeof token !== 'string' || token === '') return null;
    const key = hashToken(token);
    const entry = this.cache.get(key, { allowStale: true });
    const now = this.now();
    if (entry !== undefined && entry.freshUntil > now) {
      this.counts.hits++;
      return entry.principal;
    }
    if (entry === undefined) {
      const invalidUntil = this.negative?.get(key);
      if (invalidUntil !== undefined && invalidUntil > now) {
        this.counts.negativeHits++;
        return null;
      }
    }
    this.counts.misses++;
    let lookup = this.inflight.get(key);
    if (lookup === undefined) lookup = this.startLookup(key, token, entry);
    const signal = options?.signal;
    if (signal === undefined) return lookup.promise;
    // The caller may stop waiting; the shared lookup carries on for the others (and fills the cache).
    signal.throwIfAborted();
    return new Promise<P | null>((resolve, reject) => {
      const onAbort = () => reject(new RequestAbortedError({ cause: signal.reason }));
      signal.addEventListener('abort', onAbort, { once: true });
      lookup.promise.then(
        (value) => {
          signal.removeEventListener('abort', onAbort);
          resolve(value);
        },
        (error: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(error);
        },
      );
    });
  }

  private startLookup(key: string, token: string, previous: Entry<P> | undefined): Lookup<P> {
    this.counts.lookups++;
    const lookup: Lookup<P> = { promise: undefined as unknown as Promise<P | null>, revoked: false };
    lookup.promise = (async () => {
      try {
        const principal = await this.lookupFn(token, this.closing.signal);
        return this.store(key, principal, lookup.revoked);
      } catch (error) {
        this.counts.lookupErrors++;
        // Serve a recent positive answer while the store is down, if allowed.
        if (
          previous !== undefined &&
          previous.principal !== null &&
          this.staleIfErrorMs > 0 &&
          !lookup.revoked &&
          this.now() < previous.freshUntil + this.staleIfErrorMs
        ) {
          this.counts.staleHits++;
          return previous.principal;
        }
        throw new TokenVerificationError(error);
      } finally {
        this.inflight.delete(key);
      }
    })();
    this.inflight.set(key, lookup);
    return lookup;
  }

  private store(key: string, principal: P | null, revoked: boolean): P | null {
    const now = this.now();
    if (principal === null || principal === undefined) {
      // No longer valid (revoked or expired in the store): its positive entry, kept for stale-if-error, goes too.
      this.cache.delete(key);
      if (!revoked) this.negative?.set(key, now + this.negativeTtlMs);
      return null;
    }
    this.negative?.delete(key);
    let freshUntil = now + this.ttlMs;
    const expiry = this.expiresAt?.(principal);
    if (expiry !== undefined) {
      const expiresAtMs = expiry instanceof Date ? expiry.getTime() : expiry;
      // Already expired: the credential is no longer valid, whatever the lookup said.
      if (expiresAtMs <= now) return null;
      freshUntil = Math.min(freshUntil, expiresAtMs);
    }
    if (!revoked) {
      const capped = freshUntil < now + this.ttlMs;
      // An entry capped by its credential's expiry is never served stale past that expiry.
      this.cache.set(
        key,
        { principal, freshUntil },
        { ttl: freshUntil - now + (capped ? 0 : this.staleIfErrorMs) },
      );
    }
    return principal;
  }

  async invalidate(token: string): Promise<void> {
    const key = hashToken(token);
    this.forget(key);
    if (this.publisher !== undefined && this.channel !== undefined) {
      await this.publisher.publish(this.channel, key);
    }
  }

  private forget(key: string): void {
    this.counts.invalidations++;
    this.cache.delete(key);
    this.negative?.delete(key);
    const lookup = this.inflight.get(key);
    if (lookup !== undefined) lookup.revoked = true;
  }

  /** Resolves once the revocation subscription is live (useful in tests and at start-up). */
  ready(): Promise<void> {
    return (this.subscribed ?? Promise.resolve()).then(() => undefined);
  }

  clear(): void {
    this.cache.clear();
    this.negative?.clear();
  }

  private sweep(): void {
    this.cache.purgeStale();
    this.negative?.purgeStale();
    this.counts.sweeps++;
  }

  stats(): TokenCacheStats {
    return {
      ...this.counts,
      inFlight: this.inflight.size,
      size: this.cache.size,
      negativeSize: this.negative?.size ?? 0,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.closing.abort(new ClosedError('token cache'));
    this.clear();
    await this.subscriber?.quit().catch(() => undefined);
  }
}
