// createIpRateLimiter: N requests per window per client IP (or any key), correct in one process, across cluster
// workers and across hosts, with IETF RateLimit headers and adapters for node:http, Express and Fastify.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type BlockList, isIP } from 'node:net';
import { ClosedError, type Refusal, refusalBody } from '../errors/index.js';
import { chooseStore, StoreOutage } from '../internal/shared-store.js';
import { clientIp, ipKey, normalizeIp, type TrustRule } from './client-ip.js';
import type { WindowState } from './memory-store.js';
import { type IpRateLimiterOptions, type RequestLike, resolveOptions } from './options.js';
import { ClusterStore, LocalStore, RedisStore, type Store } from './stores.js';

export type { ProxyHeader, TrustProxy } from './client-ip.js';
export type { IpRateLimiterOptions, RequestLike } from './options.js';
export { serveClusterRateLimits } from './stores.js';

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
  /** When refused: the 429 to answer (OpenAI's error shape, with the limit headers and `Retry-After`), as it is. */
  refusal: Refusal | undefined;
}

export interface RateLimiterStats {
  /** Requests counted (skipped and allowlisted ones are not). */
  checked: number;
  refused: number;
  /** Decisions taken while the store failed (by the insurance or the `onStoreError` policy). */
  degraded: number;
  /** Times the store failed (an error or its timeout). */
  storeErrors: number;
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
  /**
   * Express middleware. Store failures never reach it (`onStoreError` answers); an error that still escapes (a
   * throwing `keyGenerator` or `skip`) goes to `next(error)`, as the budgets' adapter does.
   */
  express(): (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;
  /** Fastify `onRequest` hook: `app.addHook('onRequest', limiter.fastify())`. */
  fastify(): (request: { raw: IncomingMessage }, reply: FastifyReplyLike) => Promise<unknown>;
  stats(): RateLimiterStats;
  /** Closes the store; idempotent. Checks after it reject with a `ClosedError`. */
  close(): Promise<void>;
}

/** The part of a Fastify reply the hook uses. */
export interface FastifyReplyLike {
  header(name: string, value: string): unknown;
  code(status: number): unknown;
  type(contentType: string): unknown;
  send(body: string): unknown;
}

/**
 * Creates a per-IP rate limiter.
 *
 * @example
 * const limiter = createIpRateLimiter({ points: 20, windowSec: 60, trustProxy: ['10.0.0.0/8'] });
 * app.use(limiter.express());
 */
export function createIpRateLimiter(options: IpRateLimiterOptions = {}): IpRateLimiter {
  return new IpLimiter(options);
}

class IpLimiter implements IpRateLimiter {
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
  /** While the store fails: this process's share of the points (points ÷ processes, at least 1). */
  private readonly share: number;
  /** The shared stores' outage policy: this process's share meanwhile, a hand-over once the store is back. */
  private readonly outage: StoreOutage;
  /** What this process admitted while the store failed, by key: handed to the store once it is back. */
  private admittedMeanwhile = new Map<string, { consumed: number; resetAt: number }>();
  private closed: Promise<void> | undefined;
  private readonly counts: RateLimiterStats = { checked: 0, refused: 0, degraded: 0, storeErrors: 0 };

  constructor(input: IpRateLimiterOptions) {
    const options = resolveOptions(input);
    this.points = options.points;
    this.windowSec = options.windowSec;
    this.name = options.name;
    this.onStoreError = options.onStoreError;
    this.now = options.now;
    this.trust = options.trust;
    this.ipv6Subnet = options.ipv6Subnet;
    this.keyGenerator = options.keyGenerator;
    this.skip = options.skip;
    this.allowlist = options.allowlist;
    this.standardHeaders = options.standardHeaders;
    this.legacyHeaders = options.legacyHeaders;
    const storeTimeoutMs = options.storeTimeoutMs;
    this.policy = `"${this.name}";q=${this.points};w=${this.windowSec}`;

    const store = options.store;
    this.store = chooseStore<unknown, Store>(store, {
      memory: () => new LocalStore(this.windowSec, this.now),
      cluster: () => new ClusterStore(this.name, this.windowSec, storeTimeoutMs),
      redis: (client) => new RedisStore(client, this.name, this.points, this.windowSec, this.now),
    });
    if (store !== 'memory' && this.onStoreError === 'insurance')
      this.insurance = new LocalStore(this.windowSec, this.now);
    this.outage = new StoreOutage(options.processes, () => this.handOver());
    this.share = this.outage.share(this.points);
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
    if (this.closed !== undefined) return Promise.reject(new ClosedError('rate limiter'));
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
      refusal: undefined,
    };
  }

  consume(key: string, cost = 1): Promise<RateLimitDecision> {
    if (this.closed !== undefined) return Promise.reject(new ClosedError('rate limiter'));
    this.counts.checked++;
    // Back from an outage? What was admitted meanwhile goes to the store before any new decision there.
    if (this.outage.degraded) return this.recoverThenConsume(key, cost);
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

  private async recoverThenConsume(key: string, cost: number): Promise<RateLimitDecision> {
    try {
      await this.outage.recover();
    } catch {
      return this.fallback(key, cost);
    }
    return this.consume(key, cost);
  }

  /**
   * Hands what this process admitted while the store failed to the store, so the window does not start over (a Redis
   * restarted empty would otherwise admit the whole limit again). Counts from before the outage are the store's own:
   * lost if it restarted without persistence. Rejects, keeping what is left, when the store fails again.
   */
  private async handOver(): Promise<void> {
    const meanwhile = this.admittedMeanwhile;
    const now = this.now();
    for (const [key, { consumed, resetAt }] of meanwhile) {
      if (resetAt > now) await this.store.consume(key, consumed);
      meanwhile.delete(key);
    }
    this.insurance?.memory.clear();
  }

  /** The store failed: the insurance limiter counts (this process's share), or the fail-open/closed policy answers. */
  private fallback(key: string, cost: number): RateLimitDecision {
    this.counts.storeErrors++;
    this.counts.degraded++;
    this.outage.failed();
    if (this.insurance !== undefined) {
      const state = this.insurance.consume(key, cost);
      const decision = this.decide(state, key, true, this.share);
      if (decision.allowed) {
        // Bounded: a flood of distinct keys during an outage keeps at most this many to hand over.
        const meanwhile = this.admittedMeanwhile;
        const seen = meanwhile.get(key);
        if (seen !== undefined) seen.consumed += cost;
        else if (meanwhile.size < 100_000) meanwhile.set(key, { consumed: cost, resetAt: state.resetAt });
      }
      return decision;
    }
    const allowed = this.onStoreError === 'open';
    return this.decision(allowed, this.points, allowed ? this.points : 0, this.windowSec * 1000, key, true);
  }

  private decide(state: WindowState, key: string, degraded: boolean, limit = this.points): RateLimitDecision {
    const resetMs = Math.max(0, state.resetAt - (state.now ?? this.now()));
    return this.decision(
      state.consumed <= limit,
      this.points,
      Math.max(0, limit - state.consumed),
      resetMs,
      key,
      degraded,
    );
  }

  private decision(
    allowed: boolean,
    limit: number,
    remaining: number,
    resetMs: number,
    key: string,
    degraded: boolean,
  ): RateLimitDecision {
    const decision: RateLimitDecision = {
      allowed,
      limit,
      remaining,
      resetMs,
      retryAfterSec: allowed ? 0 : Math.min(this.windowSec, Math.max(1, Math.ceil(resetMs / 1000))),
      key,
      degraded,
      refusal: undefined,
    };
    if (!allowed) {
      this.counts.refused++;
      decision.refusal = {
        status: 429,
        type: 'rate_limit_exceeded',
        code: 'rate_limit_exceeded',
        message: `Rate limit exceeded: ${limit} requests per ${this.windowSec} seconds. Retry after ${decision.retryAfterSec} seconds.`,
        param: null,
        headers: this.headers(decision),
      };
    }
    return decision;
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

  async handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const decision = await this.check(req);
    if (decision.key === undefined) return true;
    const headers = this.headers(decision);
    for (const name in headers) res.setHeader(name, headers[name]!);
    const refusal = decision.refusal;
    if (refusal === undefined) return true;
    const body = refusalBody(refusal);
    res.writeHead(refusal.status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
    return false;
  }

  express(): (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void {
    return (req, res, next) => {
      this.handle(req, res).then(
        (allowed) => {
          if (allowed) next();
        },
        // Store failures were answered by onStoreError already: what is left is a bug, and Express's to report.
        (error) => next(error),
      );
    };
  }

  fastify(): (request: { raw: IncomingMessage }, reply: FastifyReplyLike) => Promise<unknown> {
    return async (request, reply) => {
      const decision = await this.check(request.raw);
      if (decision.key === undefined) return;
      const headers = this.headers(decision);
      for (const name in headers) reply.header(name, headers[name]!);
      const refusal = decision.refusal;
      if (refusal === undefined) return;
      reply.code(refusal.status);
      reply.type('application/json');
      return reply.send(refusalBody(refusal));
    };
  }

  stats(): RateLimiterStats {
    return { ...this.counts };
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      await this.store.close();
      await this.insurance?.close();
    })();
    return this.closed;
  }
}
