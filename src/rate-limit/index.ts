// createIpRateLimiter: N requests per window per client IP (or any key), correct in one process, across cluster
// workers and across hosts, with IETF RateLimit headers and adapters for node:http, Express and Fastify.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type BlockList, isIP } from 'node:net';
import { InvalidOptionError } from '../errors/index.js';
import {
  booleanOption,
  clockOption,
  invalid,
  numberOption,
  objectOption,
  oneOfOption,
  rejectUnknownKeys,
  sharedStoreOptions,
} from '../internal/validate.js';
import {
  clientIp,
  compileTrust,
  ipKey,
  normalizeIp,
  type ProxyHeader,
  type TrustProxy,
  type TrustRule,
} from './client-ip.js';
import type { WindowState } from './memory-store.js';
import { ClusterStore, LocalStore, RedisStore, type Store } from './stores.js';

export type { ProxyHeader, TrustProxy } from './client-ip.js';
export { serveClusterRateLimits } from './stores.js';

type RequestLike = Pick<IncomingMessage, 'headers' | 'socket'>;

export interface IpRateLimiterOptions {
  /** Requests allowed per window and key. @default 20 (the seed's) */
  points?: number;
  /** Window length, seconds; a key's window starts at its first request. @default 60 */
  windowSec?: number;
  /**
   * Where counts live: `'memory'` (this process), `'cluster'` (one budget for all workers, held by the primary, which
   * must call `serveClusterRateLimits()`), or an ioredis client (one budget for all hosts). @default 'memory'
   */
  store?: 'memory' | 'cluster' | object;
  /** Names this limiter's budget in Redis/the primary and in the RateLimit-Policy header. @default 'default' */
  name?: string;
  /**
   * When the cluster primary or Redis fails: `'insurance'` counts in this process meanwhile, `'open'` lets requests
   * through, `'closed'` refuses them. Never a 500. @default 'insurance'
   */
  onStoreError?: 'insurance' | 'open' | 'closed';
  /** Longest wait for the cluster primary, ms, before `onStoreError` applies. @default 500 */
  storeTimeoutMs?: number;
  /**
   * Proxies whose X-Forwarded-For / Forwarded are believed: `false` (none: the socket address), a hop count, or a list
   * of addresses/CIDRs. `true` (trust anything) is refused: any client could then pick its own IP. @default false
   */
  trustProxy?: TrustProxy;
  /**
   * The one header trusted proxies write the client's address into: `'x-forwarded-for'` (nginx, HAProxy, cloud load
   * balancers, Cloudflare) or `'forwarded'` (RFC 7239). The other is ignored: proxies pass a client's own copy of
   * the header they do not write through untouched, so reading both would let any client choose its key.
   * @default 'x-forwarded-for'
   */
  proxyHeader?: ProxyHeader;
  /** IPv6 clients are keyed by this prefix (a /64 is one subscriber); 128 keys each address. @default 64 */
  ipv6Subnet?: number;
  /** Key a request by something else (e.g. an API key); return undefined to fall back to the IP. */
  keyGenerator?: (req: RequestLike) => string | undefined;
  /** Requests for which this returns true are not counted. */
  skip?: (req: RequestLike) => boolean;
  /** Addresses or CIDRs never limited (health checkers, internal services). */
  allowlist?: string[];
  /** Send `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-08). @default true */
  standardHeaders?: boolean;
  /** Also send the older `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` trio. @default false */
  legacyHeaders?: boolean;
  /** Clock, epoch ms. @default Date.now */
  now?: () => number;
}

export interface RateLimitDecision {
  allowed: boolean;
  /** Points per window. */
  limit: number;
  /** Points left in the window after this request. */
  remaining: number;
  /** Until the window ends, ms. */
  resetMs: number;
  /** Whole seconds to wait before retrying (for `Retry-After`); 0 when allowed. */
  retryAfterSec: number;
  /** The key counted (an IP, an IPv6 /64, or the keyGenerator's); undefined when skipped. */
  key: string | undefined;
  /** True when the store failed and the decision came from `onStoreError`. */
  degraded: boolean;
}

export interface IpRateLimiter {
  /** Counts one request from `req` (or an IP) and decides. */
  check(reqOrIp: RequestLike | string): Promise<RateLimitDecision>;
  /** Counts `cost` points against `key` directly. */
  consume(key: string, cost?: number): Promise<RateLimitDecision>;
  reset(key: string): Promise<void>;
  /** The response headers for a decision (Retry-After included when denied). */
  headers(decision: RateLimitDecision): Record<string, string>;
  /** node:http: sets the headers; when denied also answers 429 itself and resolves false. */
  handle(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
  /** Express middleware. */
  express(): (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;
  /** Fastify `onRequest` hook: `app.addHook('onRequest', limiter.fastify())`. */
  fastify(): (request: { raw: IncomingMessage }, reply: FastifyReplyLike) => Promise<unknown>;
  close(): Promise<void>;
}

/** The part of a Fastify reply the hook uses. */
export interface FastifyReplyLike {
  header(name: string, value: string): unknown;
  code(status: number): unknown;
  type(contentType: string): unknown;
  send(body: string): unknown;
}

const KEYS = [
  'points',
  'windowSec',
  'store',
  'name',
  'onStoreError',
  'storeTimeoutMs',
  'trustProxy',
  'proxyHeader',
  'ipv6Subnet',
  'keyGenerator',
  'skip',
  'allowlist',
  'standardHeaders',
  'legacyHeaders',
  'now',
] as const satisfies readonly (keyof IpRateLimiterOptions)[];

/**
 * Creates a per-IP rate limiter.
 *
 * @example
 * const limiter = createIpRateLimiter({ points: 20, windowSec: 60, trustProxy: ['10.0.0.0/8'] });
 * app.use(limiter.express());
 */
export function createIpRateLimiter(options: IpRateLimiterOptions = {}): IpRateLimiter {
  return new Limiter(options);
}

/** Compiles a list of addresses/CIDRs once, refusing a bad entry with a message that names the option. */
function compileList(option: string, value: unknown, header?: ProxyHeader): TrustRule {
  if (!Array.isArray(value)) throw invalid(option, 'an array of addresses or CIDRs', value);
  try {
    return compileTrust(value as string[], header);
  } catch (error) {
    throw new InvalidOptionError(
      option,
      `Expected \`${option}\` entries to be IP addresses or CIDRs, got ${JSON.stringify((error as Error).message)}`,
    );
  }
}

class Limiter implements IpRateLimiter {
  private readonly points: number;
  private readonly windowSec: number;
  private readonly name: string;
  private readonly store: Store;
  private readonly insurance: LocalStore | undefined;
  private readonly onStoreError: 'insurance' | 'open' | 'closed';
  private readonly trust: TrustRule;
  private readonly ipv6Subnet: number;
  private readonly keyGenerator: IpRateLimiterOptions['keyGenerator'];
  private readonly skip: IpRateLimiterOptions['skip'];
  private readonly allowlist: BlockList | undefined;
  private readonly standardHeaders: boolean;
  private readonly legacyHeaders: boolean;
  private readonly now: () => number;
  private readonly policy: string;

  constructor(input: IpRateLimiterOptions) {
    const options = objectOption('options', input) ?? {};
    rejectUnknownKeys('', options, KEYS);
    this.points = numberOption('points', options.points, 20, { min: 1, max: 2_000_000, integer: true });
    this.windowSec = numberOption('windowSec', options.windowSec, 60, {
      min: 1,
      max: 31_536_000,
      integer: true,
    });
    const shared = sharedStoreOptions<object>(options, 'eval');
    this.name = shared.name;
    this.onStoreError = shared.onStoreError;
    const storeTimeoutMs = shared.storeTimeoutMs;
    this.now = clockOption(options.now);

    const trustProxy = options.trustProxy;
    if (trustProxy === true) {
      throw new InvalidOptionError(
        'trustProxy',
        'Expected `trustProxy` to be false, a hop count or a list of proxy CIDRs, got `true`: trusting every ' +
          'X-Forwarded-For lets any client choose its own IP and escape the limit',
      );
    }
    if (
      trustProxy !== undefined &&
      trustProxy !== false &&
      typeof trustProxy !== 'number' &&
      !Array.isArray(trustProxy)
    ) {
      throw invalid('trustProxy', 'false, a hop count or a list of addresses/CIDRs', trustProxy);
    }
    const proxyHeader = oneOfOption(
      'proxyHeader',
      options.proxyHeader,
      ['x-forwarded-for', 'forwarded'],
      'x-forwarded-for',
    );
    this.trust = Array.isArray(trustProxy)
      ? compileList('trustProxy', trustProxy, proxyHeader)
      : compileTrust(
          typeof trustProxy === 'number'
            ? numberOption('trustProxy', trustProxy, 0, { min: 0, max: 100, integer: true })
            : false,
          proxyHeader,
        );
    this.ipv6Subnet = numberOption('ipv6Subnet', options.ipv6Subnet, 64, { min: 1, max: 128, integer: true });
    if (options.keyGenerator !== undefined && typeof options.keyGenerator !== 'function') {
      throw invalid('keyGenerator', 'a function', options.keyGenerator);
    }
    if (options.skip !== undefined && typeof options.skip !== 'function')
      throw invalid('skip', 'a function', options.skip);
    this.keyGenerator = options.keyGenerator as IpRateLimiterOptions['keyGenerator'];
    this.skip = options.skip as IpRateLimiterOptions['skip'];
    this.allowlist =
      options.allowlist === undefined ? undefined : compileList('allowlist', options.allowlist).list;
    this.standardHeaders = booleanOption('standardHeaders', options.standardHeaders, true);
    this.legacyHeaders = booleanOption('legacyHeaders', options.legacyHeaders, false);
    this.policy = `"${this.name}";q=${this.points};w=${this.windowSec}`;

    const store = shared.store;
    this.store =
      store === 'memory'
        ? new LocalStore(this.windowSec, this.now)
        : store === 'cluster'
          ? new ClusterStore(this.name, this.windowSec, storeTimeoutMs)
          : new RedisStore(store, this.name, this.points, this.windowSec, this.now);
    if (store !== 'memory' && this.onStoreError === 'insurance')
      this.insurance = new LocalStore(this.windowSec, this.now);
  }

  /** The key of a request: the keyGenerator's, or the client IP (an IPv6 /64). */
  private keyOf(req: RequestLike): { key: string; ip: string } {
    const ip = clientIp(req.socket?.remoteAddress, req.headers, this.trust);
    const custom = this.keyGenerator?.(req);
    return { key: custom ?? ipKey(ip, this.ipv6Subnet), ip };
  }

  private isAllowlisted(ip: string): boolean {
    if (this.allowlist === undefined) return false;
    const family = isIP(ip);
    return family !== 0 && this.allowlist.check(ip, family === 4 ? 'ipv4' : 'ipv6');
  }

  check(reqOrIp: RequestLike | string): Promise<RateLimitDecision> {
    if (typeof reqOrIp === 'string') {
      const ip = normalizeIp(reqOrIp);
      if (this.isAllowlisted(ip)) return Promise.resolve(this.skipped());
      return this.consume(ipKey(ip, this.ipv6Subnet));
    }
    if (this.skip?.(reqOrIp)) return Promise.resolve(this.skipped());
    const { key, ip } = this.keyOf(reqOrIp);
    if (this.isAllowlisted(ip)) return Promise.resolve(this.skipped());
    return this.consume(key);
  }

  private skipped(): RateLimitDecision {
    return {
      allowed: true,
      limit: this.points,
      remaining: this.points,
      resetMs: this.windowSec * 1000,
      retryAfterSec: 0,
      key: undefined,
      degraded: false,
    };
  }

  consume(key: string, cost = 1): Promise<RateLimitDecision> {
    let pending: Promise<WindowState> | WindowState;
    try {
      pending = this.store.consume(key, cost);
    } catch {
      return Promise.resolve(this.fallback(key, cost));
    }
    // The memory store answers synchronously: no extra await on the hot path.
    if (!(pending instanceof Promise)) return Promise.resolve(this.decide(pending, key, false));
    return pending.then(
      (state) => this.decide(state, key, false),
      () => this.fallback(key, cost),
    );
  }

  /** The store failed: the insurance limiter counts, or the fail-open/closed policy answers. */
  private fallback(key: string, cost: number): RateLimitDecision {
    if (this.insurance !== undefined) return this.decide(this.insurance.consume(key, cost), key, true);
    const allowed = this.onStoreError === 'open';
    return {
      allowed,
      limit: this.points,
      remaining: allowed ? this.points : 0,
      resetMs: this.windowSec * 1000,
      retryAfterSec: allowed ? 0 : this.windowSec,
      key,
      degraded: true,
    };
  }

  private decide(state: WindowState, key: string, degraded: boolean): RateLimitDecision {
    const allowed = state.consumed <= this.points;
    const resetMs = Math.max(0, state.resetAt - this.now());
    return {
      allowed,
      limit: this.points,
      remaining: Math.max(0, this.points - state.consumed),
      resetMs,
      retryAfterSec: allowed ? 0 : Math.min(this.windowSec, Math.max(1, Math.ceil(resetMs / 1000))),
      key,
      degraded,
    };
  }

  async reset(key: string): Promise<void> {
    this.insurance?.reset(key);
    await this.store.reset(key);
  }

  headers(decision: RateLimitDecision): Record<string, string> {
    const headers: Record<string, string> = {};
    // Windows end on whole seconds, so the remaining time can round up past the window: cap it.
    const resetSec = Math.min(this.windowSec, Math.ceil(decision.resetMs / 1000));
    if (this.standardHeaders) {
      headers['ratelimit-policy'] = this.policy;
      headers.ratelimit = `"${this.name}";r=${decision.remaining};t=${resetSec}`;
    }
    if (this.legacyHeaders) {
      headers['ratelimit-limit'] = String(decision.limit);
      headers['ratelimit-remaining'] = String(decision.remaining);
      headers['ratelimit-reset'] = String(resetSec);
    }
    if (!decision.allowed) headers['retry-after'] = String(decision.retryAfterSec);
    return headers;
  }

  /** The OpenAI-style 429 body. */
  private body(decision: RateLimitDecision): string {
    const message = `Rate limit exceeded: ${decision.limit} requests per ${this.windowSec} seconds. Retry after ${decision.retryAfterSec} seconds.`;
    return JSON.stringify({
      error: { message, type: 'rate_limit_exceeded', param: null, code: 'rate_limit_exceeded' },
    });
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const decision = await this.check(req);
    if (decision.key === undefined) return true;
    const headers = this.headers(decision);
    for (const name in headers) res.setHeader(name, headers[name]!);
    if (decision.allowed) return true;
    const body = this.body(decision);
    res.writeHead(429, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return false;
  }

  express(): (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void {
    return (req, res, next) => {
      this.handle(req, res).then(
        (allowed) => {
          if (allowed) next();
        },
        // A limiter bug must not take the API down: let the request through.
        () => next(),
      );
    };
  }

  fastify(): (request: { raw: IncomingMessage }, reply: FastifyReplyLike) => Promise<unknown> {
    return async (request, reply) => {
      const decision = await this.check(request.raw);
      if (decision.key === undefined) return;
      const headers = this.headers(decision);
      for (const name in headers) reply.header(name, headers[name]!);
      if (decision.allowed) return;
      reply.code(429);
      reply.type('application/json');
      return reply.send(this.body(decision));
    };
  }

  async close(): Promise<void> {
    await this.store.close();
    await this.insurance?.close();
  }
}
