// createTokenCache's options: every field documented with unit and default, resolved and validated in one place.
import { InvalidOptionError } from '../errors/index.js';
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
  on(event: 'error', listener: (error: Error) => void): unknown;
  quit(): Promise<unknown>;
}

export interface TokenCacheOptions<P> {
  /**
   * The lookup: resolves the principal for a valid token, `null` for an invalid one, and throws when it could not
   * check (database down). The signal fires when the cache closes.
   */
  verify: (token: string, signal: AbortSignal) => Promise<P | null>;
  /** How long a valid answer is served from the cache, ms. @default 300000 (5 min) */
  ttlMs?: number;
  /** How long an "invalid" answer is cached, ms, so floods of bad tokens don't reach the database. 0 = never. @default 30000 */
  negativeTtlMs?: number;
  /** How often stale entries are purged, ms (one unref()ed interval). 0 = only lazily. @default 60000 (every minute) */
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

export interface ResolvedTokenCacheOptions<P> {
  verify: TokenCacheOptions<P>['verify'];
  ttlMs: number;
  negativeTtlMs: number;
  staleIfErrorMs: number;
  sweepIntervalMs: number;
  max: number;
  negativeMax: number;
  expiresAt: TokenCacheOptions<P>['expiresAt'];
  redis: { client: RedisLike; channel: string } | undefined;
  now: () => number;
}

const MAX_MS = 2_147_483_647; // setTimeout's limit

/** A bound that must be finite: an unbounded cache can exhaust memory. */
function finiteBound(option: string, value: unknown, fallback: number): number {
  if (value === Number.POSITIVE_INFINITY) {
    throw new InvalidOptionError(
      option,
      `Expected \`${option}\` to be a finite bound: an unbounded cache can exhaust memory`,
    );
  }
  return numberOption(option, value, fallback, { min: 1, max: 100_000_000, integer: true });
}

export function resolveOptions<P>(input: TokenCacheOptions<P>): ResolvedTokenCacheOptions<P> {
  const options = objectOption('options', input);
  if (options === undefined) throw invalid('options', 'an object', input);
  rejectUnknownKeys('', options, KEYS);
  if (typeof options.verify !== 'function')
    throw invalid('verify', 'a function (token, signal) => Promise<principal | null>', options.verify);
  const max = finiteBound('max', options.max, 10_000);
  const negativeMax = finiteBound('negativeMax', options.negativeMax, 1000);
  if (options.expiresAt !== undefined && typeof options.expiresAt !== 'function') {
    throw invalid('expiresAt', 'a function (principal) => epoch ms | Date | undefined', options.expiresAt);
  }
  let redis: ResolvedTokenCacheOptions<P>['redis'];
  const given = objectOption('redis', options.redis);
  if (given !== undefined) {
    rejectUnknownKeys('redis', given, ['client', 'channel']);
    const client = given.client as RedisLike | undefined;
    if (typeof client?.publish !== 'function' || typeof client?.duplicate !== 'function') {
      throw invalid('redis.client', 'an ioredis client', client);
    }
    redis = { client, channel: stringOption('redis.channel', given.channel, 'vllm-kit:token-revocations') };
  }
  return {
    verify: options.verify as TokenCacheOptions<P>['verify'],
    ttlMs: numberOption('ttlMs', options.ttlMs, 300_000, { min: 1, max: MAX_MS }),
    negativeTtlMs: numberOption('negativeTtlMs', options.negativeTtlMs, 30_000, { min: 0, max: MAX_MS }),
    staleIfErrorMs: numberOption('staleIfErrorMs', options.staleIfErrorMs, 0, { min: 0, max: MAX_MS }),
    sweepIntervalMs: numberOption('sweepIntervalMs', options.sweepIntervalMs, 60_000, {
      min: 0,
      max: MAX_MS,
    }),
    max,
    negativeMax,
    expiresAt: options.expiresAt as TokenCacheOptions<P>['expiresAt'],
    redis,
    now: clockOption(options.now),
  };
}
