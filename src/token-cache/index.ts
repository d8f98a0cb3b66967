// createTokenCache: caches the answer of a token verification (database lookup, JWT check, auth service) by the
// token's hash, with a TTL, a periodic sweep, single-flight lookups, negative caching and cross-process revocation.
import * as crypto from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { ClosedError, RequestAbortedError, TokenVerificationError } from '../errors/index.js';
import {
  type RedisLike,
  type RedisSubscriberLike,
  resolveOptions,
  type TokenCacheOptions,
} from './options.js';

export type { RedisLike, RedisSubscriberLike, TokenCacheOptions } from './options.js';

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
    const options = resolveOptions(input);
    this.lookupFn = options.verify;
    this.ttlMs = options.ttlMs;
    this.negativeTtlMs = options.negativeTtlMs;
    this.staleIfErrorMs = options.staleIfErrorMs;
    this.expiresAt = options.expiresAt;
    this.now = options.now;
    const { max, negativeMax, sweepIntervalMs } = options;

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

    const redis = options.redis;
    if (redis !== undefined) {
      const client = redis.client;
      this.channel = redis.channel;
      this.publisher = client;
      this.subscriber = client.duplicate();
      this.subscriber.on('message', (channel, hash) => {
        if (channel === this.channel) this.forget(hash);
      });
      // The subscriber is ours: its connection errors (Redis down) must never go unhandled. The caller watches its own
      // client for the state of Redis; the subscription is retried until it takes.
      this.subscriber.on('error', () => {});
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
