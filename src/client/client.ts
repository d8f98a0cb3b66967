// createVllmClient: typed calls, raw passthrough and a fetch over one keep-alive pool per replica, with timeouts,
// safe retries within a budget, and errors from one mapping function.
import type { Readable } from 'node:stream';
import { Dispatcher, Headers, Response as UndiciResponse, fetch as undiciFetch } from 'undici';
import {
  AdapterLoadError,
  ClosedError,
  InvalidOptionError,
  isAdapterLoadError,
  isModelNotFoundError,
  isVllmKitError,
  ModelNotFoundError,
  RequestAbortedError,
  UpstreamConnectionError,
  UpstreamTimeoutError,
  type VllmKitError,
} from '../errors/index.js';
import { type AbortSignalLike, LightAbortSignal } from '../internal/abort.js';
import type { Permit, PermitPool } from '../upstream-permits/index.js';
import { errorFromStatus, errorFromStreamEvent, errorFromTransport } from './map-error.js';
import { type ModelAlias, renameModelStream, renameModelWebStream } from './model-alias.js';
import { type ResolvedClientOptions, resolveClientOptions, type VllmClientOptions } from './options.js';
import { isReplayableBody, ReplayDispatcher } from './replay.js';
import { type RoutedOptions, Router } from './replica-pool.js';
import { backoffDelay, isRetryableStatus, parseRetryAfter, RetryBudget } from './retry.js';
import { type RoutingBlocks, routingBlocks } from './routing-policy.js';
import { SocketTracker } from './socket-tracker.js';
import { SseParser } from './sse.js';
import { type CallTelemetry, ClientTelemetry } from './telemetry.js';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  Completion,
  CompletionChunk,
  CompletionRequest,
  EmbeddingList,
  EmbeddingRequest,
  ModelList,
} from './types.js';

/** Per-call options of every method. */
export interface CallOptions {
  /** Aborts the call (and the upstream request) at once. An `AbortSignal`, or any {@link AbortSignalLike}. */
  signal?: AbortSignalLike;
  /** Whole-call timeout in ms, retries included; overrides `totalTimeoutMs`. */
  timeoutMs?: number;
  /** Extra headers for this call. */
  headers?: Record<string, string>;
  /** Sent as `X-Request-Id` and carried by errors. */
  requestId?: string;
  /** Send the call to this replica (one of `baseUrls`) instead of the one routing would pick. */
  replica?: string;
  /**
   * Affinity key for prefix routing (a session or conversation id): calls with the same key go to the same replica
   * while it is up and under its load bound. Takes precedence over the body's `prompt_cache_key`, `user` and prompt.
   */
  routingKey?: string | undefined;
  /**
   * The OpenTelemetry `Context` to parent this call's span (a server span's context, say); the active context when
   * omitted. Passing it spares the caller an `AsyncLocalStorage` context manager on its hot path.
   */
  traceContext?: unknown;
  /**
   * An OpenTelemetry `Span` of yours (a gateway's server span, say) to record this call into instead of starting a
   * child span: it gets the call's GenAI attributes, its retry events and its `traceparent`; you name it, set its
   * status and end it. One span per request instead of two — what a passthrough, whose server and client spans would
   * tell the same story, should export. Takes precedence over `traceContext`. The metrics are recorded as usual.
   */
  traceSpan?: unknown;
}

export interface RawRequest extends CallOptions {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'HEAD' | 'OPTIONS';
  /** Path with query, e.g. `/v1/chat/completions`. */
  path: string;
  /** A string or bytes can be retried; a stream is sent once. */
  body?: string | Uint8Array | Readable | null;
  /**
   * The request body as already parsed, so that a gateway that parsed it to validate it does not parse it twice: for
   * prefix routing (its prompt's leading characters, `prompt_cache_key` or `user` form the routing key) and for the
   * call's span (model, `max_tokens`, `stream`).
   */
  routingBody?: unknown;
  /**
   * Called when the request is handed to a replica's connection pool (after its model check and its permit, once per
   * attempt): until then nothing reached the model server, so a caller that accounts for the request can tell a
   * request that cost nothing from one that may have.
   */
  onDispatch?: () => void;
}

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The body as it arrives, unparsed. Consume it or call `body.destroy()`: the connection is held until then. */
  body: Readable & AsyncIterable<Buffer>;
}

export interface UpstreamStats {
  url: string;
  /** undici's pool figures. */
  connected: number;
  free: number;
  pending: number;
  running: number;
  queued: number;
  size: number;
  /** Requests sent to this replica and not finished. */
  outstanding: number;
  ejected: boolean;
  consecutiveFailures: number;
  /** 5xx answers in a row (`ejectAfter5xx` of them eject the replica). */
  consecutive5xx: number;
  /** Times taken out of rotation since start. */
  ejections: number;
  /** Prefix routing: requests that followed their prompt's cached prefix here. */
  prefixRouted: number;
  /** Prefix routing: requests sent here because the replica holding their prefix was over its load bound or ejected. */
  fallbacks: number;
  /** Prefix routing: new conversations (or prefixes every replica holds alike) placed here to balance the caches. */
  placed: number;
  /** The replica's own queue and KV-cache use (0–1) from its /metrics, when `loadSignalsIntervalMs` is on. */
  waiting: number | undefined;
  kvCacheUsage: number | undefined;
  /** The models it serves (adapters included), when known. */
  models: string[] | undefined;
  /** LoRA adapters running there, when load signals are on and it reports them. */
  loraRunning: string[] | undefined;
}

export interface VllmClientStats {
  upstreams: UpstreamStats[];
  /** Calls made (each counts once, whatever its retries). */
  requests: number;
  /** Retries after a retryable failure (budgeted). */
  retries: number;
  /** Immediate replays of requests that died on a reused keep-alive socket before any response byte. */
  replays: number;
  /** Failed calls by error `code`. */
  errors: Record<string, number>;
  connections: {
    /** New TCP connections opened. */
    created: number;
    /** Requests sent on a connection that had served a request before. */
    reused: number;
  };
  /** On-demand LoRA adapter loads this process sent (`loraAdapters`), and of them those that failed, by adapter. */
  adapterLoads: Record<string, { sent: number; failed: number }>;
}

export interface VllmClient {
  /** The upstream base URLs (origins). */
  readonly baseUrls: readonly string[];
  chatCompletion(body: ChatCompletionRequest, options?: CallOptions): Promise<ChatCompletion>;
  /** Streams chunks as they arrive; breaking out of the loop or aborting cancels the upstream request at once. */
  streamChatCompletion(
    body: ChatCompletionRequest,
    options?: CallOptions,
  ): AsyncIterable<ChatCompletionChunk>;
  completion(body: CompletionRequest, options?: CallOptions): Promise<Completion>;
  streamCompletion(body: CompletionRequest, options?: CallOptions): AsyncIterable<CompletionChunk>;
  embeddings(body: EmbeddingRequest, options?: CallOptions): Promise<EmbeddingList>;
  /**
   * The served models. With model routing (several replicas, or `models`): every replica's `/v1/models` read now,
   * the union, each id once, with `replicas` (the URLs serving it), `parent` (a LoRA adapter's base) and `root`.
   * Otherwise (one replica) that replica's list.
   */
  models(options?: CallOptions): Promise<ModelList>;
  /**
   * True when `/health` answers 2xx; false on another status. Connection failures throw. One request, never retried:
   * a health check reports the state now.
   */
  health(options?: CallOptions): Promise<boolean>;
  /** The server's version string (`/version`). */
  version(options?: CallOptions): Promise<string>;
  /** Sends a request and returns status, headers and the body stream without parsing: the gateway fast path. */
  request(request: RawRequest): Promise<RawResponse>;
  /** A WHATWG `fetch` over the same pools, for SDKs that accept a custom fetch (openai, LangChain, AI SDK). */
  readonly fetch: typeof globalThis.fetch;
  stats(): VllmClientStats;
  /** Lets in-flight requests finish, then closes every connection. */
  close(): Promise<void>;
  /** Aborts in-flight requests and closes every connection at once. */
  destroy(): Promise<void>;
}

/**
 * Creates a pooled client for vLLM or any OpenAI-compatible server.
 *
 * @example
 * const client = createVllmClient({ baseUrl: 'http://127.0.0.1:8000' });
 * const reply = await client.chatCompletion({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 64 });
 * for await (const chunk of client.streamChatCompletion({ messages, stream_options: { include_usage: true } })) { … }
 * await client.close();
 */
export function createVllmClient(options: VllmClientOptions): VllmClient {
  return new Client(resolveClientOptions(options));
}

interface Sent {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable &
    AsyncIterable<Buffer> & {
      text(): Promise<string>;
      json(): Promise<unknown>;
      dump(opts?: object): Promise<void>;
    };
  /** Aborts the call's own controller (timeouts, the caller's signal, early exit). */
  abort(reason: Error): void;
  /** Clears the call's timers and signal listener, returns its permit and ends its span: once, when it is over. */
  done(): void;
  signal: CallSignal;
  startedAt: number;
  /** The call's span, for inference calls with telemetry on. */
  call: CallTelemetry | undefined;
  /** The replica that answered. */
  upstream: string;
  /** The alias the request used: its response names the alias instead of the served model. */
  alias: ModelAlias | undefined;
}

/**
 * The call's own abort signal: light (undici takes any object with `addEventListener`, `aborted` and `reason`), which
 * matters on a path taken by every request; aborted by the caller's signal or the total timeout.
 */
class CallSignal extends LightAbortSignal {
  private timer: NodeJS.Timeout | undefined;
  private onUserAbort: (() => void) | undefined;

  constructor(
    private readonly requestId: string | undefined,
    private readonly userSignal: AbortSignalLike | undefined,
    private readonly totalMs: number,
  ) {
    super();
    if (userSignal !== undefined) {
      this.onUserAbort = () => this.abort(new RequestAbortedError({ requestId, cause: userSignal.reason }));
      userSignal.addEventListener('abort', this.onUserAbort, { once: true });
    }
    if (totalMs > 0) {
      this.timer = setTimeout(CallSignal.onTimeout, totalMs, this);
      this.timer.unref();
    }
  }

  private static onTimeout(signal: CallSignal): void {
    signal.timer = undefined;
    signal.abort(new UpstreamTimeoutError('total', signal.totalMs, { requestId: signal.requestId }));
  }

  /** Clears the total timer and the caller's signal listener once the call is over. */
  readonly done = (): void => {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.onUserAbort) this.userSignal?.removeEventListener('abort', this.onUserAbort);
    this.onUserAbort = undefined;
  };
}

/** Where a call goes (stage 1 of `send`). */
interface CallRoute {
  /** The request, with the served model's name when it used an alias. */
  spec: SendSpec;
  /** The replica the caller named. */
  replica: string | undefined;
  routeKey: string | undefined;
  blocks: RoutingBlocks | undefined;
  model: string | undefined;
  alias: ModelAlias | undefined;
  /** Time already spent waiting for an adapter load. */
  waitedMs: number;
}

/** One call in flight (stage 2 on): its signal, span, target and what its attempts share. */
interface CallState extends CallRoute {
  options: CallOptions | undefined;
  signal: CallSignal;
  call: CallTelemetry | undefined;
  /** The replica chosen before the first attempt (named, or chosen for a permit); undefined: the router picks. */
  target: string | undefined;
  /** Clears the call's timers and signal listener, returns its permit and ends its span: once, when it is over. */
  done: () => void;
  headers: string[];
  startedAt: number;
  replayable: boolean;
  /** A replica that failed this call: a retry goes elsewhere when there is elsewhere to go. */
  avoid: string | undefined;
}

interface SendSpec {
  method: RawRequest['method'];
  path: string;
  body: RawRequest['body'];
  /** JSON calls set content-type. */
  json: boolean;
  stream: boolean;
  /** Return error statuses instead of throwing (the passthrough). */
  passErrors: boolean;
  /** Retry connection failures before the first byte (health checks answer at once instead). @default true */
  retry?: boolean;
  /** The body as an object, for the routing key (the typed methods' own body; `request()`'s `routingBody`). */
  routingBody?: unknown;
  /**
   * Retry 408/409/429/5xx. A passthrough answers them at once instead: its caller decides (and passes Retry-After on),
   * and sleeping here would hold the caller's concurrency slot. @default true
   */
  retryStatuses?: boolean;
  /**
   * A 5xx answer (before any byte reached the caller) is retried once on another replica, at once, when the client
   * chose the replica (the passthrough: the request never reached the caller's client yet). @default false
   */
  retryElsewhere?: boolean;
}

class Client implements VllmClient {
  readonly baseUrls: readonly string[];
  readonly fetch: typeof globalThis.fetch;
  private readonly options: ResolvedClientOptions;
  private readonly router: Router | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly tracker = new SocketTracker();
  private readonly replayStats = { replays: 0 };
  private readonly budget: RetryBudget;
  private readonly plainHeaders: string[];
  private readonly jsonHeaders: string[];
  private readonly streamHeaders: string[];
  private readonly mergedHeaders = new WeakMap<object, { base: string[]; merged: string[] }>();
  private readonly origin: string;
  private readonly hasAliases: boolean;
  private readonly telemetry: ClientTelemetry | undefined;
  private requests = 0;
  private retries = 0;
  private readonly errors: Record<string, number> = {};
  private closed = false;

  constructor(options: ResolvedClientOptions) {
    this.options = options;
    this.baseUrls = options.origins;
    this.origin = options.origins[0]!;
    this.hasAliases = Object.keys(options.aliases).length > 0;
    this.router = options.dispatcher === undefined ? new Router(options) : undefined;
    // Up to 3 replays: each dead idle socket fails once and is gone, so a replay soon lands on a live one.
    const maxReplays = Math.min(options.connections, 3);
    this.dispatcher = new ReplayDispatcher(
      options.dispatcher ?? this.router!,
      this.tracker,
      this.replayStats,
      maxReplays,
    );
    this.budget = new RetryBudget({ ...options.retryBudget, now: options.now });
    this.telemetry = ClientTelemetry.create(options.telemetry);
    const base: Record<string, string> = {};
    for (const [name, value] of Object.entries(options.headers)) base[name.toLowerCase()] = value;
    if (options.apiKey !== undefined) base.authorization = `Bearer ${options.apiKey}`;
    this.plainHeaders = Object.entries(base).flat();
    this.jsonHeaders = Object.entries({ ...base, 'content-type': 'application/json' }).flat();
    this.streamHeaders = Object.entries({
      ...base,
      'content-type': 'application/json',
      accept: 'text/event-stream',
    }).flat();
    const router = this.router;
    const byModel = router !== undefined && (router.routesByModel || this.hasAliases);
    this.fetch = ((input: FetchInput, init?: FetchInit) =>
      byModel && typeof init?.body === 'string'
        ? this.modelFetch(input, init as FetchInit & { body: string })
        : this.plainFetch(input, init, this.dispatcher)) as unknown as typeof globalThis.fetch;
  }

  private plainFetch(input: FetchInput, init: FetchInit | undefined, dispatcher: Dispatcher) {
    const telemetry = this.telemetry;
    return telemetry === undefined
      ? undiciFetch(input, { ...init, dispatcher })
      : tracedFetch(telemetry, dispatcher, this.origin, input, init);
  }

  /**
   * `fetch` with a JSON body, routed by its `model` as the typed calls are: an unknown model answers a 404 in
   * OpenAI's shape (what an SDK expects of a server; a thrown error would look like a network failure and be
   * retried), an alias is rewritten up and renamed in the response.
   */
  private async modelFetch(input: FetchInput, init: FetchInit & { body: string }): Promise<UndiciResponse> {
    let body: unknown;
    try {
      body = JSON.parse(init.body);
    } catch {
      return this.plainFetch(input, init, this.dispatcher);
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body))
      return this.plainFetch(input, init, this.dispatcher);
    let resolved: Awaited<ReturnType<Client['resolveModel']>>;
    try {
      resolved = await this.resolveModel(
        {
          method: 'POST',
          path: '',
          body: init.body,
          json: true,
          stream: false,
          passErrors: true,
          routingBody: body,
        },
        init.signal ? { signal: init.signal } : undefined,
      );
    } catch (error) {
      if (isModelNotFoundError(error))
        return errorResponse(
          404,
          modelNotFoundMessage(error.model),
          'invalid_request_error',
          'model',
          'model_not_found',
        );
      if (isAdapterLoadError(error))
        return errorResponse(503, error.message, 'service_unavailable', 'model', 'adapter_load_failed');
      throw error;
    }
    const { model, alias } = resolved;
    const dispatcher = model === undefined ? this.dispatcher : new CallDispatcher(this.dispatcher, { model });
    const response = await this.plainFetch(
      input,
      { ...init, body: resolved.spec.body as string },
      dispatcher,
    );
    if (alias === undefined || response.body === null) return response;
    const headers = new Headers(response.headers);
    headers.delete('content-length');
    const renamed = (response.body as unknown as ReadableStream<Uint8Array>).pipeThrough(
      renameModelWebStream(alias),
    );
    return new UndiciResponse(renamed as unknown as ConstructorParameters<typeof UndiciResponse>[0], {
      status: response.status,
      statusText: response.statusText,
      headers,
    });
  }

  // ── typed calls ──────────────────────────────────────────────────────────────────────────────────────────────

  chatCompletion(body: ChatCompletionRequest, options?: CallOptions): Promise<ChatCompletion> {
    return this.json('/v1/chat/completions', nonStreaming(body), options) as Promise<ChatCompletion>;
  }

  streamChatCompletion(
    body: ChatCompletionRequest,
    options?: CallOptions,
  ): AsyncIterable<ChatCompletionChunk> {
    return this.events<ChatCompletionChunk>('/v1/chat/completions', { ...body, stream: true }, options);
  }

  completion(body: CompletionRequest, options?: CallOptions): Promise<Completion> {
    return this.json('/v1/completions', nonStreaming(body), options) as Promise<Completion>;
  }

  streamCompletion(body: CompletionRequest, options?: CallOptions): AsyncIterable<CompletionChunk> {
    return this.events<CompletionChunk>('/v1/completions', { ...body, stream: true }, options);
  }

  embeddings(body: EmbeddingRequest, options?: CallOptions): Promise<EmbeddingList> {
    return this.json('/v1/embeddings', body, options) as Promise<EmbeddingList>;
  }

  async models(options?: CallOptions): Promise<ModelList> {
    const router = this.router;
    if (router === undefined || !router.routesByModel || options?.replica !== undefined) {
      return this.json('/v1/models', undefined, options) as Promise<ModelList>;
    }
    // Every replica's models, read now: the union, each id once, with the replicas serving it; then the declared
    // adapters no replica has loaded yet (served on first use), and the aliases (`root` names what they stand for).
    await router.discoverModels();
    const served = router.servedModels();
    const data: ModelList['data'] = served.map((m) => ({
      id: m.id,
      object: 'model' as const,
      owned_by: 'vllm',
      root: m.root,
      parent: m.parent,
      ...(m.maxModelLen === undefined ? {} : { max_model_len: m.maxModelLen }),
      replicas: m.replicas,
    }));
    const listed = new Set(served.map((m) => m.id));
    for (const [id, { base, path }] of Object.entries(this.options.loraAdapters)) {
      if (!listed.has(id))
        data.push({ id, object: 'model', owned_by: 'vllm', root: path, parent: base, replicas: [] });
    }
    for (const [id, target] of Object.entries(this.options.aliases)) {
      const of = served.find((m) => m.id === target);
      data.push({
        id,
        object: 'model',
        owned_by: 'vllm',
        root: target,
        parent: of?.parent ?? null,
        replicas: of?.replicas ?? [],
      });
    }
    return { object: 'list', data };
  }

  async health(options?: CallOptions): Promise<boolean> {
    const sent = await this.send(
      {
        method: 'GET',
        path: '/health',
        body: null,
        json: false,
        stream: false,
        passErrors: true,
        // One request, answered at once: a health check that retried would report late what it was asked now.
        retry: false,
      },
      options,
    );
    try {
      await sent.body.dump();
      return sent.status >= 200 && sent.status < 300;
    } finally {
      sent.done();
    }
  }

  async version(options?: CallOptions): Promise<string> {
    const body = (await this.json('/version', undefined, options)) as { version?: unknown };
    return String(body.version);
  }

  async request(request: RawRequest): Promise<RawResponse> {
    const sent = await this.send(
      {
        method: request.method,
        path: request.path,
        body: request.body ?? null,
        json: false,
        stream: false,
        passErrors: true,
        retryStatuses: false,
        retryElsewhere: true,
        routingBody: request.routingBody,
      },
      request,
    );
    // The call's timers live until the body is consumed or destroyed.
    sent.body.once('close', () => sent.done());
    if (sent.alias === undefined) return { status: sent.status, headers: sent.headers, body: sent.body };
    // Renamed, the body's length may change: it goes out without the upstream's content-length.
    const { 'content-length': _length, ...headers } = sent.headers;
    return { status: sent.status, headers, body: renameModelStream(sent.body, sent.alias) };
  }

  stats(): VllmClientStats {
    const upstreams: UpstreamStats[] = (this.router?.upstreams ?? []).map((upstream) => {
      const pool = upstream.pool.stats;
      return {
        url: upstream.origin,
        connected: pool.connected,
        free: pool.free,
        pending: pool.pending,
        running: pool.running,
        queued: pool.queued,
        size: pool.size,
        outstanding: upstream.outstanding,
        ejected: upstream.ejected,
        consecutive5xx: upstream.consecutive5xx,
        ejections: upstream.ejectionsTotal,
        consecutiveFailures: upstream.consecutiveFailures,
        prefixRouted: upstream.prefixRouted,
        fallbacks: upstream.fallbacks,
        placed: upstream.placed,
        waiting: upstream.waiting,
        kvCacheUsage: upstream.kvCacheUsage,
        models: upstream.models === undefined ? undefined : [...upstream.models.keys()],
        loraRunning: upstream.lora === undefined ? undefined : [...upstream.lora.running],
      };
    });
    return {
      upstreams,
      requests: this.requests,
      retries: this.retries,
      replays: this.replayStats.replays,
      errors: { ...this.errors },
      connections: {
        created: (this.router?.upstreams ?? []).reduce((sum, u) => sum + u.connectionsCreated, 0),
        reused: this.tracker.reusedRequests,
      },
      adapterLoads: Object.fromEntries(
        [...(this.router?.adapterLoadCounts ?? [])].map(([name, counts]) => [name, { ...counts }]),
      ),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.tracker.close();
    await this.router?.close();
  }

  async destroy(): Promise<void> {
    this.closed = true;
    this.tracker.close();
    await this.router?.destroy();
  }

  // ── internals ────────────────────────────────────────────────────────────────────────────────────────────────

  private async json(path: string, body: unknown, options?: CallOptions): Promise<unknown> {
    const sent = await this.send(
      {
        method: body === undefined ? 'GET' : 'POST',
        path,
        body: body === undefined ? null : JSON.stringify(body),
        json: body !== undefined,
        stream: false,
        passErrors: false,
        routingBody: body,
      },
      options,
    );
    try {
      const result = await sent.body.json();
      if (sent.alias !== undefined) nameAlias(result, sent.alias);
      return result;
    } catch (error) {
      throw this.fail(this.mapError(error, sent.signal, options, sent.upstream), sent.call);
    } finally {
      sent.done();
    }
  }

  private events<T>(path: string, body: unknown, options?: CallOptions): AsyncIterable<T> {
    return {
      [Symbol.asyncIterator]: () => this.readEvents<T>(path, body, options),
    };
  }

  private async *readEvents<T>(path: string, body: unknown, options?: CallOptions): AsyncGenerator<T> {
    const sent = await this.send(
      {
        method: 'POST',
        path,
        body: JSON.stringify(body),
        json: true,
        stream: true,
        passErrors: false,
        routingBody: body,
      },
      options,
    );
    const { firstByteTimeoutMs, idleTimeoutMs } = this.options;
    const context = { requestId: options?.requestId, upstream: sent.upstream };
    // vLLM sends a stream's headers at once; the first event comes with the first token. Until then the first-byte
    // timeout applies (what is left of it), then the idle timeout between chunks.
    let timer: NodeJS.Timeout | undefined;
    const arm = (kind: 'firstByte' | 'idle', ms: number) => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (ms <= 0) return;
      timer = setTimeout(
        () =>
          sent.abort(
            new UpstreamTimeoutError(kind, kind === 'idle' ? idleTimeoutMs : firstByteTimeoutMs, context),
          ),
        ms,
      );
      timer.unref();
    };
    if (firstByteTimeoutMs > 0)
      arm('firstByte', Math.max(1, firstByteTimeoutMs - (performance.now() - sent.startedAt)));
    const parser = new SseParser();
    const decoder = new TextDecoder();
    let sawEvent = false;
    let sawDone = false;
    let ended = false;
    try {
      for await (const chunk of sent.body) {
        const events = parser.push(decoder.decode(chunk, { stream: true }));
        if (events.length > 0 && !sawEvent) sawEvent = true;
        if (sawEvent) arm('idle', idleTimeoutMs);
        for (const data of events) {
          if (sawDone) break;
          if (data === '[DONE]') {
            sawDone = true;
            break;
          }
          let parsed: unknown;
          try {
            parsed = JSON.parse(data);
          } catch (cause) {
            throw new UpstreamConnectionError('The upstream sent a stream event that is not JSON', {
              ...context,
              cause,
            });
          }
          if (typeof parsed === 'object' && parsed !== null && 'error' in parsed) {
            throw errorFromStreamEvent(data, context);
          }
          if (sent.alias !== undefined) nameAlias(parsed, sent.alias);
          yield parsed as T;
        }
      }
      ended = true;
      if (!sawDone) throw new UpstreamConnectionError('The upstream stream ended before [DONE]', context);
    } catch (error) {
      throw this.fail(this.mapError(error, sent.signal, options, sent.upstream), sent.call);
    } finally {
      if (timer) clearTimeout(timer);
      // An early exit (break, return, an error) destroys the body: undici aborts the upstream request at once.
      if (!ended) sent.body.destroy();
      sent.done();
    }
  }

  /**
   * The model a request is routed by: its alias resolved (the body rewritten), a declared adapter that no replica
   * serves loaded first (the wait bounded by the call's timeout and signal), and a model no replica serves refused.
   */
  private async resolveModel(
    spec: SendSpec,
    options: CallOptions | undefined,
  ): Promise<{ spec: SendSpec; model: string | undefined; alias: ModelAlias | undefined }> {
    const router = this.router!;
    const named = (spec.routingBody as { model?: unknown }).model;
    let wanted = typeof named === 'string' ? named : undefined;
    let alias: ModelAlias | undefined;
    if (wanted !== undefined && this.hasAliases && Object.hasOwn(this.options.aliases, wanted)) {
      const served = this.options.aliases[wanted]!;
      alias = { alias: wanted, served };
      const routingBody = { ...(spec.routingBody as object), model: served };
      spec = { ...spec, routingBody, body: JSON.stringify(routingBody) };
      wanted = served;
    }
    if (!router.routesByModel) return { spec, model: undefined, alias };
    if (!router.modelsKnown) await router.modelsReady();
    let eligible = router.replicasFor(wanted);
    const declared = wanted === undefined ? undefined : this.options.loraAdapters[wanted];
    if (
      eligible?.length === 0 &&
      declared !== undefined &&
      Object.hasOwn(this.options.loraAdapters, wanted!)
    ) {
      const timeoutMs = options?.timeoutMs ?? this.options.totalTimeoutMs;
      try {
        await waitWithin(
          router.loadAdapter(wanted!, declared.base, declared.path, timeoutMs > 0 ? timeoutMs : MAX_LOAD_MS),
          options?.signal,
          timeoutMs,
          options?.requestId,
        );
      } catch (error) {
        throw this.fail(isVllmKitError(error) ? error : new AdapterLoadError(wanted!, []));
      }
      eligible = router.replicasFor(wanted);
    }
    if (eligible !== undefined && eligible.length === 0)
      throw this.fail(new ModelNotFoundError(wanted, this.modelNames()));
    return { spec, model: eligible === undefined ? undefined : wanted, alias };
  }

  /** Every name a request may use: served models, declared adapters and aliases. */
  private modelNames(): string[] {
    const names = new Set(this.router?.servedModels().map((m) => m.id));
    for (const name of Object.keys(this.options.loraAdapters)) names.add(name);
    for (const name of Object.keys(this.options.aliases)) names.add(name);
    return [...names];
  }

  /** Counts a failed call by code (and tells its span) and hands the error back for throwing. */
  private fail(error: VllmKitError, call?: CallTelemetry): VllmKitError {
    this.errors[error.code] = (this.errors[error.code] ?? 0) + 1;
    call?.fail(error);
    return error;
  }

  private mapError(
    error: unknown,
    signal: CallSignal,
    options: CallOptions | undefined,
    upstream: string | undefined,
  ): VllmKitError {
    // Whatever undici surfaced, an aborted call fails with the abort's own reason (a timeout or the caller).
    if (signal.aborted && isVllmKitError(signal.reason)) return signal.reason;
    return errorFromTransport(error, {
      requestId: options?.requestId,
      upstream,
      timeouts: this.options,
    });
  }

  /**
   * Headers as undici's flat array. The common cases are built once; a per-call headers object is merged once per
   * object (a caller that reuses one constant object, as a gateway does, pays for the merge once), and the request
   * id goes on a copy.
   */
  private buildHeaders(spec: SendSpec, options?: CallOptions): string[] {
    const base = spec.stream ? this.streamHeaders : spec.json ? this.jsonHeaders : this.plainHeaders;
    const extra = options?.headers;
    const requestId = options?.requestId;
    if (requestId === undefined && extra === undefined) return base;
    let merged = base;
    if (extra !== undefined) {
      const cached = this.mergedHeaders.get(extra);
      if (cached !== undefined && cached.base === base) merged = cached.merged;
      else {
        merged = mergeHeaders(base, extra);
        this.mergedHeaders.set(extra, { base, merged });
      }
    }
    if (requestId === undefined) return merged;
    const headers = merged.slice();
    const at = headers.indexOf('x-request-id');
    if (at !== -1 && at % 2 === 0) headers[at + 1] = requestId;
    else headers.push('x-request-id', requestId);
    return headers;
  }

  /**
   * One call, in stages: where it goes (`route`), its signal, span and permit (`open`, `takePermit`), then attempts
   * with retries (`retryAfterFailure`, `retryAfterStatus`), status errors mapped (`statusError`).
   */
  private async send(spec: SendSpec, options?: CallOptions): Promise<Sent> {
    if (this.closed) throw new ClosedError('client');
    // The stages are synchronous unless they must wait (an adapter load, a permit): no extra turns on the hot path.
    let route = this.route(spec, options);
    if (this.resolvesModel(route)) route = await this.resolveRoute(route, options);
    const state = this.open(route, options);
    const permits = state.spec.method === 'POST' ? this.options.permits : undefined;
    if (permits !== undefined) await this.takePermit(state, permits);
    state.startedAt = performance.now();
    // Stage 3, the attempts (in this function: an attempt is the hot path, one await on the dispatcher).
    for (let attempt = 0; ; attempt++) {
      state.call?.attempt();
      const request = this.requestOf(state);
      let response: Dispatcher.ResponseData;
      try {
        (options as RawRequest | undefined)?.onDispatch?.();
        response = await this.dispatcher.request(request);
      } catch (error) {
        await this.retryAfterFailure(state, attempt, error, servedBy(request));
        continue;
      }
      const status = response.statusCode;
      if (status < 400) return this.sentOf(state, response, servedBy(request));
      // A replica that no longer serves the model (unloaded, restarted with another): its models are read again.
      if (status === 404 && state.model !== undefined) this.router?.modelMissing(servedBy(request));
      if (await this.retryAfterStatus(state, attempt, response, servedBy(request))) continue;
      if (!state.spec.passErrors) throw await this.statusError(state, response, servedBy(request));
      return this.sentOf(state, response, servedBy(request));
    }
  }

  /**
   * Stage 1, routing: the replica the caller named, the routing key and prompt blocks the policy uses (only a policy
   * that uses them pays for them), and the model: an alias resolved, a declared adapter loaded if no replica serves it
   * (the wait counts against the call's total timeout), unknown → refused before anything is sent.
   */
  private route(spec: SendSpec, options: CallOptions | undefined): CallRoute {
    const replica = options?.replica === undefined ? undefined : this.replicaOf(options.replica);
    const router = this.router;
    const routeKey =
      router === undefined || !router.keyed || replica !== undefined
        ? undefined
        : options?.routingKey !== undefined
          ? `a:${options.routingKey}`
          : router.keyOf(spec.routingBody);
    const blocks =
      router?.cacheAware === true &&
      replica === undefined &&
      (spec.routingBody !== undefined || options?.routingKey !== undefined)
        ? routingBlocks(spec.routingBody, this.options.routingPrefixChars, options?.routingKey)
        : undefined;
    return { spec, replica, routeKey, blocks, model: undefined, alias: undefined, waitedMs: 0 };
  }

  /** Routing by model (or aliases) applies to this call. */
  private resolvesModel(route: CallRoute): boolean {
    const router = this.router;
    return (
      router !== undefined &&
      route.replica === undefined &&
      route.spec.routingBody !== undefined &&
      (router.routesByModel || this.hasAliases)
    );
  }

  /** The model resolved (an alias, an adapter loaded on demand); the wait is counted against the total timeout. */
  private async resolveRoute(route: CallRoute, options: CallOptions | undefined): Promise<CallRoute> {
    const resolving = performance.now();
    const { spec, model, alias } = await this.resolveModel(route.spec, options);
    return { ...route, spec, model, alias, waitedMs: performance.now() - resolving };
  }

  /**
   * Stage 2, the call's own state: its signal (the caller's signal and the total timeout), its span (telemetry on),
   * its headers. Then (`takePermit`) a permit for its replica when the client shares a limit per replica — the replica
   * is chosen now, and the permit goes back when the call is over, whichever way. Only work takes a permit (POST:
   * generations, embeddings); probes (GET /health, /v1/models) never wait for one.
   */
  private open(route: CallRoute, options: CallOptions | undefined): CallState {
    const spec = route.spec;
    this.requests++;
    this.budget.recordRequest();
    const requestId = options?.requestId;
    const userSignal = options?.signal;
    if (userSignal?.aborted)
      throw this.fail(new RequestAbortedError({ requestId, cause: userSignal.reason }));
    const totalMs = options?.timeoutMs ?? this.options.totalTimeoutMs;
    const signal = new CallSignal(
      requestId,
      userSignal,
      totalMs > 0 ? Math.max(1, totalMs - route.waitedMs) : 0,
    );
    const call = this.telemetry?.start({
      path: spec.path,
      body: spec.routingBody,
      stream: spec.stream || (spec.routingBody as { stream?: unknown } | undefined)?.stream === true,
      parent: options?.traceContext,
      span: options?.traceSpan,
      requestId,
      origin: route.replica ?? (this.router === undefined ? this.origin : undefined),
    });
    const state: CallState = {
      spec,
      replica: route.replica,
      routeKey: route.routeKey,
      blocks: route.blocks,
      model: route.model,
      alias: route.alias,
      waitedMs: route.waitedMs,
      options,
      signal,
      call,
      target: route.replica,
      done:
        call === undefined
          ? signal.done
          : () => {
              signal.done();
              call.end(signal.aborted ? signal.reason : undefined);
            },
      headers: this.buildHeaders(spec, options),
      startedAt: 0,
      replayable: spec.retry !== false && isReplayableBody(spec.body),
      avoid: undefined,
    };
    if (call !== undefined) state.headers = withTraceHeaders(state.headers, call.traceHeaders());
    return state;
  }

  private async takePermit(state: CallState, permits: PermitPool): Promise<void> {
    const { signal, call } = state;
    const target = (state.target ??=
      this.router === undefined
        ? this.origin
        : this.router.choose({ routeKey: state.routeKey, blocks: state.blocks, model: state.model }).origin);
    let permit: Permit;
    try {
      const timeoutMs = this.options.permitTimeoutMs;
      permit = await permits.acquire(target, timeoutMs > 0 ? { signal, timeoutMs } : { signal });
    } catch (error) {
      const failure = signal.aborted
        ? this.fail(this.mapError(signal.reason, signal, state.options, target))
        : error;
      call?.fail(failure);
      state.done();
      throw failure;
    }
    const finish = state.done;
    state.done = () => {
      finish();
      permit.release();
    };
  }

  /** One attempt's request to the dispatcher. */
  private requestOf(state: CallState): Dispatcher.RequestOptions & RoutedOptions {
    const spec = state.spec;
    return {
      origin: state.target ?? this.origin,
      // The router sends a request that names its replica there (an injected dispatcher goes by origin).
      replica: state.target,
      routeKey: state.routeKey,
      blocks: state.blocks,
      avoid: state.avoid,
      model: state.model,
      telemetry: state.call,
      path: spec.path,
      method: spec.method,
      headers: state.headers,
      body: spec.body ?? null,
      signal: state.signal,
      headersTimeout: this.options.firstByteTimeoutMs,
      // Streams get their own first-event and idle timers; undici's body timer would count the queue wait.
      bodyTimeout: spec.stream ? 0 : this.options.idleTimeoutMs,
    };
  }

  /**
   * The dispatcher failed an attempt (no response): true when it is retried — a connection failure before any byte,
   * on another replica when there is one, after a backoff. Otherwise throws the mapped error.
   */
  private async retryAfterFailure(
    state: CallState,
    attempt: number,
    error: unknown,
    upstream: string,
  ): Promise<true> {
    const { signal, call, options } = state;
    const mapped = this.mapError(error, signal, options, upstream);
    const retryable =
      (mapped instanceof UpstreamConnectionError ||
        (mapped instanceof UpstreamTimeoutError && mapped.timeout === 'connect')) &&
      state.replayable;
    if (retryable && this.takeRetry(attempt, signal)) {
      if (state.target === undefined) state.avoid = upstream;
      call?.retried(attempt, mapped);
      const delay = backoffDelay(
        attempt,
        this.options.retryBaseDelayMs,
        this.options.retryMaxDelayMs,
        Math.random,
      );
      await sleep(delay, signal);
      if (!signal.aborted) return true;
    }
    throw this.failCall(state, signal.aborted ? this.mapError(error, signal, options, upstream) : mapped);
  }

  /** An error status not retried: the error to throw, its body read (a broken body is not what matters). */
  private async statusError(
    state: CallState,
    response: Dispatcher.ResponseData,
    upstream: string,
  ): Promise<VllmKitError> {
    let text = '';
    try {
      text = await response.body.text();
    } catch {
      // The status is what matters.
    }
    const context = { requestId: state.options?.requestId, upstream };
    return this.failCall(state, errorFromStatus(response.statusCode, response.headers, text, context));
  }

  /** The answer, for the caller: its status, headers and body, and the call's own controls. */
  private sentOf(state: CallState, response: Dispatcher.ResponseData, upstream: string): Sent {
    const signal = state.signal;
    return {
      status: response.statusCode,
      headers: response.headers,
      body: response.body as Sent['body'],
      abort: (reason: Error) => signal.abort(reason),
      done: state.done,
      signal,
      startedAt: state.startedAt,
      call: state.call,
      upstream,
      alias: state.alias,
    };
  }

  /**
   * An error status: true when the call is retried — a 5xx once, at once, on another replica (the caller has seen
   * nothing yet; outlier ejection takes the failing replica out after a few of these), or a retryable status after
   * its Retry-After or a backoff. Throws when the call's signal aborts meanwhile.
   */
  private async retryAfterStatus(
    state: CallState,
    attempt: number,
    response: Dispatcher.ResponseData,
    upstream: string,
  ): Promise<boolean> {
    const { spec, signal, call } = state;
    const status = response.statusCode;
    if (!isRetryableStatus(status) || !state.replayable) return false;
    const elsewhere =
      status >= 500 &&
      spec.retryElsewhere === true &&
      state.avoid === undefined &&
      state.target === undefined &&
      (this.router?.upstreams.length ?? 0) > 1;
    if (!elsewhere && spec.retryStatuses === false) return false;
    if (!this.takeRetry(attempt, signal)) return false;
    call?.retried(attempt, status);
    await response.body.dump().catch(() => {});
    if (elsewhere) state.avoid = upstream;
    else await sleep(this.retryDelay(attempt, response.headers), signal);
    if (!signal.aborted) return true;
    throw this.failCall(state, this.mapError(signal.reason, signal, state.options, upstream));
  }

  /** Counts the failure, ends the call (its timers, permit, span), and returns the error to throw. */
  private failCall(state: CallState, error: VllmKitError): VllmKitError {
    const failure = this.fail(error, state.call);
    state.done();
    return failure;
  }

  /** The origin of a replica the caller named, which must be one of `baseUrls`. */
  private replicaOf(replica: string): string {
    const origin = replica.replace(/\/+$/, '');
    if (this.baseUrls.includes(origin)) return origin;
    throw new InvalidOptionError(
      'replica',
      `Expected \`replica\` to be one of the client's baseUrls (${this.baseUrls.join(', ')}), got ${JSON.stringify(replica)}`,
    );
  }

  /** Delay before retrying a status: the server's Retry-After (capped), else exponential backoff with jitter. */
  private retryDelay(attempt: number, headers: Record<string, string | string[] | undefined>): number {
    const retryAfter = parseRetryAfter(headers, this.options.now());
    if (retryAfter !== undefined) return Math.min(retryAfter, this.options.retryAfterCapMs);
    return backoffDelay(attempt, this.options.retryBaseDelayMs, this.options.retryMaxDelayMs, Math.random);
  }

  /** True (and counted) when another attempt is allowed: retries left, not aborted, and budget available. */
  private takeRetry(attempt: number, signal: CallSignal): boolean {
    if (attempt >= this.options.maxRetries || signal.aborted || !this.budget.tryWithdraw()) return false;
    this.retries++;
    return true;
  }
}

/** `base` (undici's flat array) with `extra` on top, names lower-cased, later names replacing earlier ones. */
function mergeHeaders(base: string[], extra: Record<string, string>): string[] {
  const merged: Record<string, string> = {};
  for (let i = 0; i < base.length; i += 2) merged[base[i]!] = base[i + 1]!;
  for (const [name, value] of Object.entries(extra)) merged[name.toLowerCase()] = value;
  return Object.entries(merged).flat();
}

/** The replica an attempt went to: the router records it; otherwise the origin it was sent to. */
function servedBy(request: Dispatcher.RequestOptions & RoutedOptions): string {
  return request.servedBy ?? String(request.origin);
}

/** The headers with the call's `traceparent` (and `tracestate`) in place of any the caller set. */
function withTraceHeaders(headers: string[], trace: string[] | undefined): string[] {
  if (trace === undefined) return headers;
  const kept: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (name !== 'traceparent' && name !== 'tracestate') kept.push(name, headers[i + 1]!);
  }
  return kept.concat(trace);
}

type FetchInput = Parameters<typeof undiciFetch>[0];
type FetchInit = NonNullable<Parameters<typeof undiciFetch>[1]>;

/**
 * `fetch` with a span for inference calls: the body (a JSON string, as SDKs send) gives the request attributes, the
 * call's own dispatcher tells the span of each attempt, and the span ends with the response body (or its failure).
 */
function tracedFetch(
  telemetry: ClientTelemetry,
  dispatcher: Dispatcher,
  origin: string,
  input: FetchInput,
  init: FetchInit | undefined,
): ReturnType<typeof undiciFetch> {
  const url =
    typeof input === 'string' ? input : input instanceof URL ? input.href : (input as { url: string }).url;
  let path: string;
  try {
    path = new URL(url).pathname;
  } catch {
    path = '';
  }
  let body: unknown;
  if (typeof init?.body === 'string') {
    try {
      body = JSON.parse(init.body);
    } catch {
      body = undefined;
    }
  }
  const call = telemetry.start({
    path,
    body,
    stream: (body as { stream?: unknown } | undefined)?.stream === true,
    parent: undefined,
    span: undefined,
    requestId: undefined,
    origin,
  });
  if (call === undefined) return undiciFetch(input, { ...init, dispatcher });
  const headers = new Headers(init?.headers as ConstructorParameters<typeof Headers>[0]);
  const trace = call.traceHeaders();
  if (trace !== undefined) for (let i = 0; i < trace.length; i += 2) headers.set(trace[i]!, trace[i + 1]!);
  // The span ends with the transport: the response's last byte, or its failure.
  call.endWithTransport();
  const traced = new CallDispatcher(dispatcher, { telemetry: call });
  return undiciFetch(input, { ...init, headers, dispatcher: traced }).catch((error: unknown) => {
    call.end(error);
    throw error;
  });
}

/** OpenAI's message for a model that does not exist or that the caller may not use. */
export function modelNotFoundMessage(model: string | undefined): string {
  return model === undefined
    ? 'The request names no `model`, and the server serves several: name one.'
    : `The model \`${model}\` does not exist or you do not have access to it.`;
}

/** An error response in OpenAI's shape (for `fetch` callers, who expect one from a server). */
function errorResponse(
  status: number,
  message: string,
  type: string,
  param: string,
  code: string,
): UndiciResponse {
  return new UndiciResponse(JSON.stringify({ error: { message, type, param, code } }), {
    status,
    headers: { 'content-type': 'application/json' },
  });
}

/**
 * One `fetch` call's dispatcher: its requests carry the router's options for the call (its span; the model it is
 * routed by, so that it goes only to replicas serving it).
 */
class CallDispatcher extends Dispatcher {
  constructor(
    private readonly inner: Dispatcher,
    private readonly routed: RoutedOptions,
  ) {
    super();
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    return this.inner.dispatch({ ...opts, ...this.routed } as Dispatcher.DispatchOptions, handler);
  }
}

/** The body as is unless it asks for a stream (a copy then says `stream: false`): no copy on the hot path. */
function nonStreaming<T extends { stream?: unknown }>(body: T): T {
  return body.stream === undefined || body.stream === false || body.stream === null
    ? body
    : { ...body, stream: false };
}

/** Waits `ms`, or less if the signal aborts. */
function sleep(ms: number, signal: CallSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', finish);
      resolve();
    };
    const timer = setTimeout(finish, ms);
    signal.addEventListener('abort', finish);
  });
}

/** The longest an adapter load may take when the call has no total timeout. */
const MAX_LOAD_MS = 600_000;

/** Waits for `promise`, or rejects when the caller's signal aborts or `timeoutMs` passes (the work itself goes on). */
function waitWithin<T>(
  promise: Promise<T>,
  signal: AbortSignalLike | undefined,
  timeoutMs: number,
  requestId: string | undefined,
): Promise<T> {
  if (signal === undefined && timeoutMs <= 0) return promise;
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const finish = (settle: () => void) => {
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      settle();
    };
    const onAbort = () => finish(() => reject(new RequestAbortedError({ requestId, cause: signal?.reason })));
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeoutMs > 0) {
      timer = setTimeout(
        () => finish(() => reject(new UpstreamTimeoutError('total', timeoutMs, { requestId }))),
        timeoutMs,
      );
      timer.unref();
    }
    promise.then(
      (value) => finish(() => resolve(value)),
      (error: unknown) => finish(() => reject(error)),
    );
  });
}

/** A response (or stream chunk) that names the served model names the alias the caller used instead. */
function nameAlias(result: unknown, alias: ModelAlias): void {
  const record = result as { model?: unknown } | null;
  if (typeof record === 'object' && record !== null && record.model === alias.served)
    record.model = alias.alias;
}
