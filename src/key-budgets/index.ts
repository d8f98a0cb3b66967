// createKeyBudgets: per-key limits on requests and tokens per minute, shared by every worker (cluster primary) and
// every host (Redis), with OpenAI's x-ratelimit-* headers and adapters for node:http, Express and Fastify. Tokens are
// charged from the response's own usage, before its last byte goes out.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ClosedError, type Refusal, refusalBody } from '../errors/index.js';
import { chooseStore, StoreOutage } from '../internal/shared-store.js';
import { invalid } from '../internal/validate.js';
import type { FastifyReplyLike } from '../rate-limit/index.js';
import { type KeyBudgetsOptions, resolveOptions } from './options.js';
import { type BudgetSettlement, type BudgetSettlementOptions, Settlement } from './settlement.js';
import {
  type BudgetOperation,
  type BudgetState,
  type BudgetStore,
  ClusterBudgetStore,
  MemoryBudgetStore,
  NO_LIMIT,
  NO_WINDOW,
  RESERVE_REST,
  RedisBudgetStore,
  type RedisScriptClient,
} from './stores.js';
import { estimatePromptTokens, type UsageMeter } from './usage.js';

export type { KeyBudgetsOptions } from './options.js';
export { type RequestCost, reservationFor } from './reserve.js';
export type { BudgetSettlement, BudgetSettlementOptions } from './settlement.js';
export { serveClusterBudgets } from './stores.js';
export {
  createUsageMeter,
  estimatePromptTokens,
  requestUsage,
  type TokenUsage,
  UsageMeter,
  type UsageMeterOptions,
  type UsageRequest,
  type UsageStrip,
} from './usage.js';

/** One key's limits, per window; a limit left out (or `null`) is no limit. */
export interface BudgetLimits {
  /** Requests admitted per window. */
  requests?: number | null | undefined;
  /** Tokens (prompt + completion) per window: a key is admitted while its window's tokens are under it. */
  tokens?: number | null | undefined;
}

export interface BudgetDecision {
  allowed: boolean;
  /** Which limit refused the request; undefined when allowed. */
  refusedBy: 'requests' | 'tokens' | undefined;
  /** The key's limits (undefined: none). */
  limitRequests: number | undefined;
  limitTokens: number | undefined;
  /** Requests left in the window after this one. */
  remainingRequests: number;
  /** Tokens left in the window (0 once it is spent). */
  remainingTokens: number;
  /** Until the window ends, ms. */
  resetMs: number;
  /** Whole seconds to wait before retrying (for `Retry-After`); 0 when allowed. */
  retryAfterSec: number;
  /** True when the store failed and the decision came from `onStoreError`. */
  degraded: boolean;
  /**
   * The tokens this admission reserved (`reserveTokens`), to pass back to {@link KeyBudgets.settle} or
   * {@link KeyBudgets.refund}; undefined when nothing was reserved.
   */
  reservation: BudgetReservation | undefined;
  /** Refused because the reservation alone is more than the key's whole token limit: no wait will admit it. */
  exceedsLimit: boolean;
  /** The tokens the request asked to reserve (shown in the refusal). */
  requestedTokens: number;
  /** When refused: the 429 to answer (OpenAI's error shape, with the `x-ratelimit-*` headers and `Retry-After`). */
  refusal: Refusal | undefined;
}

export interface KeyBudgetsStats {
  admitted: number;
  refused: number;
  /** Requests settled to their usage, and admitted requests refunded (never sent upstream). */
  settled: number;
  refunded: number;
  /** Operations answered while the store failed (by the insurance or the `onStoreError` policy). */
  degraded: number;
  /** Admissions answered from a lease of the key's window held by this worker (`leases`), with no round trip. */
  leased: number;
}

/** Tokens held for an admitted request until its usage is known. */
export interface BudgetReservation {
  key: string;
  tokens: number;
  /** The window they were reserved in (released only there). */
  window: number;
}

export interface AdmitOptions {
  /**
   * Tokens to reserve for this request: its worst case (prompt + `max_tokens` × choices). It is admitted only when they
   * fit under the key's token limit, they count at once against it (so concurrent requests cannot overshoot together),
   * and {@link KeyBudgets.settle} replaces them with the actual usage. 0: admitted while the window's tokens are under
   * the limit (the overshoot is then what in-flight requests use). `'rest'`: for a request with no bound of its own
   * (no `max_tokens`), admitted while the window's tokens are under the limit, reserving all that is left (one such
   * request per key at a time). @default 0
   */
  reserveTokens?: number | 'rest';
}

/** What the adapters need for one request: whose budget, and its limits. Return undefined to let it through. */
export type BudgetTarget = { key: string; limits: BudgetLimits } | undefined;

export interface KeyBudgets {
  /** Admits one request for `key` when both its limits allow it (a refused request is not counted). */
  admit(key: string, limits: BudgetLimits, options?: AdmitOptions): Promise<BudgetDecision>;
  /** Adds tokens to the key's window; resolves once the store has them (the key's next request sees them). */
  charge(key: string, tokens: number): Promise<void>;
  /**
   * Replaces an admission's reservation by the tokens the request actually used (in the window it was reserved in;
   * in a later window, the tokens are added there). Without a reservation, the same as {@link charge}.
   */
  settle(reservation: BudgetReservation | undefined, key: string, tokens: number): Promise<void>;
  /** Takes back an admitted request that never reached the upstream (shed by a full queue, say), and its reservation. */
  refund(key: string, reservation?: BudgetReservation): Promise<void>;
  reset(key: string): Promise<void>;
  /** OpenAI's `x-ratelimit-*` headers for a decision (`retry-after` too when refused). */
  headers(decision: BudgetDecision): Record<string, string>;
  /** OpenAI's 429 body for a refused decision (the same as `refusalBody(decision.refusal)`). */
  errorBody(decision: BudgetDecision): string;
  /**
   * The usage of one request, settled exactly once: charged from what its meter reads of the upstream's bytes, or
   * refunded (with its reservation) when it never went upstream. What the adapters use, and the gateway.
   */
  settlement(options: BudgetSettlementOptions): BudgetSettlement;
  stats(): KeyBudgetsStats;
  /**
   * node:http: admits (answering 429 itself and resolving false when refused), sets the headers, then watches
   * what is written to `res` and charges the usage it carries before the response's last byte — or, when the client
   * leaves first, what had been delivered.
   */
  handle(req: IncomingMessage, res: ServerResponse, target: BudgetTarget): Promise<boolean>;
  /** Express middleware: `app.use(budgets.express((req) => ({ key: req.user.id, limits })))`. */
  express(
    targetOf: (req: IncomingMessage) => BudgetTarget,
  ): (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;
  /** Fastify `onRequest` hook: `app.addHook('onRequest', budgets.fastify((req) => …))`. */
  fastify(
    targetOf: (req: IncomingMessage) => BudgetTarget,
  ): (
    request: { raw: IncomingMessage },
    reply: FastifyReplyLike & { raw: ServerResponse },
  ) => Promise<unknown>;
  /** Closes the store; idempotent. Calls after it reject with a `ClosedError`. */
  close(): Promise<void>;
}

/** A request counted without limits (handing over what was admitted during an outage). */
const UNLIMITED_ADMIT: BudgetOperation = {
  op: 'admit',
  requestLimit: NO_LIMIT,
  tokenLimit: NO_LIMIT,
  reserve: 0,
};
const RESET: BudgetOperation = { op: 'reset' };
const chargeOf = (used: number): BudgetOperation => ({ op: 'charge', used, reserved: 0, window: NO_WINDOW });

/** Formats a duration as OpenAI's rate-limit headers do (Go's `time.Duration`): `500ms`, `1.5s`, `6m0s`, `1h2m3s`. */
export function formatResetDuration(ms: number): string {
  const total = Math.max(0, Math.round(ms));
  if (total < 1000) return `${total}ms`;
  const hours = Math.floor(total / 3_600_000);
  const minutes = Math.floor((total % 3_600_000) / 60_000);
  const seconds = `${(total % 60_000) / 1000}s`;
  if (hours > 0) return `${hours}h${minutes}m${seconds}`;
  if (minutes > 0) return `${minutes}m${seconds}`;
  return seconds;
}

/** A limit as the stores take it: a non-negative integer, or NO_LIMIT. */
function limitOf(name: string, value: number | null | undefined): number {
  if (value === undefined || value === null) return NO_LIMIT;
  if (!Number.isSafeInteger(value) || value < 0)
    throw invalid(`limits.${name}`, 'an integer >= 0 or null', value);
  return value;
}

/**
 * Creates per-key request and token budgets.
 *
 * Admission with `reserveTokens` (see {@link reservationFor}) reserves a request's worst case and {@link KeyBudgets.settle}
 * replaces it with the actual usage: concurrent requests cannot overshoot the token limit together. Without it, admission
 * follows Envoy AI Gateway's and LiteLLM's semantics: a request is admitted while the key's window has requests left and
 * its charged tokens are under the token limit, and a key can overshoot by what the requests it had in flight use: at
 * most (its concurrent requests) × (their `max_tokens` + prompt tokens).
 *
 * @example
 * const budgets = createKeyBudgets({ store: redis });
 * const decision = await budgets.admit(apiKey.id, { requests: 60, tokens: 100_000 });
 */
export function createKeyBudgets(options: KeyBudgetsOptions = {}): KeyBudgets {
  return new Budgets(options);
}

class Budgets implements KeyBudgets {
  private readonly store: BudgetStore;
  private readonly insurance: MemoryBudgetStore | undefined;
  private readonly onStoreError: 'insurance' | 'open' | 'closed';
  private readonly windowMs: number;
  private readonly now: () => number;
  /** The shared stores' outage policy: once the store answers again, the insurance's windows are handed to it. */
  private readonly outage: StoreOutage;
  private closed: Promise<void> | undefined;
  private readonly counts: Omit<KeyBudgetsStats, 'leased'> = {
    admitted: 0,
    refused: 0,
    settled: 0,
    refunded: 0,
    degraded: 0,
  };

  constructor(input: KeyBudgetsOptions) {
    const { store, name, onStoreError, storeTimeoutMs, windowSec, now, processes, leases } =
      resolveOptions(input);
    this.onStoreError = onStoreError;
    this.windowMs = windowSec * 1000;
    this.now = now;
    this.store = chooseStore<RedisScriptClient, BudgetStore>(store, {
      memory: () => new MemoryBudgetStore(this.windowMs, this.now),
      cluster: () => new ClusterBudgetStore(name, this.windowMs, storeTimeoutMs, this.now, leases),
      redis: (client) => new RedisBudgetStore(client, name, this.windowMs, this.now),
    });
    this.outage = new StoreOutage(processes, () => this.handOver());
    if (store !== 'memory' && this.onStoreError === 'insurance')
      this.insurance = new MemoryBudgetStore(this.windowMs, this.now);
  }

  /** Runs an operation on the store; when it fails, on the insurance store (undefined without one). */
  private async apply(
    key: string,
    operation: BudgetOperation,
  ): Promise<{ state: BudgetState | undefined; degraded: boolean }> {
    if (this.closed !== undefined) throw new ClosedError('key budgets');
    let state: BudgetState;
    try {
      // Back from an outage? What was counted meanwhile goes to the store before any new decision there.
      if (this.outage.degraded) await this.outage.recover();
      const pending = this.store.apply(key, operation);
      state = pending instanceof Promise ? await pending : pending;
    } catch {
      this.outage.failed();
      this.counts.degraded++;
      if (this.insurance === undefined) return { state: undefined, degraded: true };
      // This process's share of each limit: together they stay within it.
      const share = (limit: number) => (limit === NO_LIMIT ? limit : this.outage.share(limit));
      const insured =
        operation.op === 'admit'
          ? {
              ...operation,
              requestLimit: share(operation.requestLimit),
              tokenLimit: share(operation.tokenLimit),
            }
          : operation;
      return { state: this.insurance.apply(key, insured), degraded: true };
    }
    return { state, degraded: false };
  }

  /**
   * The store answers again: the requests and tokens counted here while it failed are added there, so the windows do
   * not start over (a Redis restarted empty would otherwise admit each key's whole limit again). Rejects, keeping what
   * it could not hand over, when the store fails again.
   */
  private async handOver(): Promise<void> {
    const insurance = this.insurance;
    if (insurance === undefined) return;
    const windows = [...insurance.drain()];
    for (let i = 0; i < windows.length; i++) {
      const [key, counts] = windows[i]!;
      try {
        while (counts.requests > 0) {
          await this.store.apply(key, UNLIMITED_ADMIT);
          counts.requests--;
        }
        if (counts.tokens > 0) await this.store.apply(key, chargeOf(counts.tokens));
      } catch (error) {
        // Down again: what is left stays counted here.
        for (const [rest, left] of windows.slice(i)) {
          for (let r = 0; r < left.requests; r++) insurance.apply(rest, UNLIMITED_ADMIT);
          if (left.tokens > 0) insurance.apply(rest, chargeOf(left.tokens));
        }
        throw error;
      }
    }
  }

  async admit(key: string, limits: BudgetLimits, options?: AdmitOptions): Promise<BudgetDecision> {
    const decision = await this.decide(key, limits, options);
    if (decision.allowed) this.counts.admitted++;
    else {
      this.counts.refused++;
      decision.refusal = this.refusalOf(decision);
    }
    return decision;
  }

  private async decide(key: string, limits: BudgetLimits, options?: AdmitOptions): Promise<BudgetDecision> {
    const requests = limitOf('requests', limits.requests);
    const tokens = limitOf('tokens', limits.tokens);
    const asked = options?.reserveTokens ?? 0;
    const reserve = asked === 'rest' ? RESERVE_REST : asked;
    if (asked !== 'rest' && (!Number.isSafeInteger(asked) || asked < 0))
      throw invalid('reserveTokens', "an integer >= 0 or 'rest'", asked);
    const limitRequests = requests === NO_LIMIT ? undefined : requests;
    const limitTokens = tokens === NO_LIMIT ? undefined : tokens;
    const reserved = limitTokens === undefined ? 0 : reserve;
    if (limitTokens !== undefined && reserved > limitTokens) {
      // More than the whole limit can never be admitted: said at once, nothing counted.
      return {
        allowed: false,
        refusedBy: 'tokens',
        limitRequests,
        limitTokens,
        remainingRequests: limitRequests ?? 0,
        remainingTokens: limitTokens,
        resetMs: this.windowMs,
        retryAfterSec: Math.ceil(this.windowMs / 1000),
        degraded: false,
        reservation: undefined,
        exceedsLimit: true,
        requestedTokens: reserved,
        refusal: undefined,
      };
    }
    // Nothing is reserved against no limit.
    const { state, degraded } = await this.apply(key, {
      op: 'admit',
      requestLimit: requests,
      tokenLimit: tokens,
      reserve: reserved,
    });
    if (state === undefined) {
      // The store failed and no insurance: the fail-open/closed policy answers.
      const allowed = this.onStoreError === 'open';
      return {
        allowed,
        refusedBy: allowed ? undefined : limitRequests !== undefined ? 'requests' : 'tokens',
        limitRequests,
        limitTokens,
        remainingRequests: limitRequests ?? 0,
        remainingTokens: limitTokens ?? 0,
        resetMs: this.windowMs,
        retryAfterSec: allowed ? 0 : Math.ceil(this.windowMs / 1000),
        degraded: true,
        reservation: undefined,
        exceedsLimit: false,
        requestedTokens: Math.max(0, reserved),
        refusal: undefined,
      };
    }
    const resetMs = Math.max(0, state.resetAt - this.now());
    const refusedBy = state.admitted
      ? undefined
      : limitRequests !== undefined && state.requests >= limitRequests
        ? 'requests'
        : 'tokens';
    return {
      allowed: state.admitted,
      refusedBy,
      limitRequests,
      limitTokens,
      remainingRequests: limitRequests === undefined ? 0 : Math.max(0, limitRequests - state.requests),
      remainingTokens: limitTokens === undefined ? 0 : Math.max(0, limitTokens - state.tokens),
      resetMs,
      retryAfterSec: state.admitted ? 0 : Math.max(1, Math.ceil(resetMs / 1000)),
      degraded,
      reservation:
        state.admitted && state.reserved > 0
          ? { key, tokens: state.reserved, window: state.window }
          : undefined,
      exceedsLimit: false,
      requestedTokens: Math.max(0, reserved),
      refusal: undefined,
    };
  }

  async charge(key: string, tokens: number): Promise<void> {
    await this.settle(undefined, key, tokens);
  }

  async settle(reservation: BudgetReservation | undefined, key: string, tokens: number): Promise<void> {
    // Usage comes from upstream bytes: never let a bad figure reach the store (or throw at the caller).
    const used = Number.isSafeInteger(tokens) && tokens > 0 ? tokens : 0;
    this.counts.settled++;
    if (reservation === undefined) {
      if (used > 0) await this.apply(key, chargeOf(used));
      return;
    }
    await this.apply(key, { op: 'charge', used, reserved: reservation.tokens, window: reservation.window });
  }

  async refund(key: string, reservation?: BudgetReservation): Promise<void> {
    this.counts.refunded++;
    await this.apply(key, {
      op: 'refund',
      reserved: reservation?.tokens ?? 0,
      window: reservation?.window ?? NO_WINDOW,
    });
  }

  async reset(key: string): Promise<void> {
    if (this.closed !== undefined) throw new ClosedError('key budgets');
    this.insurance?.apply(key, RESET);
    await this.store.apply(key, RESET);
  }

  headers(decision: BudgetDecision): Record<string, string> {
    const headers: Record<string, string> = {};
    const reset = formatResetDuration(decision.resetMs);
    if (decision.limitRequests !== undefined) {
      headers['x-ratelimit-limit-requests'] = String(decision.limitRequests);
      headers['x-ratelimit-remaining-requests'] = String(decision.remainingRequests);
      headers['x-ratelimit-reset-requests'] = reset;
    }
    if (decision.limitTokens !== undefined) {
      headers['x-ratelimit-limit-tokens'] = String(decision.limitTokens);
      headers['x-ratelimit-remaining-tokens'] = String(decision.remainingTokens);
      headers['x-ratelimit-reset-tokens'] = reset;
    }
    if (!decision.allowed) headers['retry-after'] = String(decision.retryAfterSec);
    return headers;
  }

  errorBody(decision: BudgetDecision): string {
    return refusalBody(decision.refusal ?? this.refusalOf(decision));
  }

  private refusalOf(decision: BudgetDecision): Refusal {
    const type = decision.refusedBy ?? 'requests';
    const limit = type === 'tokens' ? decision.limitTokens : decision.limitRequests;
    const per = this.windowMs === 60_000 ? 'minute' : `${this.windowMs / 1000} seconds`;
    const message = decision.exceedsLimit
      ? `Request too large for ${type} per ${per}: limit ${limit}, requested ${decision.requestedTokens} (the prompt and max_tokens × choices). Lower max_tokens or n, or shorten the prompt.`
      : limit === undefined
        ? `Rate limit reached (the budget store is unavailable). Try again in ${decision.retryAfterSec}s.`
        : `Rate limit reached for ${type} per ${per}: limit ${limit}. Try again in ${formatResetDuration(decision.resetMs)}.`;
    return {
      status: 429,
      type,
      code: 'rate_limit_exceeded',
      message,
      param: null,
      headers: this.headers(decision),
    };
  }

  settlement(options: BudgetSettlementOptions): BudgetSettlement {
    return new Settlement(this, options);
  }

  stats(): KeyBudgetsStats {
    return { ...this.counts, leased: this.store.leased ?? 0 };
  }

  async handle(req: IncomingMessage, res: ServerResponse, target: BudgetTarget): Promise<boolean> {
    if (target === undefined) return true;
    const decision = await this.admit(target.key, target.limits);
    const headers = this.headers(decision);
    for (const name in headers) res.setHeader(name, headers[name]!);
    const refusal = decision.refusal;
    if (refusal !== undefined) {
      const body = refusalBody(refusal);
      res.writeHead(refusal.status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      });
      res.end(body);
      return false;
    }
    this.watch(req, res, this.settlement({ key: target.key, decision }));
    return true;
  }

  /**
   * Meters what the application writes to `res`: the usage is charged before the last byte (`end` waits for the
   * store), or on close when the client left first. Only 2xx JSON and SSE answers carry usage.
   */
  private watch(req: IncomingMessage, res: ServerResponse, settlement: BudgetSettlement): void {
    // The application answers: the request has reached whatever it calls, and is charged rather than refunded.
    settlement.sent();
    const meterFor = (): UsageMeter | undefined => {
      if (settlement.usageMeter !== undefined || res.statusCode >= 300) return settlement.usageMeter;
      const type = String(res.getHeader('content-type') ?? '');
      const stream = type.startsWith('text/event-stream');
      if (!stream && !type.startsWith('application/json')) return undefined;
      return settlement.meter({
        stream,
        // Express and Fastify body parsers leave the parsed request here by the time the response ends.
        promptTokensEstimate: () => estimatePromptTokens((req as { body?: unknown }).body),
      });
    };
    // Nothing metered (not a 2xx JSON or SSE answer): nothing to charge.
    const charge = (): Promise<void> => settlement.settle() ?? Promise.resolve();
    const write = res.write;
    const end = res.end;
    const toBuffer = (chunk: unknown, encoding: unknown): Buffer =>
      Buffer.isBuffer(chunk)
        ? chunk
        : typeof chunk === 'string'
          ? Buffer.from(chunk, (typeof encoding === 'string' ? encoding : 'utf8') as BufferEncoding)
          : Buffer.from(chunk as Uint8Array);
    res.write = function (this: ServerResponse, chunk: unknown, ...rest: unknown[]) {
      const watched = meterFor();
      if (watched !== undefined && chunk !== undefined && chunk !== null)
        watched.write(toBuffer(chunk, rest[0]));
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof res.write;
    res.end = function (this: ServerResponse, ...args: unknown[]) {
      const watched = meterFor();
      const [chunk] = args;
      if (watched !== undefined && chunk !== undefined && chunk !== null && typeof chunk !== 'function') {
        watched.write(toBuffer(chunk, args[1]));
      }
      watched?.end();
      // The last byte waits for the charge: the client's next request already sees these tokens.
      charge().then(
        () => (end as (...a: unknown[]) => void).apply(this, args),
        () => (end as (...a: unknown[]) => void).apply(this, args),
      );
      return this;
    } as typeof res.end;
    // The client left mid-response: charge what was delivered.
    res.on('close', () => {
      if (!res.writableFinished) void charge().catch(() => undefined);
    });
  }

  express(
    targetOf: (req: IncomingMessage) => BudgetTarget,
  ): (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void {
    return (req, res, next) => {
      let target: BudgetTarget;
      try {
        target = targetOf(req);
      } catch (error) {
        next(error);
        return;
      }
      this.handle(req, res, target).then(
        (allowed) => {
          if (allowed) next();
        },
        (error) => next(error),
      );
    };
  }

  fastify(
    targetOf: (req: IncomingMessage) => BudgetTarget,
  ): (
    request: { raw: IncomingMessage },
    reply: FastifyReplyLike & { raw: ServerResponse },
  ) => Promise<unknown> {
    return async (request, reply) => {
      const target = targetOf(request.raw);
      if (target === undefined) return;
      const decision = await this.admit(target.key, target.limits);
      const headers = this.headers(decision);
      for (const name in headers) reply.header(name, headers[name]!);
      const refusal = decision.refusal;
      if (refusal !== undefined) {
        reply.code(refusal.status);
        reply.type('application/json');
        return reply.send(refusalBody(refusal));
      }
      this.watch(request.raw, reply.raw, this.settlement({ key: target.key, decision }));
    };
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      await this.store.close();
      await this.insurance?.close();
    })();
    return this.closed;
  }
}
