// The one place where upstream failures become vllm-kit errors: HTTP statuses, in-stream error events, and
// transport errors from undici.
import {
  isVllmKitError,
  RequestAbortedError,
  UpstreamAuthenticationError,
  UpstreamBadRequestError,
  UpstreamConnectionError,
  type UpstreamErrorBody,
  type UpstreamErrorContext,
  UpstreamHttpError,
  type UpstreamHttpErrorCode,
  UpstreamNotFoundError,
  UpstreamOverloadedError,
  UpstreamRateLimitError,
  UpstreamServerError,
  UpstreamTimeoutError,
  type VllmKitError,
} from '../errors/index.js';
import { parseRetryAfter } from './retry.js';

type Headers = Record<string, string | string[] | undefined>;
const MAX_BODY = 4096;

/** Reads vLLM's nested `{"error":{…}}`, its legacy flat `{"object":"error",…}`, `{"error":"Unauthorized"}` and FastAPI's `{"detail":…}`. */
export function parseErrorBody(text: string): UpstreamErrorBody | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const record = parsed as Record<string, unknown>;
  const inner = record.error;
  const source =
    typeof inner === 'object' && inner !== null
      ? (inner as Record<string, unknown>)
      : record.object === 'error'
        ? record
        : undefined;
  if (source !== undefined) {
    return {
      message: typeof source.message === 'string' ? source.message : 'Upstream error',
      type: typeof source.type === 'string' ? source.type : undefined,
      param: typeof source.param === 'string' || source.param === null ? source.param : undefined,
      code: typeof source.code === 'string' || typeof source.code === 'number' ? source.code : null,
    };
  }
  if (typeof inner === 'string') return { message: inner };
  if (typeof record.detail === 'string') return { message: record.detail };
  return undefined;
}

const CLASSES: Record<number, [typeof UpstreamHttpError, UpstreamHttpErrorCode]> = {
  400: [UpstreamBadRequestError, 'ERR_VK_UPSTREAM_BAD_REQUEST'],
  401: [UpstreamAuthenticationError, 'ERR_VK_UPSTREAM_AUTHENTICATION'],
  404: [UpstreamNotFoundError, 'ERR_VK_UPSTREAM_NOT_FOUND'],
  429: [UpstreamRateLimitError, 'ERR_VK_UPSTREAM_RATE_LIMITED'],
  503: [UpstreamOverloadedError, 'ERR_VK_UPSTREAM_OVERLOADED'],
};

/** Maps an error status (and its body) to the error family. */
export function errorFromStatus(
  status: number,
  headers: Headers,
  body: string,
  context: UpstreamErrorContext,
): UpstreamHttpError {
  const error = parseErrorBody(body);
  const [Class, code] =
    CLASSES[status] ??
    (status >= 500
      ? [UpstreamServerError, 'ERR_VK_UPSTREAM_SERVER' as const]
      : [UpstreamHttpError, 'ERR_VK_UPSTREAM_HTTP' as const]);
  const message = `Upstream answered ${status}${error ? `: ${error.message}` : body === '' ? ' with an empty body' : ''}`;
  return new Class(message, code, {
    status,
    error,
    body: body.length > MAX_BODY ? body.slice(0, MAX_BODY) : body,
    headers,
    retryAfterMs: parseRetryAfter(headers),
    requestId: context.requestId ?? headerValue(headers, 'x-request-id'),
    upstream: context.upstream,
  });
}

/** Maps an `{"error":…}` event received inside a 200 stream; its `code` (when numeric) gives the status. */
export function errorFromStreamEvent(payload: string, context: UpstreamErrorContext): UpstreamHttpError {
  const error = parseErrorBody(payload);
  const status = typeof error?.code === 'number' && error.code >= 400 && error.code < 600 ? error.code : 500;
  return errorFromStatus(status, {}, payload, context);
}

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
]);
const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);

/** Maps an error thrown by undici (or by our own timers and signals) to the error family. */
export function errorFromTransport(
  error: unknown,
  context: UpstreamErrorContext & { timeouts: TimeoutSettings },
): VllmKitError {
  if (isVllmKitError(error)) return error;
  const code = (error as { code?: string } | null)?.code ?? '';
  const ctx = { requestId: context.requestId, upstream: context.upstream, cause: error };
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return new UpstreamTimeoutError('connect', context.timeouts.connectTimeoutMs, ctx);
    case 'UND_ERR_HEADERS_TIMEOUT':
      return new UpstreamTimeoutError('firstByte', context.timeouts.firstByteTimeoutMs, ctx);
    case 'UND_ERR_BODY_TIMEOUT':
      return new UpstreamTimeoutError('idle', context.timeouts.idleTimeoutMs, ctx);
    case 'UND_ERR_ABORTED':
    case 'ABORT_ERR':
      return new RequestAbortedError(ctx);
  }
  if ((error as { name?: string } | null)?.name === 'AbortError') return new RequestAbortedError(ctx);
  const what = CONNECT_CODES.has(code)
    ? `Could not connect to the upstream (${code})`
    : RESET_CODES.has(code)
      ? `The upstream connection failed (${code}: ${(error as Error).message})`
      : `The upstream request failed: ${(error as Error)?.message ?? String(error)}`;
  return new UpstreamConnectionError(what, ctx);
}

export interface TimeoutSettings {
  connectTimeoutMs: number;
  firstByteTimeoutMs: number;
  idleTimeoutMs: number;
}

function headerValue(headers: Headers, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}
