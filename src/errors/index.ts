// The vllm-kit error family: one base class, a subclass per kind, stable `code`s, and guards that work across realms.

/** Brand shared by every copy of this module (ESM, CJS, another realm), so guards never rely on `instanceof`. */
const BRAND = Symbol.for('vllm-kit.error');

/** Stable machine-readable codes, in the style of undici's `UND_ERR_*`: the closed list of every code vllm-kit throws. */
export type VllmKitErrorCode =
  | 'ERR_VK_INVALID_OPTION'
  | 'ERR_VK_CLOSED'
  | 'ERR_VK_NOT_CLUSTER_PRIMARY'
  | 'ERR_VK_STORE_UNAVAILABLE'
  | UpstreamHttpErrorCode
  | UpstreamTimeoutErrorCode
  | 'ERR_VK_UPSTREAM_CONNECTION'
  | 'ERR_VK_ABORTED'
  | 'ERR_VK_TOKEN_LOOKUP_FAILED'
  | 'ERR_VK_QUEUE_FULL'
  | 'ERR_VK_QUEUE_TIMEOUT'
  | 'ERR_VK_PERMIT_TIMEOUT'
  | 'ERR_VK_MODEL_NOT_FOUND'
  | 'ERR_VK_ADAPTER_LOAD';

/** The class that carries each code (its `name`): every code once, checked against the union both ways. */
const CLASS_OF_CODE: Record<VllmKitErrorCode, string> = {
  ERR_VK_INVALID_OPTION: 'InvalidOptionError',
  ERR_VK_CLOSED: 'ClosedError',
  ERR_VK_NOT_CLUSTER_PRIMARY: 'NotClusterPrimaryError',
  ERR_VK_STORE_UNAVAILABLE: 'StoreUnavailableError',
  ERR_VK_UPSTREAM_BAD_REQUEST: 'UpstreamBadRequestError',
  ERR_VK_UPSTREAM_AUTHENTICATION: 'UpstreamAuthenticationError',
  ERR_VK_UPSTREAM_NOT_FOUND: 'UpstreamNotFoundError',
  ERR_VK_UPSTREAM_RATE_LIMITED: 'UpstreamRateLimitError',
  ERR_VK_UPSTREAM_OVERLOADED: 'UpstreamOverloadedError',
  ERR_VK_UPSTREAM_SERVER: 'UpstreamServerError',
  ERR_VK_UPSTREAM_HTTP: 'UpstreamHttpError',
  ERR_VK_CONNECT_TIMEOUT: 'UpstreamTimeoutError',
  ERR_VK_FIRST_BYTE_TIMEOUT: 'UpstreamTimeoutError',
  ERR_VK_IDLE_TIMEOUT: 'UpstreamTimeoutError',
  ERR_VK_TOTAL_TIMEOUT: 'UpstreamTimeoutError',
  ERR_VK_UPSTREAM_CONNECTION: 'UpstreamConnectionError',
  ERR_VK_ABORTED: 'RequestAbortedError',
  ERR_VK_TOKEN_LOOKUP_FAILED: 'TokenVerificationError',
  ERR_VK_QUEUE_FULL: 'QueueFullError',
  ERR_VK_QUEUE_TIMEOUT: 'QueueTimeoutError',
  ERR_VK_PERMIT_TIMEOUT: 'PermitTimeoutError',
  ERR_VK_MODEL_NOT_FOUND: 'ModelNotFoundError',
  ERR_VK_ADAPTER_LOAD: 'AdapterLoadError',
};

/** Every code, for exhaustive handling and tests. */
export const ERROR_CODES = Object.freeze(Object.keys(CLASS_OF_CODE)) as readonly VllmKitErrorCode[];

export interface VllmKitErrorOptions {
  cause?: unknown;
}

/** Base class of every error vllm-kit throws. Check with {@link isVllmKitError}, which also works across realms. */
export class VllmKitError extends Error {
  /** Stable code; see each subclass. */
  readonly code: VllmKitErrorCode;

  constructor(message: string, code: VllmKitErrorCode, options?: VllmKitErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    // An own property, from the code (a minifier renames classes, never strings): the class that carries the code.
    Object.defineProperty(this, 'name', {
      value: CLASS_OF_CODE[code] ?? 'VllmKitError',
      writable: true,
      configurable: true,
      enumerable: false,
    });
    Object.defineProperty(this, BRAND, { value: true });
  }
}

/** True when `value` is a vllm-kit error whose code is one of `codes`. */
function hasCode(value: unknown, codes: readonly VllmKitErrorCode[]): boolean {
  return isVllmKitError(value) && codes.includes(value.code);
}

/** The piece was closed: no new work is taken (and work still waiting is refused with this). */
export class ClosedError extends VllmKitError {
  /** Which piece: `client`, `token cache`, `rate limiter`, `key budgets`, `concurrency limiter`, `permit pool`, `cluster channel`. */
  readonly piece: string;

  constructor(piece: string) {
    super(`The ${piece} is closed`, 'ERR_VK_CLOSED');
    this.piece = piece;
  }
}

/** True for {@link ClosedError}. */
export function isClosedError(value: unknown): value is ClosedError {
  return hasCode(value, ['ERR_VK_CLOSED']);
}

/**
 * No replica serves the request's `model` (as their `GET /v1/models` say), or the request names none while the
 * replicas serve different models. Thrown before anything is sent.
 */
export class ModelNotFoundError extends VllmKitError {
  /** The model asked for; undefined when the request named none. */
  readonly model: string | undefined;
  /** The models the replicas serve. */
  readonly available: readonly string[];

  constructor(model: string | undefined, available: readonly string[]) {
    super(
      model === undefined
        ? `The request names no \`model\`, and the replicas serve different ones (${available.join(', ')})`
        : `The model \`${model}\` does not exist (served: ${available.join(', ') || 'none known'})`,
      'ERR_VK_MODEL_NOT_FOUND',
    );
    this.model = model;
    this.available = available;
  }
}

/** True for {@link ModelNotFoundError}. */
export function isModelNotFoundError(value: unknown): value is ModelNotFoundError {
  return hasCode(value, ['ERR_VK_MODEL_NOT_FOUND']);
}

/**
 * A declared LoRA adapter (the client's `loraAdapters`) was requested, no replica served it, and no replica of its base
 * model could load it (`POST /v1/load_lora_adapter` failed on each, or none was up). Nothing was sent for the request.
 */
export class AdapterLoadError extends VllmKitError {
  readonly adapter: string;
  /** The replicas tried, in order. */
  readonly tried: readonly string[];

  constructor(adapter: string, tried: readonly string[]) {
    super(
      tried.length === 0
        ? `The LoRA adapter \`${adapter}\` could not be loaded: no replica of its base model is up`
        : `The LoRA adapter \`${adapter}\` could not be loaded on any replica (tried ${tried.join(', ')})`,
      'ERR_VK_ADAPTER_LOAD',
    );
    this.adapter = adapter;
    this.tried = tried;
  }
}

/** True for {@link AdapterLoadError}. */
export function isAdapterLoadError(value: unknown): value is AdapterLoadError {
  return hasCode(value, ['ERR_VK_ADAPTER_LOAD']);
}

/** A `serveCluster…()` function was called outside the node:cluster primary. */
export class NotClusterPrimaryError extends VllmKitError {
  constructor(fn: string) {
    super(
      `${fn}() runs in the cluster primary (node:cluster); call it there, before forking`,
      'ERR_VK_NOT_CLUSTER_PRIMARY',
    );
  }
}

/** A shared store (the cluster primary, Redis) did not answer; the pieces' `onStoreError` policy decides what follows. */
export class StoreUnavailableError extends VllmKitError {
  constructor(message: string, options?: VllmKitErrorOptions) {
    super(message, 'ERR_VK_STORE_UNAVAILABLE', options);
  }
}

/** An option passed to a factory is missing, of the wrong type or out of range. Thrown at construction. */
export class InvalidOptionError extends VllmKitError {
  /** The option's path, e.g. `faults.status.status`. */
  readonly option: string;

  constructor(option: string, message: string) {
    super(message, 'ERR_VK_INVALID_OPTION');
    this.option = option;
  }
}

/** True for any error thrown by vllm-kit, from any copy of the package or realm. */
export function isVllmKitError(value: unknown): value is VllmKitError {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

/** True for {@link InvalidOptionError}. */
export function isInvalidOptionError(value: unknown): value is InvalidOptionError {
  return hasCode(value, ['ERR_VK_INVALID_OPTION']);
}

// ── upstream errors (the pooled client) ─────────────────────────────────────────────────────────────────────────

export type UpstreamHttpErrorCode =
  | 'ERR_VK_UPSTREAM_BAD_REQUEST'
  | 'ERR_VK_UPSTREAM_AUTHENTICATION'
  | 'ERR_VK_UPSTREAM_NOT_FOUND'
  | 'ERR_VK_UPSTREAM_RATE_LIMITED'
  | 'ERR_VK_UPSTREAM_OVERLOADED'
  | 'ERR_VK_UPSTREAM_SERVER'
  | 'ERR_VK_UPSTREAM_HTTP';

/** Context every upstream error carries. */
export interface UpstreamErrorContext {
  /** The request id sent as `X-Request-Id` (or echoed by the upstream), when there was one. */
  requestId?: string | undefined;
  /** The upstream's base URL. */
  upstream?: string | undefined;
  cause?: unknown;
}

/** The upstream's OpenAI-style error object, read from either vLLM shape (nested or legacy flat). */
export interface UpstreamErrorBody {
  message: string;
  type?: string | undefined;
  param?: string | null | undefined;
  code?: string | number | null | undefined;
}

/**
 * The upstream answered with an error status (or sent an error event inside a 200 stream). Subclasses by status:
 * {@link UpstreamBadRequestError} 400, {@link UpstreamAuthenticationError} 401, {@link UpstreamNotFoundError} 404,
 * {@link UpstreamRateLimitError} 429, {@link UpstreamOverloadedError} 503, {@link UpstreamServerError} other 5xx.
 */
export class UpstreamHttpError extends VllmKitError {
  readonly status: number;
  /** The parsed error object, when the body had one. */
  readonly error: UpstreamErrorBody | undefined;
  /** The raw response body (truncated to 4 KiB). */
  readonly body: string;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly requestId: string | undefined;
  readonly upstream: string | undefined;
  /** From `retry-after-ms` / `retry-after`, in ms, when the upstream sent one. */
  readonly retryAfterMs: number | undefined;

  constructor(
    message: string,
    code: UpstreamHttpErrorCode,
    details: {
      status: number;
      error?: UpstreamErrorBody | undefined;
      body?: string;
      headers?: Record<string, string | string[] | undefined>;
      retryAfterMs?: number | undefined;
    } & UpstreamErrorContext,
  ) {
    super(message, code, { cause: details.cause });
    this.status = details.status;
    this.error = details.error;
    this.body = details.body ?? '';
    this.headers = details.headers ?? {};
    this.requestId = details.requestId;
    this.upstream = details.upstream;
    this.retryAfterMs = details.retryAfterMs;
  }
}
export class UpstreamBadRequestError extends UpstreamHttpError {}
export class UpstreamAuthenticationError extends UpstreamHttpError {}
export class UpstreamNotFoundError extends UpstreamHttpError {}
export class UpstreamRateLimitError extends UpstreamHttpError {}
export class UpstreamOverloadedError extends UpstreamHttpError {}
export class UpstreamServerError extends UpstreamHttpError {}

export type TimeoutKind = 'connect' | 'firstByte' | 'idle' | 'total';
export type UpstreamTimeoutErrorCode =
  | 'ERR_VK_CONNECT_TIMEOUT'
  | 'ERR_VK_FIRST_BYTE_TIMEOUT'
  | 'ERR_VK_IDLE_TIMEOUT'
  | 'ERR_VK_TOTAL_TIMEOUT';

const TIMEOUT_CODES: Record<TimeoutKind, UpstreamTimeoutErrorCode> = {
  connect: 'ERR_VK_CONNECT_TIMEOUT',
  firstByte: 'ERR_VK_FIRST_BYTE_TIMEOUT',
  idle: 'ERR_VK_IDLE_TIMEOUT',
  total: 'ERR_VK_TOTAL_TIMEOUT',
};

/** A client timeout fired: `timeout` says which one, and each has its own `code`. */
export class UpstreamTimeoutError extends VllmKitError {
  readonly timeout: TimeoutKind;
  readonly timeoutMs: number;
  readonly requestId: string | undefined;
  readonly upstream: string | undefined;

  constructor(timeout: TimeoutKind, timeoutMs: number, context: UpstreamErrorContext = {}) {
    const what = {
      connect: 'connecting to the upstream',
      firstByte: 'waiting for the first byte of the response',
      idle: 'waiting for the next chunk of the response',
      total: 'for the whole request',
    }[timeout];
    super(`Timed out after ${timeoutMs} ms ${what}`, TIMEOUT_CODES[timeout], { cause: context.cause });
    this.timeout = timeout;
    this.timeoutMs = timeoutMs;
    this.requestId = context.requestId;
    this.upstream = context.upstream;
  }
}

/** The connection failed: refused, reset, closed early, or a stream cut before `[DONE]`. `cause` has the detail. */
export class UpstreamConnectionError extends VllmKitError {
  readonly requestId: string | undefined;
  readonly upstream: string | undefined;

  constructor(message: string, context: UpstreamErrorContext = {}) {
    super(message, 'ERR_VK_UPSTREAM_CONNECTION', { cause: context.cause });
    this.requestId = context.requestId;
    this.upstream = context.upstream;
  }
}

/** The caller's signal aborted the request; `cause` is the signal's reason. */
export class RequestAbortedError extends VllmKitError {
  readonly requestId: string | undefined;

  constructor(context: UpstreamErrorContext = {}) {
    super('The request was aborted', 'ERR_VK_ABORTED', { cause: context.cause });
    this.requestId = context.requestId;
  }
}

/** True for any {@link UpstreamHttpError} (an error status from the upstream), from any copy of the package. */
export function isUpstreamHttpError(value: unknown): value is UpstreamHttpError {
  return hasCode(value, UPSTREAM_HTTP_CODES);
}

const UPSTREAM_HTTP_CODES: readonly UpstreamHttpErrorCode[] = [
  'ERR_VK_UPSTREAM_BAD_REQUEST',
  'ERR_VK_UPSTREAM_AUTHENTICATION',
  'ERR_VK_UPSTREAM_NOT_FOUND',
  'ERR_VK_UPSTREAM_RATE_LIMITED',
  'ERR_VK_UPSTREAM_OVERLOADED',
  'ERR_VK_UPSTREAM_SERVER',
  'ERR_VK_UPSTREAM_HTTP',
];

/** True for {@link UpstreamTimeoutError}. */
export function isUpstreamTimeoutError(value: unknown): value is UpstreamTimeoutError {
  return hasCode(value, Object.values(TIMEOUT_CODES));
}

/** True for {@link UpstreamConnectionError}. */
export function isUpstreamConnectionError(value: unknown): value is UpstreamConnectionError {
  return hasCode(value, ['ERR_VK_UPSTREAM_CONNECTION']);
}

/** True for {@link RequestAbortedError}. */
export function isRequestAbortedError(value: unknown): value is RequestAbortedError {
  return hasCode(value, ['ERR_VK_ABORTED']);
}

/** A token lookup threw (e.g. the key store is down): the token could be valid or not. `cause` is the lookup's error. */
export class TokenVerificationError extends VllmKitError {
  constructor(cause: unknown) {
    super('The token could not be verified: the lookup failed', 'ERR_VK_TOKEN_LOOKUP_FAILED', { cause });
  }
}

/** True for {@link TokenVerificationError}. */
export function isTokenVerificationError(value: unknown): value is TokenVerificationError {
  return hasCode(value, ['ERR_VK_TOKEN_LOOKUP_FAILED']);
}

// ── refusals: "busy, retry later" and every other answer a piece tells a server to send ─────────────────────────

/**
 * What a server answers for a request a piece refused, in OpenAI's error shape: the status, the body's `type`,
 * `code`, `message` and `param`, and the headers (`Retry-After`, `x-ratelimit-*`). The rate limiter's and the budgets'
 * refused decisions carry one, and so does every {@link OverloadError}; a server sends it as it is
 * ({@link refusalBody} for the body).
 */
export interface Refusal {
  readonly status: number;
  readonly type: string;
  readonly code: string | null;
  readonly message: string;
  readonly param: string | null;
  readonly headers: Readonly<Record<string, string>>;
}

/** The JSON body of a refusal: `{"error":{"message","type","param","code"}}`, as OpenAI's API answers errors. */
export function refusalBody(refusal: Refusal): string {
  return JSON.stringify({
    error: { message: refusal.message, type: refusal.type, param: refusal.param, code: refusal.code },
  });
}

/** The overload codes: queue full or timed out (the concurrency limiter), no upstream permit in time (the pool). */
export type OverloadErrorCode = 'ERR_VK_QUEUE_FULL' | 'ERR_VK_QUEUE_TIMEOUT' | 'ERR_VK_PERMIT_TIMEOUT';

/**
 * Busy, retry later: the base of every error that means "not now" rather than "not ever" — answer it with its
 * {@link OverloadError.refusal} (503, `Retry-After`), as hono's `HTTPException` carries its response. Check with
 * {@link isOverloadError}.
 */
export class OverloadError extends VllmKitError {
  declare readonly code: OverloadErrorCode;
  /** The HTTP status a server answers with: 503. */
  readonly status: number = 503;
  /** Whole seconds a client should wait before retrying (`Retry-After`). */
  readonly retryAfterSec: number;
  /** The OpenAI-style error `code` of the answer: `queue_full`, `queue_timeout`, `upstream_busy`. */
  readonly reason: string;

  constructor(message: string, code: OverloadErrorCode, reason: string, retryAfterSec: number) {
    super(message, code);
    this.reason = reason;
    this.retryAfterSec = retryAfterSec;
  }

  /** The answer to send: 503, `service_unavailable`, this error's reason as `code`, `Retry-After`. */
  get refusal(): Refusal {
    return {
      status: this.status,
      type: 'service_unavailable',
      code: this.reason,
      message: this.message,
      param: null,
      headers: { 'retry-after': String(this.retryAfterSec) },
    };
  }
}

/** True for any {@link OverloadError} (queue full or timed out, permit timeout), from any copy of the package. */
export function isOverloadError(value: unknown): value is OverloadError {
  return hasCode(value, ['ERR_VK_QUEUE_FULL', 'ERR_VK_QUEUE_TIMEOUT', 'ERR_VK_PERMIT_TIMEOUT']);
}

/** The concurrency limiter's queue is full: answer 503 with `Retry-After: retryAfterSec`. */
export class QueueFullError extends OverloadError {
  constructor(retryAfterSec: number) {
    super(
      'Too many requests are waiting: the queue is full',
      'ERR_VK_QUEUE_FULL',
      'queue_full',
      retryAfterSec,
    );
  }
}

/** The task waited longer than the limiter's `queueTimeoutMs`: answer 503. */
export class QueueTimeoutError extends OverloadError {
  constructor(waitedMs: number, retryAfterSec: number) {
    super(
      `Waited ${Math.round(waitedMs)} ms in the queue without a free slot`,
      'ERR_VK_QUEUE_TIMEOUT',
      'queue_timeout',
      retryAfterSec,
    );
  }
}

/** No upstream permit came within `timeoutMs`: answer 503 with `Retry-After`. */
export class PermitTimeoutError extends OverloadError {
  constructor(waitedMs: number, resource: string) {
    super(
      `Waited ${Math.round(waitedMs)} ms for a permit to ${resource}`,
      'ERR_VK_PERMIT_TIMEOUT',
      'upstream_busy',
      Math.max(1, Math.ceil(waitedMs / 1000)),
    );
  }
}

/** True for {@link QueueFullError}, from any copy of the package. */
export function isQueueFullError(value: unknown): value is QueueFullError {
  return hasCode(value, ['ERR_VK_QUEUE_FULL']);
}

/** True for {@link QueueTimeoutError}. */
export function isQueueTimeoutError(value: unknown): value is QueueTimeoutError {
  return hasCode(value, ['ERR_VK_QUEUE_TIMEOUT']);
}

/** True for {@link PermitTimeoutError}. */
export function isPermitTimeoutError(value: unknown): value is PermitTimeoutError {
  return hasCode(value, ['ERR_VK_PERMIT_TIMEOUT']);
}
