// The reference gateway, built without listening: rate limit → key check (token cache) → concurrency limiter →
// the pooled client's passthrough. `main.ts` adds workers, signals and the listening socket.

import { isUtf8 } from 'node:buffer';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import {
  type AbortSignalLike,
  type BudgetReservation,
  type ConcurrencyLimiter,
  estimatePromptTokens,
  exceedsJsonDepth,
  type IpRateLimiter,
  isAdapterLoadError,
  isModelNotFoundError,
  isPermitTimeoutError,
  isQueueFullError,
  isQueueTimeoutError,
  isRequestAbortedError,
  isTokenVerificationError,
  isUpstreamConnectionError,
  isUpstreamTimeoutError,
  type KeyBudgets,
  type RequestCost,
  requestUsage,
  reservationFor,
  type TokenCache,
  UsageMeter,
  type UsageStrip,
  type VllmClient,
} from 'vllm-kit';
import type { Cors } from './cors.js';
import type { HealthProbe } from './health.js';
import { type ApiKey, isWellFormedKey } from './key-store.js';
import type { GatewayMetrics } from './metrics.js';
import type { GatewayTelemetry, RequestSpan } from './telemetry.js';
import type { UsageRecorder } from './usage-recorder.js';

export interface GatewayDeps {
  client: VllmClient;
  tokens: TokenCache<ApiKey>;
  rateLimiter: IpRateLimiter;
  limiter: ConcurrencyLimiter;
  logger: Logger;
  metrics: GatewayMetrics | undefined;
  /** Renders /metrics (aggregated over workers when clustered). */
  renderMetrics: (() => Promise<{ contentType: string; body: string }>) | undefined;
  maxBodyBytes: number;
  /** Request bodies nested deeper (objects and arrays) are refused with a 400. */
  maxJsonDepth: number;
  /** Cross-origin access for browser front ends; undefined: no CORS headers (same-origin only). */
  cors?: Cors | undefined;
  /** Per-key request and token limits (keys with `rpm`/`tpm`). */
  budgets: KeyBudgets;
  /** Lifetime usage per key, written to the key store in batches; undefined: not recorded. */
  usage?: UsageRecorder | undefined;
  /** Ask vLLM for usage on every stream chunk (`continuous_usage_stats`), so a cut stream is charged exactly. */
  continuousUsage: boolean;
  /** OpenTelemetry: a server span per request, parenting the client's span; undefined: off. */
  telemetry?: GatewayTelemetry | undefined;
  /** The replicas' health, probed in the background (answers /health and /readyz). */
  health: HealthProbe;
  /** SHA-256 of ADMIN_KEY: the detailed /health and /metrics on this listener need it; undefined: no key. */
  adminKeyHash?: Buffer | undefined;
  /** /health and /metrics are served on their own listener (METRICS_PORT): not on this one. */
  adminElsewhere?: boolean;
  /** MODEL_ALIASES (the client rewrites them): a key allowed the served model may use its aliases, and the reverse. */
  modelAliases?: Readonly<Record<string, string>>;
}

interface Route {
  method: 'GET' | 'POST';
  /** A generation route: its key's budget applies, and it runs under the concurrency limit. */
  limited: boolean;
}

/** The `Allow` header of a route: its method, HEAD beside GET, and OPTIONS. */
function allowed(route: Route): string {
  return route.method === 'GET' ? 'GET, HEAD, OPTIONS' : `${route.method}, OPTIONS`;
}

const ROUTES: Record<string, Route> = {
  '/v1/chat/completions': { method: 'POST', limited: true },
  '/v1/completions': { method: 'POST', limited: true },
  '/v1/embeddings': { method: 'POST', limited: true },
  '/v1/models': { method: 'GET', limited: false },
  '/auth/verify': { method: 'GET', limited: false },
  '/health': { method: 'GET', limited: false },
  '/metrics': { method: 'GET', limited: false },
  '/livez': { method: 'GET', limited: false },
  '/readyz': { method: 'GET', limited: false },
};

/** An OpenAI-style error. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

const invalidKey = () =>
  new HttpError(401, 'Invalid or revoked API key', 'invalid_request_error', 'invalid_api_key');

function sendError(res: ServerResponse, error: HttpError): void {
  send(
    res,
    error.status,
    { error: { message: error.message, type: error.type, param: error.param, code: error.code } },
    error.headers,
  );
}

/** Reads the body up to `limit` bytes; 413 beyond it (without reading the rest into memory). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = () =>
    new HttpError(413, `The request body exceeds ${limit} bytes`, 'invalid_request_error', 'body_too_large');
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(tooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** A lingering close reads (and drops) what is left of an upload for at most this long, and this much. */
const LINGER_MS = 5000;
const LINGER_BYTES = 256 * 1024 * 1024;

/**
 * Answers 413 to a client still uploading, so that it reads the answer rather than a connection reset: the response
 * (with `Connection: close`) goes out at once, but the socket is closed only once the upload has been read to its end
 * (and dropped), or after LINGER_MS / LINGER_BYTES — nginx's lingering_close. Closing with unread bytes in the
 * kernel's buffer would send a RST, and the client would lose the 413 it had not read yet.
 */
function answerTooLarge(req: IncomingMessage, res: ServerResponse, error: HttpError): void {
  const text = JSON.stringify({
    error: { message: error.message, type: error.type, param: null, code: error.code },
  });
  res.writeHead(error.status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    connection: 'close',
  });
  res.write(text);
  let dropped = 0;
  const finish = () => {
    clearTimeout(timer);
    req.off('data', onData);
    if (!res.writableEnded) res.end();
  };
  const onData = (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > LINGER_BYTES) finish();
  };
  const timer = setTimeout(finish, LINGER_MS);
  timer.unref();
  req.on('data', onData);
  req.once('end', finish);
  req.once('error', finish);
  req.resume();
}

/** Lets an upstream body go unread (undici errors a destroyed body: nobody is waiting for that error). */
export function discard(body: Readable): void {
  body.on('error', () => {});
  body.destroy();
}

/** The client went away before the response ended: nobody to answer, and not the upstream's fault. */
class ClientClosedError extends Error {}
/** One instance for every request: it is a marker, never shown to anyone (no stack captured per request). */
const CLIENT_CLOSED = new ClientClosedError('The client closed the connection before the response ended');

/**
 * One request in flight, as one object: what its close handler logs and counts, and a light abort signal (the
 * limiter and the client take any AbortSignalLike; an AbortController per request costs ~10 µs) that frees its
 * queue place or its upstream request when the client leaves.
 */
class Exchange implements AbortSignalLike {
  aborted = false;
  reason: unknown = undefined;
  /** Set when the upstream cut a response that had begun: logged and counted as a 502. */
  upstreamFailure: string | undefined = undefined;
  /** The request body as parsed to validate it: the client routes by it (its model, then its prompt) and the span reads it. */
  parsedBody: unknown = undefined;
  /** The client's X-Session-Id: an affinity key for routing. */
  sessionId: string | undefined = undefined;
  /** The key a generation request is accounted to (set once it is authenticated and admitted). */
  principal: ApiKey | undefined = undefined;
  /** The key has limits: its budget was charged a request, and is charged the tokens. */
  budgeted = false;
  /** The request was sent upstream (a request that never was is refunded, not recorded). */
  sentUpstream = false;
  /** Marks the request sent upstream (the client calls it when it hands the request to a replica). */
  readonly dispatched = (): void => {
    if (this.sentUpstream) return;
    this.sentUpstream = true;
    this.sentAt = performance.now();
  };
  /** What to strip from the stream (the usage the gateway asked for and the client did not). */
  strip: UsageStrip = 'none';
  /** Choices per request (prompts × `n`), for continuous usage. */
  choices = 1;
  /** The request's worst case, read from its body (generation routes of a key). */
  cost: RequestCost | undefined = undefined;
  /** Tokens its admission reserved, settled to the actual usage. */
  reservation: BudgetReservation | undefined = undefined;
  /** When it was sent upstream, and the status the upstream answered (undefined: none yet). */
  sentAt = 0;
  upstreamStatus: number | undefined = undefined;
  /** Reads the usage of a 2xx answer as it passes. */
  meter: UsageMeter | undefined = undefined;
  /** Usage recorded and charged (once, whichever way the response ends). */
  settled = false;
  /** The request's server span, with telemetry on. */
  span: RequestSpan | undefined = undefined;
  private listeners: (() => void)[] | undefined = undefined;
  private settlePipe: ((error?: Error) => void) | undefined = undefined;

  constructor(
    readonly requestId: string,
    readonly method: string | undefined,
    readonly path: string,
    readonly routeLabel: string,
    readonly started: number,
  ) {}

  addEventListener(_type: 'abort', listener: () => void): void {
    (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const listeners = this.listeners;
    const at = listeners === undefined ? -1 : listeners.indexOf(listener);
    if (at !== -1) listeners!.splice(at, 1);
  }

  /** The client left before the response ended: abort what waits on its behalf, fail the pipe. */
  clientClosed(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = CLIENT_CLOSED;
    const listeners = this.listeners;
    this.listeners = undefined;
    if (listeners !== undefined) for (const listener of listeners) listener();
    this.settlePipe?.(CLIENT_CLOSED);
  }

  /**
   * Pipes the upstream body into the response with backpressure; resolves when the response finishes, rejects when
   * the upstream fails or the client leaves (either side failing destroys the other). What stream.pipeline does,
   * without the AbortController and DOMException it allocates per call. With a meter, the bytes pass through it, and
   * the last ones wait for `beforeEnd` (the usage charged), so the client's next request already sees the charge.
   */
  pipe(source: Readable, res: ServerResponse, beforeEnd?: () => Promise<void> | undefined): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = false;
      const settle = (error?: Error) => {
        if (done) return;
        done = true;
        this.settlePipe = undefined;
        res.off('finish', settle);
        if (error === undefined) return resolve();
        // Marked before the response is destroyed, so its close handler already counts the 502.
        if (error !== CLIENT_CLOSED) this.upstreamFailure = (error as { code?: string }).code ?? 'unknown';
        source.destroy();
        res.destroy();
        reject(error);
      };
      this.settlePipe = settle;
      // Stays attached: a late error from a destroyed body must not go unhandled.
      source.on('error', settle);
      res.on('finish', settle);
      const meter = this.meter;
      if (meter === undefined) {
        source.pipe(res);
        return;
      }
      const resume = () => source.resume();
      source.on('data', (chunk: Buffer) => {
        const out = meter.write(chunk);
        if (out.length > 0 && !res.write(out)) {
          source.pause();
          res.once('drain', resume);
        }
      });
      source.on('end', () => {
        const rest = meter.end();
        const finish = () => {
          if (!done && !res.destroyed) res.end(rest);
        };
        const charging = beforeEnd?.();
        if (charging === undefined) finish();
        else charging.then(finish, finish);
      });
    });
  }
}

const noop = () => {};

/**
 * Tokens per second one choice is generated at, measured on this worker's completed responses (usage over time since
 * sent: queueing and prefill included, so it errs low), for charging requests cut before their answer came. Starts at
 * 100/s (a single sequence on a fast GPU) until it has measured; the mean of the first ten figures, then moves a
 * tenth of the way to each new one.
 */
class DecodeRate {
  private tokensPerSec = 100;
  private samples = 0;

  observe(tokensPerChoice: number, elapsedMs: number): void {
    if (!(tokensPerChoice > 0) || !(elapsedMs > 0)) return;
    this.samples = Math.min(this.samples + 1, 10);
    this.tokensPerSec += (tokensPerChoice / (elapsedMs / 1000) - this.tokensPerSec) / this.samples;
  }

  estimate(elapsedMs: number, choices: number, maxTokens: number | undefined): number {
    const perChoice = Math.floor((elapsedMs / 1000) * this.tokensPerSec);
    return Math.max(0, Math.min(perChoice, maxTokens ?? perChoice)) * choices;
  }
}

const kExchange = Symbol('exchange');
type GatewayResponse = ServerResponse & { [kExchange]?: Exchange };

const NO_HEADERS = {};
// One object for every request: the client merges a headers object it has seen before from its cache.
const JSON_HEADERS = { 'content-type': 'application/json' };

const VALID_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** A path safe to repeat in an error message (anything else is not echoed). */
const ECHOABLE_PATH = /^\/[A-Za-z0-9._~/-]{0,128}$/;

/** The path of a request target: origin-form (`/p?q`) or absolute-form (`http://host/p?q`, RFC 9112 §3.2.2). */
function pathOf(url: string): string {
  let start = 0;
  if (url.charCodeAt(0) !== 47 /* / */) {
    const scheme = url.indexOf('://');
    start = scheme === -1 ? url.length : url.indexOf('/', scheme + 3);
    if (start === -1) return '/';
  }
  const query = url.indexOf('?', start);
  return query === -1 ? url.slice(start) : url.slice(start, query);
}

export function createGateway(deps: GatewayDeps) {
  const { client, tokens, rateLimiter, limiter, logger, metrics, budgets } = deps;
  const decodeRate = new DecodeRate();
  /** Requests whose response has not closed yet (reported when draining). */
  let open = 0;
  const telemetry = deps.telemetry;

  async function authenticate(req: IncomingMessage): Promise<ApiKey> {
    const header = req.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
    if (!match) {
      throw new HttpError(
        401,
        'Missing API key: send "Authorization: Bearer <key>"',
        'invalid_request_error',
        'missing_api_key',
      );
    }
    const key = match[1]!;
    // Garbage never costs a cache entry or a database lookup.
    if (!isWellFormedKey(key)) throw invalidKey();
    let principal: ApiKey | null;
    try {
      principal = await tokens.verify(key);
    } catch (error) {
      if (isTokenVerificationError(error)) {
        throw new HttpError(
          503,
          'The key store is unavailable; try again shortly',
          'service_unavailable',
          'key_store_unavailable',
          {
            'retry-after': '5',
          },
        );
      }
      throw error;
    }
    if (principal === null) throw invalidKey();
    return principal;
  }

  async function forward(req: IncomingMessage, res: ServerResponse, exchange: Exchange, route: Route) {
    let body: Buffer | null = null;
    if (route.method === 'POST') {
      const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (contentType !== 'application/json') {
        throw new HttpError(
          400,
          "Content-Type must be 'application/json'",
          'invalid_request_error',
          'unsupported_media_type',
        );
      }
      try {
        body = await readBody(req, deps.maxBodyBytes);
      } catch (error) {
        if (!(error instanceof HttpError) || error.status !== 413) throw error;
        return answerTooLarge(req, res, error);
      }
      // Nesting is bounded before anything parses or walks the body (a 200 KB body can nest 100k levels).
      if (exceedsJsonDepth(body, deps.maxJsonDepth)) {
        throw new HttpError(
          400,
          `The request body nests objects or arrays more than ${deps.maxJsonDepth} levels deep`,
          'invalid_request_error',
          'json_too_deep',
        );
      }
      // JSON is UTF-8 (RFC 8259 §8.1): invalid bytes would be decoded to U+FFFD and sent upstream as something else.
      let parsed: unknown;
      let valid = isUtf8(body);
      if (valid) {
        try {
          parsed = JSON.parse(body.toString('utf8'));
        } catch {
          valid = false;
        }
      }
      if (!valid) {
        throw new HttpError(
          400,
          'The request body is not valid JSON in UTF-8',
          'invalid_request_error',
          'invalid_json',
        );
      }
      // Parsed once: the client routes by it (its `model`, then the prompt prefix, `prompt_cache_key`, `user`), refuses
      // a model no replica serves before sending, and its span reads it, without parsing again.
      exchange.parsedBody = parsed;
      if (exchange.principal !== undefined) {
        await admit(res, exchange, exchange.principal, parsed);
        body = askForUsage(exchange, body, parsed);
      }
    }
    if (!route.limited) return proxy(res, exchange, route, body);
    // The exchange is the signal: the client leaving while the request waits takes it out of the queue. The key is
    // the flow the fair policy serves in turn, in its priority band.
    const principal = exchange.principal;
    return limiter.run(
      () => proxy(res, exchange, route, body),
      principal === undefined
        ? { signal: exchange }
        : { signal: exchange, key: principal.id, priority: principal.priority },
    );
  }

  /**
   * A streamed request asks the upstream for usage (and, from vLLM, usage on every chunk, so a stream cut short is
   * still charged exactly); the meter later removes what the client did not ask for.
   */
  function askForUsage(exchange: Exchange, body: Buffer, parsed: unknown): Buffer {
    if (typeof parsed !== 'object' || parsed === null) return body;
    const asked = requestUsage(body, parsed, { continuous: deps.continuousUsage });
    exchange.strip = asked.strip;
    return asked.body;
  }

  /**
   * Records a metered request's usage and charges its key's budget, once, however the response ended: before its
   * last byte, when the client left, or when the upstream failed. A request that never went upstream is refunded.
   */
  function settleUsage(exchange: Exchange): Promise<void> | undefined {
    const principal = exchange.principal;
    if (exchange.settled || principal === undefined) return undefined;
    exchange.settled = true;
    if (!exchange.sentUpstream) {
      return exchange.budgeted ? budgets.refund(principal.id, exchange.reservation).catch(noop) : undefined;
    }
    let prompt = 0;
    let completion = 0;
    const meter = exchange.meter;
    if (meter !== undefined) {
      const usage = meter.usage();
      prompt = usage.promptTokens;
      completion = usage.completionTokens;
      if (usage.source === 'counted') metrics?.usageMissing(meter.sawMalformedUsage ? 'malformed' : 'absent');
      else if (exchange.upstreamStatus === 200 && !exchange.aborted) {
        decodeRate.observe(completion / exchange.choices, performance.now() - exchange.sentAt);
      }
    } else if (exchange.upstreamStatus === undefined && exchange.cost !== undefined) {
      // Cut before the upstream answered (a non-streamed request, whose answer comes whole at the end): it cost its
      // prompt and what was generated meanwhile, estimated from the elapsed time at the decode rate measured on
      // this gateway's own responses, never more than max_tokens × choices.
      const cost = exchange.cost;
      prompt = cost.promptTokens;
      completion = decodeRate.estimate(performance.now() - exchange.sentAt, cost.choices, cost.maxTokens);
      metrics?.usageMissing('estimated');
    }
    deps.usage?.record(principal.id, prompt, completion);
    metrics?.tokens(principal.name, prompt, completion, modelOf(exchange.parsedBody));
    return exchange.budgeted
      ? budgets.settle(exchange.reservation, principal.id, prompt + completion).catch(noop)
      : undefined;
  }

  /** Sends the request upstream and pipes the answer back (under the concurrency limit when the route is). */
  async function proxy(res: ServerResponse, exchange: Exchange, route: Route, body: Buffer | null) {
    if (route.limited) metrics?.observeQueueWait((performance.now() - exchange.started) / 1000);
    const requestId = exchange.requestId;
    const upstream = await client.request({
      method: route.method,
      path: exchange.path,
      headers: body === null ? NO_HEADERS : JSON_HEADERS,
      body,
      // Leaving aborts the upstream request at once (vLLM then frees the GPU slot).
      signal: exchange,
      requestId,
      routingBody: exchange.parsedBody,
      // X-Session-Id, when the client sends one, keeps a conversation on one replica whatever its prompt.
      routingKey: exchange.sessionId,
      traceContext: exchange.span?.context,
      // From here on the request may cost the model server something (before it: a permit wait, a model check).
      onDispatch: exchange.dispatched,
    });
    exchange.upstreamStatus = upstream.status;
    if (upstream.status === 401) {
      // Client keys never reach the upstream: a 401 there means the gateway's own VLLM_API_KEY is wrong.
      discard(upstream.body);
      throw upstreamCredentialsRejected(requestId);
    }
    // A server error's body is the upstream's own (an HTML traceback, a config dump): logged, never relayed.
    if (upstream.status >= 500) return relayServerError(res, exchange, upstream);
    // (X-Request-Id and the rate-limit headers are already set on the response.)
    const headers: Record<string, string> = {};
    const contentType = upstream.headers['content-type'];
    if (typeof contentType === 'string') headers['content-type'] = contentType;
    // An upstream 429/503 is answered at once (the client never sleeps on it holding our slot): pass its advice on.
    if (upstream.status >= 400) {
      const retryAfter = upstream.headers['retry-after'];
      const retryAfterMs = upstream.headers['retry-after-ms'];
      if (typeof retryAfter === 'string') headers['retry-after'] = retryAfter;
      if (typeof retryAfterMs === 'string') headers['retry-after-ms'] = retryAfterMs;
    }
    const streaming = typeof contentType === 'string' && contentType.startsWith('text/event-stream');
    if (streaming) {
      headers['cache-control'] = 'no-cache';
      headers['x-accel-buffering'] = 'no';
    }
    res.writeHead(upstream.status, headers);
    if (streaming) {
      res.flushHeaders();
      // A stream's first byte is its first token, some time after the headers.
      if (metrics) {
        upstream.body.once('data', () =>
          metrics.observeTtft(exchange.routeLabel, (performance.now() - exchange.started) / 1000),
        );
      }
    } else {
      // A whole answer's body follows its headers at once: no per-request listener to time it.
      metrics?.observeTtft(exchange.routeLabel, (performance.now() - exchange.started) / 1000);
    }
    if (exchange.principal === undefined || upstream.status >= 300) return exchange.pipe(upstream.body, res);
    exchange.meter = new UsageMeter({
      stream: streaming,
      strip: streaming ? exchange.strip : 'none',
      choices: exchange.choices,
      ...(exchange.cost === undefined ? {} : { n: exchange.cost.n }),
      // Only when the upstream reports no usage (rare): the prompt's tokens estimated from the request.
      // Parsed again only then (rare): the body was bounded in depth before the first parse.
      promptTokensEstimate: () =>
        body === null ? 0 : estimatePromptTokens(JSON.parse(body.toString('utf8'))),
    });
    await exchange.pipe(upstream.body, res, () => settleUsage(exchange));
  }

  /**
   * Answers an upstream 5xx in the gateway's own error shape: 503 stays 503 (overloaded: its Retry-After passed on),
   * anything else is a 502. The upstream's body (its first 2 KB) goes to the log for the operator.
   */
  async function relayServerError(
    res: ServerResponse,
    exchange: Exchange,
    upstream: { status: number; headers: Record<string, string | string[] | undefined>; body: Readable },
  ): Promise<void> {
    let original = '';
    try {
      for await (const chunk of upstream.body) {
        original += (chunk as Buffer).toString('utf8');
        if (original.length >= 2048) break;
      }
    } catch {
      // A body cut short: what was read is logged.
    }
    discard(upstream.body);
    metrics?.upstreamFailure('server_error');
    logger.warn(
      { requestId: exchange.requestId, status: upstream.status, body: original.slice(0, 2048) },
      'the model server answered a server error',
    );
    const overloaded = upstream.status === 503;
    const headers: Record<string, string> = {};
    for (const name of ['retry-after', 'retry-after-ms']) {
      const value = upstream.headers[name];
      if (typeof value === 'string') headers[name] = value;
    }
    sendError(
      res,
      new HttpError(
        overloaded ? 503 : 502,
        overloaded
          ? 'The model server is overloaded; try again shortly'
          : `The model server failed with HTTP ${upstream.status}`,
        overloaded ? 'service_unavailable' : 'upstream_error',
        overloaded ? 'upstream_overloaded' : 'upstream_server_error',
        headers,
      ),
    );
  }

  function upstreamCredentialsRejected(requestId: string): HttpError {
    logger.error(
      { requestId },
      "the model server rejected the gateway's credentials (401): check VLLM_API_KEY against vLLM's --api-key",
    );
    metrics?.upstreamFailure('credentials');
    return new HttpError(
      502,
      "The model server rejected the gateway's own credentials (VLLM_API_KEY); the gateway's operator must fix them",
      'upstream_error',
      'upstream_credentials_rejected',
    );
  }

  /**
   * Logs and counts a finished request, and tells its exchange when the client left early. Runs in the response's
   * 'close' event: nothing may throw out of it (that would kill the worker), so a bug here is logged instead.
   */
  function onResponseClose(this: GatewayResponse): void {
    open--;
    try {
      closeExchange(this);
    } catch (error) {
      logger.error(
        { requestId: this[kExchange]?.requestId, err: { message: (error as Error)?.message } },
        'error while closing a request',
      );
    }
  }

  function closeExchange(res: GatewayResponse): void {
    const exchange = res[kExchange]!;
    if (!res.writableFinished) exchange.clientClosed();
    // A response cut by its upstream counts as the 502 it is, whatever status had already gone out.
    // A client that left before the end is a 499, whatever status had gone out (an abandoned stream is not a 200).
    const status =
      exchange.upstreamFailure !== undefined
        ? 502
        : exchange.aborted || !res.headersSent
          ? 499
          : res.statusCode;
    const ms = performance.now() - exchange.started;
    metrics?.observeRequest(exchange.routeLabel, status, ms / 1000);
    // By model: only requests that reached a replica, so the label holds names some replica serves (or aliases).
    const model = exchange.sentUpstream ? modelOf(exchange.parsedBody) : undefined;
    if (model !== undefined) metrics?.observeModel(model, status);
    // Not settled yet: the client left, the upstream failed, or the request never went upstream.
    if (exchange.principal !== undefined) void settleUsage(exchange);
    // The span tells what went out, and why the exchange failed: a cut upstream, or a client that left.
    exchange.span?.end(
      res.headersSent ? res.statusCode : undefined,
      exchange.upstreamFailure ?? (exchange.aborted ? 'client_closed' : undefined),
    );
    // One line per request; no per-request child logger (it would serialise its bindings every time).
    logger.info(
      {
        requestId: exchange.requestId,
        method: exchange.method,
        path: exchange.path,
        status,
        ms: Math.round(ms),
      },
      'request',
    );
  }

  async function handle(req: IncomingMessage, res: GatewayResponse): Promise<void> {
    const started = performance.now();
    const incomingId = req.headers['x-request-id'];
    const requestId =
      typeof incomingId === 'string' && VALID_REQUEST_ID.test(incomingId) ? incomingId : randomUUID();
    res.setHeader('x-request-id', requestId);
    const path = pathOf(req.url ?? '/');
    const route = ROUTES[path];
    const exchange = new Exchange(requestId, req.method, path, route ? path : 'unknown', started);
    const sessionId = req.headers['x-session-id'];
    if (typeof sessionId === 'string' && sessionId !== '' && sessionId.length <= 256)
      exchange.sessionId = sessionId;
    if (telemetry !== undefined)
      exchange.span = telemetry.startRequest(req, path, route ? path : undefined, requestId);
    res[kExchange] = exchange;
    open++;
    res.on('close', onResponseClose);
    try {
      const cors = deps.cors;
      if (cors !== undefined) cors.apply(req, res);
      if (route === undefined) {
        // Never repeat request-controlled text beyond a plain path (no markup, no absolute URI, bounded length).
        const shown = ECHOABLE_PATH.test(path) ? ` ${path}` : '';
        throw new HttpError(404, `Unknown route${shown}`, 'invalid_request_error', 'not_found');
      }
      const method = req.method === 'HEAD' && route.method === 'GET' ? 'GET' : req.method;
      if (method === 'OPTIONS') return options(req, res, route);
      if (method !== route.method) {
        throw new HttpError(
          405,
          `Use ${route.method} for ${path}`,
          'invalid_request_error',
          'method_not_allowed',
          { allow: allowed(route) },
        );
      }
      if (path === '/livez') return send(res, 200, { status: 'ok' });
      if (path === '/readyz') return readyz(res);
      if (path === '/health' || path === '/metrics') {
        if (deps.adminElsewhere) {
          throw new HttpError(404, `${path} is served on METRICS_PORT`, 'invalid_request_error', 'not_found');
        }
        const admin = isAdmin(req);
        if (path === '/health') return health(res, admin);
        if (deps.adminKeyHash !== undefined && !admin) {
          throw new HttpError(
            401,
            'Metrics need the admin key: send "Authorization: Bearer <ADMIN_KEY>"',
            'invalid_request_error',
            'admin_key_required',
          );
        }
        return await renderMetrics(res);
      }
      // Rate limit first: cheap, so floods never reach the key store.
      const decision = await rateLimiter.check(req);
      const limitHeaders = rateLimiter.headers(decision);
      for (const name in limitHeaders) res.setHeader(name, limitHeaders[name]!);
      if (!decision.allowed) {
        metrics?.rateLimited();
        throw new HttpError(
          429,
          `Rate limit exceeded: ${decision.limit} requests per window. Retry after ${decision.retryAfterSec} seconds.`,
          'rate_limit_exceeded',
          'rate_limit_exceeded',
        );
      }
      const principal = await authenticate(req);
      if (path === '/auth/verify') return send(res, 200, { id: principal.id, name: principal.name });
      if (path === '/v1/models') return await listModels(res, principal);
      // A generation request is accounted to its key (its budget is admitted once its body is read).
      if (route.limited) exchange.principal = principal;
      await forward(req, res, exchange, route);
    } catch (error) {
      respondToError(res, exchange, error);
    }
  }

  /**
   * A key with limits must have budget left for the request's worst case (429 otherwise): its prompt (estimated) and
   * `max_tokens` × choices are reserved at admission and settled to the actual usage, so concurrent requests cannot
   * overshoot the key's tpm together. A request with no `max_tokens` reserves what the window has left.
   */
  async function admit(
    res: ServerResponse,
    exchange: Exchange,
    principal: ApiKey,
    parsed: unknown,
  ): Promise<void> {
    checkModelAccess(principal, parsed);
    const cost = reservationFor(parsed, exchange.path !== '/v1/embeddings');
    exchange.cost = cost;
    exchange.choices = cost.choices;
    if (principal.rpm === null && principal.tpm === null) return;
    const decision = await budgets.admit(
      principal.id,
      { requests: principal.rpm, tokens: principal.tpm },
      { reserveTokens: cost.worstCase ?? 'rest' },
    );
    const headers = budgets.headers(decision);
    for (const name in headers) res.setHeader(name, headers[name]!);
    if (!decision.allowed) {
      metrics?.budgetRefused(decision.refusedBy ?? 'requests');
      const { error } = JSON.parse(budgets.errorBody(decision)) as {
        error: { message: string; type: string };
      };
      throw new HttpError(429, error.message, error.type, 'rate_limit_exceeded');
    }
    exchange.budgeted = true;
    exchange.reservation = decision.reservation;
  }

  /** `OPTIONS`: a CORS preflight (answered by the CORS policy) or a plain question about the allowed methods. */
  function options(req: IncomingMessage, res: ServerResponse, route: Route): void {
    const allow = allowed(route);
    if (req.headers['access-control-request-method'] !== undefined) {
      if (deps.cors === undefined || !deps.cors.preflight(req, res, allow)) {
        throw new HttpError(
          403,
          'Cross-origin requests from this origin are not allowed (CORS_ORIGINS)',
          'invalid_request_error',
          'cors_origin_not_allowed',
        );
      }
      return;
    }
    res.writeHead(204, { allow });
    res.end();
  }

  function respondToError(res: ServerResponse, exchange: Exchange, error: unknown): void {
    const requestId = exchange.requestId;
    if (error instanceof HttpError) return sendError(res, error);
    if (isModelNotFoundError(error)) {
      // OpenAI's answer, word for word: no replica was asked.
      return sendError(
        res,
        error.model === undefined
          ? new HttpError(
              400,
              `The request must name a \`model\`: this gateway serves several (${error.available.join(', ')})`,
              'invalid_request_error',
              'model_required',
              {},
              'model',
            )
          : new HttpError(
              404,
              `The model \`${error.model}\` does not exist or you do not have access to it.`,
              'invalid_request_error',
              'model_not_found',
              {},
              'model',
            ),
      );
    }
    if (isAdapterLoadError(error)) {
      // The operator learns which replicas refused (runtime LoRA updating off, a bad path); the caller does not.
      logger.warn({ requestId, adapter: error.adapter, tried: error.tried }, 'LoRA adapter load failed');
      return sendError(
        res,
        new HttpError(
          503,
          `The model \`${error.adapter}\` could not be loaded; try again shortly`,
          'service_unavailable',
          'model_unavailable',
          { 'retry-after': '5' },
          'model',
        ),
      );
    }
    if (isPermitTimeoutError(error)) {
      return sendError(
        res,
        new HttpError(503, error.message, 'service_unavailable', 'upstream_busy', {
          'retry-after': String(error.retryAfterSec),
        }),
      );
    }
    if (isQueueFullError(error) || isQueueTimeoutError(error)) {
      const retryAfter = String((error as { retryAfterSec: number }).retryAfterSec);
      return sendError(
        res,
        new HttpError(
          503,
          error.message,
          'service_unavailable',
          isQueueFullError(error) ? 'queue_full' : 'queue_timeout',
          {
            'retry-after': retryAfter,
          },
        ),
      );
    }
    if (error instanceof ClientClosedError || isRequestAbortedError(error)) return; // nobody to answer
    if (res.headersSent) {
      // The upstream failed after the response began (a stream cut mid-way): the cut is all the client can see.
      const code = (error as { code?: string })?.code ?? 'unknown';
      exchange.upstreamFailure ??= code;
      metrics?.upstreamFailure('mid_response');
      logger.warn(
        { requestId, err: { code, message: (error as Error)?.message } },
        'upstream failed mid-response',
      );
      res.destroy();
      return;
    }
    if (res.destroyed) return; // the client left while the request waited: nobody to answer
    if (isUpstreamTimeoutError(error)) {
      metrics?.upstreamFailure('timeout');
      return sendError(
        res,
        new HttpError(504, 'The model server did not answer in time', 'upstream_timeout', error.code),
      );
    }
    if (isUpstreamConnectionError(error)) {
      metrics?.upstreamFailure('unreachable');
      return sendError(
        res,
        new HttpError(502, 'The model server is unreachable', 'upstream_unreachable', error.code),
      );
    }
    // Anything else is a bug: log it (never the key), answer a generic 500 without details.
    logger.error(
      { requestId, err: { message: (error as Error)?.message, code: (error as { code?: string })?.code } },
      'unexpected error',
    );
    sendError(res, new HttpError(500, 'Internal error', 'internal_error'));
  }

  /**
   * `GET /v1/models`: every model the replicas serve that the key may use, each once, in OpenAI's list shape
   * (`parent` kept for LoRA adapters), read from the replicas now.
   */
  async function listModels(res: ServerResponse, principal: ApiKey): Promise<void> {
    const list = await client.models({ timeoutMs: 5000 });
    const allowed = principal.models;
    send(res, 200, {
      object: 'list',
      data: list.data
        .filter((card) => allowed === null || mayUse(allowed, card.id))
        .map(({ replicas: _replicas, ...card }) => card),
    });
  }

  /**
   * A key limited to some models (`keys --models`): any other gets the same 404 as a model that does not exist (no
   * enumeration), and a request without `model` is refused (the server's default might be one it may not use).
   */
  function checkModelAccess(principal: ApiKey, parsed: unknown): void {
    const allowed = principal.models;
    if (allowed === null) return;
    const model = (parsed as { model?: unknown } | null)?.model;
    if (typeof model === 'string' && mayUse(allowed, model)) return;
    if (typeof model !== 'string') {
      throw new HttpError(
        400,
        `The request must name a \`model\` (this key may use: ${allowed.join(', ')})`,
        'invalid_request_error',
        'model_required',
        {},
        'model',
      );
    }
    throw new HttpError(
      404,
      `The model \`${model}\` does not exist or you do not have access to it.`,
      'invalid_request_error',
      'model_not_found',
      {},
      'model',
    );
  }

  /** A key's model list names the model, or what it is an alias of, or an alias of it. */
  function mayUse(allowed: readonly string[], model: string): boolean {
    if (allowed.includes(model)) return true;
    const aliases = deps.modelAliases;
    if (aliases === undefined) return false;
    const served = Object.hasOwn(aliases, model) ? aliases[model] : undefined;
    if (served !== undefined && allowed.includes(served)) return true;
    return allowed.some((name) => Object.hasOwn(aliases, name) && aliases[name] === model);
  }

  /** The admin key, compared as SHA-256 digests in constant time. */
  function isAdmin(req: IncomingMessage): boolean {
    const expected = deps.adminKeyHash;
    if (expected === undefined) return false;
    const header = req.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
    if (match === null) return false;
    return timingSafeEqual(createHash('sha256').update(match[1]!).digest(), expected);
  }

  /** Kubernetes readiness: status only. */
  function readyz(res: ServerResponse): void {
    const { usable } = deps.health.snapshot();
    send(res, usable ? 200 : 503, { status: usable ? 'ready' : 'not_ready' });
  }

  /**
   * 200 when at least one replica is usable (healthy at the last background probe, accepting the gateway's
   * credentials, not ejected), 503 otherwise — answered from the last probe, never by asking the replicas. The
   * details (replica URLs, credentials, ejections) only for the admin (ADMIN_KEY, or the METRICS_PORT listener).
   */
  function health(res: ServerResponse, detailed: boolean): void {
    const snapshot = deps.health.snapshot();
    const status = snapshot.usable ? 'ok' : 'degraded';
    const code = snapshot.usable ? 200 : 503;
    if (!detailed) {
      return send(res, code, {
        status,
        upstreams: {
          total: snapshot.replicas.length,
          usable: snapshot.replicas.filter((r) => r.healthy && r.credentials !== 'rejected' && !r.ejected)
            .length,
          ejected: snapshot.replicas.filter((r) => r.ejected).length,
        },
      });
    }
    send(res, code, {
      status,
      upstreams: snapshot.replicas,
      checkedAt: snapshot.checkedAt === 0 ? null : new Date(snapshot.checkedAt).toISOString(),
      queue: { active: limiter.activeCount, pending: limiter.pendingCount },
    });
  }

  /** The METRICS_PORT listener: the probes, the detailed /health and /metrics, nothing else. */
  async function handleAdmin(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = pathOf(req.url ?? '/');
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        throw new HttpError(405, `Use GET for ${path}`, 'invalid_request_error', 'method_not_allowed', {
          allow: 'GET, HEAD',
        });
      }
      if (path === '/livez') return send(res, 200, { status: 'ok' });
      if (path === '/readyz') return readyz(res);
      if (path === '/health') return health(res, true);
      if (path === '/metrics') return await renderMetrics(res);
      throw new HttpError(404, 'Unknown route', 'invalid_request_error', 'not_found');
    } catch (error) {
      if (error instanceof HttpError) return sendError(res, error);
      logger.error(
        { err: { message: (error as Error)?.message } },
        'unexpected error on the metrics listener',
      );
      sendError(res, new HttpError(500, 'Internal error', 'internal_error'));
    }
  }

  async function renderMetrics(res: ServerResponse): Promise<void> {
    if (deps.renderMetrics === undefined)
      throw new HttpError(404, 'Metrics are off (METRICS=false)', 'invalid_request_error', 'not_found');
    let rendered: { contentType: string; body: string };
    try {
      rendered = await deps.renderMetrics();
    } catch (error) {
      // A worker died mid-scrape (or the primary is busy): say so, rather than answer an empty 200.
      logger.warn({ err: { message: (error as Error).message } }, 'metrics unavailable');
      throw new HttpError(
        503,
        'Metrics are unavailable right now (a worker is restarting); try again',
        'service_unavailable',
        'metrics_unavailable',
        { 'retry-after': '1' },
      );
    }
    res.writeHead(200, {
      'content-type': rendered.contentType,
      'content-length': Buffer.byteLength(rendered.body),
    });
    res.end(rendered.body);
  }

  return { handle, handleAdmin, openRequests: () => open };
}

export type { Registry };

/** The body's `model`, when it names one. */
function modelOf(parsed: unknown): string | undefined {
  const model = (parsed as { model?: unknown } | null | undefined)?.model;
  return typeof model === 'string' ? model : undefined;
}
