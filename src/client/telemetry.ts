// OpenTelemetry for the client: a span per inference call following the GenAI semantic conventions, their metrics,
// and W3C trace context sent upstream. `@opentelemetry/api` is an optional peer dependency: looked up once when a
// client is created with telemetry on, never loaded (and never costed) when absent or turned off.

import { createRequire } from 'node:module';
import type * as OpenTelemetryApi from '@opentelemetry/api';
import { isVllmKitError, UpstreamHttpError } from '../errors/index.js';
import { lastUsageText, parseUsage, USAGE_KEY } from '../internal/usage-json.js';
import { safeJsonStringify } from '../json-depth/index.js';

type Api = typeof OpenTelemetryApi;
type Span = OpenTelemetryApi.Span;
type Attributes = OpenTelemetryApi.Attributes;
type Histogram = OpenTelemetryApi.Histogram;

/** The client's OpenTelemetry settings (`telemetry` option). */
export interface TelemetryOptions {
  /**
   * The `@opentelemetry/api` module. Found by `require` from vllm-kit's own location when omitted; pass it when a
   * bundler hides it.
   */
  api?: object;
  /** Where spans go. @default the global tracer provider (the one the OpenTelemetry SDK registers) */
  tracerProvider?: object;
  /**
   * Where metrics go. @default the global meter provider, read at the client's first inference call (start the SDK
   * before then)
   */
  meterProvider?: object;
  /** `gen_ai.provider.name` on spans and metrics. @default 'vllm' */
  providerName?: string;
  /**
   * Record prompts and completions on the span (`gen_ai.input.messages`, `gen_ai.output.messages`, JSON as the
   * conventions describe). They may hold personal data, and holding a response to record it costs memory.
   * @default false
   */
  captureContent?: boolean;
  /**
   * `gen_ai.client.operation.time_per_output_chunk` of a stream: `'each'` records every gap between chunks, as the
   * conventions say (one histogram update per chunk, ~4 µs each with the SDK: a 500-token stream costs 2 ms of CPU);
   * `'mean'` records one value per stream, its mean gap (the histogram then counts streams, not chunks); `'off'`
   * records none.
   * @default 'each'
   */
  chunkTiming?: 'each' | 'mean' | 'off';
}

export interface ResolvedTelemetryOptions {
  api: object | undefined;
  tracerProvider: object | undefined;
  meterProvider: object | undefined;
  providerName: string;
  captureContent: boolean;
  chunkTiming: 'each' | 'mean' | 'off';
}

let foundApi: Api | null | undefined;

/** `@opentelemetry/api` when it is installed; looked up once per process. */
function findApi(): Api | undefined {
  if (foundApi === undefined) {
    try {
      // A require resolving from vllm-kit's own files: __filename in the CommonJS build, import.meta.url in the ESM
      // one (a bare `require` there would become the bundler's throwing stub).
      const here = typeof __filename === 'string' ? __filename : import.meta.url;
      foundApi = createRequire(here)('@opentelemetry/api') as Api;
    } catch {
      foundApi = null;
    }
  }
  return foundApi ?? undefined;
}

/** GenAI operation by request path: only inference calls get a span. */
const OPERATIONS: Record<string, string> = {
  '/v1/chat/completions': 'chat',
  '/v1/completions': 'text_completion',
  '/v1/embeddings': 'embeddings',
};

// The conventions' advised bucket boundaries.
const DURATION_BUCKETS = [
  0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TOKEN_BUCKETS = [
  1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
];
const CHUNK_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5];

interface Instruments {
  duration: Histogram;
  tokens: Histogram;
  timeToFirstChunk: Histogram;
  timePerOutputChunk: Histogram;
}

interface MetricAttributes {
  call: Attributes;
  input: Attributes;
  output: Attributes;
}

/** Distinct metric attribute sets kept (beyond it the cache starts over). */
const MAX_SHAPES = 1000;

/** What a call's span and metrics are started from. */
export interface CallStart {
  path: string;
  /** The request body as an object, when known (typed calls, `request()`'s `routingBody`, a JSON `fetch` body). */
  body: unknown;
  /** Streams get time-to-first-chunk and time-per-chunk. */
  stream: boolean;
  /** An OpenTelemetry Context to parent the span; the active context when undefined. */
  parent: unknown;
  /** The caller's own span to record into (it names, sets the status of and ends it); undefined: a span of our own. */
  span: unknown;
  requestId: string | undefined;
  /** The replica, when already chosen. */
  origin: string | undefined;
}

/** The OpenTelemetry side of one client: its tracer and instruments. */
export class ClientTelemetry {
  private readonly tracer: OpenTelemetryApi.Tracer;
  private instruments: Instruments | undefined;
  /** No meter provider behind the instruments (the API alone, no SDK): nothing to record. */
  private metricsOff = false;
  private meterProvider: OpenTelemetryApi.MeterProvider | undefined;
  /** What the global tracer provider delegates to while no SDK is registered. */
  private readonly noopTracerProvider: unknown;
  private readonly servers = new Map<string, { address: string; port: number }>();
  private readonly shapes = new Map<string, MetricAttributes>();

  private constructor(
    readonly api: Api,
    private readonly options: ResolvedTelemetryOptions,
  ) {
    const provider = (options.tracerProvider as OpenTelemetryApi.TracerProvider | undefined) ?? api.trace;
    this.tracer = provider.getTracer('vllm-kit');
    this.noopTracerProvider = new api.ProxyTracerProvider().getDelegate();
  }

  /** Telemetry for a client, or undefined when it is off or the API is not installed. */
  static create(options: ResolvedTelemetryOptions | undefined): ClientTelemetry | undefined {
    if (options === undefined) return undefined;
    const api = (options.api as Api | undefined) ?? findApi();
    return api === undefined ? undefined : new ClientTelemetry(api, options);
  }

  get providerName(): string {
    return this.options.providerName;
  }

  get captureContent(): boolean {
    return this.options.captureContent;
  }

  get chunkTiming(): 'each' | 'mean' | 'off' {
    return this.options.chunkTiming;
  }

  /** A span for an inference call; undefined for any other path (models, health, version). */
  start(start: CallStart): CallTelemetry | undefined {
    const query = start.path.indexOf('?');
    const operation = OPERATIONS[query === -1 ? start.path : start.path.slice(0, query)];
    if (operation === undefined || this.unregistered()) return undefined;
    return new CallTelemetry(this, operation, start);
  }

  /** True when neither the span records nor any metric would: the call then skips reading its response. */
  idle(span: Span): boolean {
    if (span.isRecording()) return false;
    this.metrics();
    return this.metricsOff;
  }

  /**
   * Nothing is registered (the API installed, no SDK): no tracer provider and no meter provider behind the global
   * ones. A call then makes no span at all. Checked per call, so an SDK started later is picked up.
   */
  private unregistered(): boolean {
    if (this.options.tracerProvider !== undefined) return false;
    const provider = this.api.trace.getTracerProvider() as { getDelegate?: () => unknown };
    if (provider.getDelegate?.() !== this.noopTracerProvider) return false;
    this.metrics();
    return this.metricsOff;
  }

  /**
   * Instruments, made at the first call and again whenever the global meter provider changes (an SDK started after
   * the client).
   */
  metrics(): Instruments {
    const provider =
      (this.options.meterProvider as OpenTelemetryApi.MeterProvider | undefined) ??
      this.api.metrics.getMeterProvider();
    if (this.instruments !== undefined && provider === this.meterProvider) return this.instruments;
    this.meterProvider = provider;
    const meter = provider.getMeter('vllm-kit');
    this.instruments = {
      duration: meter.createHistogram('gen_ai.client.operation.duration', {
        description: 'GenAI operation duration',
        unit: 's',
        advice: { explicitBucketBoundaries: DURATION_BUCKETS },
      }),
      tokens: meter.createHistogram('gen_ai.client.token.usage', {
        description: 'Number of input and output tokens used',
        unit: '{token}',
        advice: { explicitBucketBoundaries: TOKEN_BUCKETS },
      }),
      timeToFirstChunk: meter.createHistogram('gen_ai.client.operation.time_to_first_chunk', {
        description: 'Time from the request to the first chunk of a streamed response',
        unit: 's',
        advice: { explicitBucketBoundaries: DURATION_BUCKETS },
      }),
      timePerOutputChunk: meter.createHistogram('gen_ai.client.operation.time_per_output_chunk', {
        description: 'Time between consecutive chunks of a streamed response, for each chunk after the first',
        unit: 's',
        advice: { explicitBucketBoundaries: CHUNK_BUCKETS },
      }),
    };
    // The API's no-op meter hands out one shared no-op histogram.
    this.metricsOff = this.instruments.duration === this.api.createNoopMeter().createHistogram('noop');
    return this.instruments;
  }

  /**
   * The attributes of a call's metrics (and of its two token counts), one set per distinct shape: model, replica and
   * outcome take few values, and a cached object spares an allocation and a copy per record. Bounded, as the
   * metrics' own cardinality is.
   */
  metricAttributes(
    operation: string,
    requestModel: string | undefined,
    responseModel: string | undefined,
    origin: string | undefined,
    errorType: string | undefined,
  ): MetricAttributes {
    const key = `${operation}\n${requestModel}\n${responseModel}\n${origin}\n${errorType}`;
    let shape = this.shapes.get(key);
    if (shape === undefined) {
      const call: Attributes = {
        'gen_ai.operation.name': operation,
        'gen_ai.provider.name': this.options.providerName,
      };
      if (requestModel !== undefined) call['gen_ai.request.model'] = requestModel;
      if (responseModel !== undefined) call['gen_ai.response.model'] = responseModel;
      if (origin !== undefined) serverAttributes(this.server(origin), call);
      // Token counts carry no error.type (the conventions' attribute set for them).
      const tokens = { ...call };
      if (errorType !== undefined) call['error.type'] = errorType;
      shape = {
        call,
        input: { ...tokens, 'gen_ai.token.type': 'input' },
        output: { ...tokens, 'gen_ai.token.type': 'output' },
      };
      if (this.shapes.size >= MAX_SHAPES) this.shapes.clear();
      this.shapes.set(key, shape);
    }
    return shape;
  }

  startSpan(name: string, attributes: Attributes, parent: unknown): Span {
    const api = this.api;
    const context = (parent as OpenTelemetryApi.Context | undefined) ?? api.context.active();
    return this.tracer.startSpan(name, { kind: api.SpanKind.CLIENT, attributes }, context);
  }

  /** `server.address` and `server.port` of a replica's origin, parsed once. */
  server(origin: string): { address: string; port: number } {
    let server = this.servers.get(origin);
    if (server === undefined) {
      const url = new URL(origin);
      const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
      server = { address: url.hostname.replace(/^\[|\]$/g, ''), port };
      this.servers.set(origin, server);
    }
    return server;
  }
}

/** How much of a response's end is kept to read its usage and finish reasons from. */
const TAIL_BYTES = 4096;
/** How much of its start is kept to read the model and id from. */
const HEAD_BYTES = 2048;

/**
 * One inference call's span and metrics. The transport reports each attempt's status and bytes (the client's
 * dispatcher sees every chunk, whichever way the body is consumed); the client ends it when the call is over.
 * The response is never parsed whole: its model and id come from its first bytes, its usage and finish reasons from
 * its last ones.
 */
export class CallTelemetry {
  private readonly span: Span;
  /** The span is the caller's (`traceSpan`): annotated, never named, given a status or ended here. */
  private readonly joined: boolean;
  /** The span records or metrics are collected: the response is read. Otherwise only the trace context matters. */
  private readonly active: boolean;
  private readonly startedAt = performance.now();
  private readonly requestModel: string | undefined;
  private readonly stream: boolean;
  /** Gaps between chunks are kept (the stream's chunk timing is not off). */
  private readonly timesChunks: boolean;
  private readonly input: unknown;
  private origin: string | undefined;
  private status = 0;
  private firstChunkAt = 0;
  private lastChunkAt = 0;
  private intervals: number[] | undefined;
  private head: Buffer | undefined;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  private all: Buffer[] | undefined;
  private completed = false;
  private transportError: unknown;
  private error: unknown;
  private resends = 0;
  private ended = false;
  private endsWithTransport = false;

  constructor(
    private readonly telemetry: ClientTelemetry,
    private readonly operation: string,
    start: CallStart,
  ) {
    const body =
      typeof start.body === 'object' && start.body !== null ? (start.body as RequestFields) : undefined;
    this.requestModel = typeof body?.model === 'string' ? body.model : undefined;
    this.stream = start.stream;
    this.timesChunks = start.stream && telemetry.chunkTiming !== 'off';
    this.origin = start.origin;
    this.joined = start.span !== undefined;
    const attributes: Attributes = {
      'gen_ai.operation.name': operation,
      'gen_ai.provider.name': telemetry.providerName,
    };
    if (this.requestModel !== undefined) attributes['gen_ai.request.model'] = this.requestModel;
    if (body !== undefined) requestAttributes(body, attributes);
    if (telemetry.captureContent) {
      this.input = body;
      this.all = [];
    }
    if (this.joined) {
      // The caller's span is a server span: its `server.*` are its own address, and it has the request id already.
      // The request's attributes go on at once: its owner may end it before the call's end (a client that left).
      this.span = start.span as Span;
      if (this.span.isRecording()) this.span.setAttributes(attributes);
    } else {
      if (start.requestId !== undefined) attributes['vllm_kit.request_id'] = start.requestId;
      if (start.origin !== undefined) serverAttributes(telemetry.server(start.origin), attributes);
      const name = this.requestModel === undefined ? operation : `${operation} ${this.requestModel}`;
      this.span = telemetry.startSpan(name, attributes, start.parent);
    }
    this.active = !telemetry.idle(this.span);
  }

  /** `traceparent` (and `tracestate`) for the upstream request, as undici's flat header list; none when invalid. */
  traceHeaders(): string[] | undefined {
    const context = this.span.spanContext();
    if (!this.telemetry.api.trace.isSpanContextValid(context)) return undefined;
    const flags = (context.traceFlags & 1) === 1 ? '01' : '00';
    const headers = ['traceparent', `00-${context.traceId}-${context.spanId}-${flags}`];
    const state = context.traceState?.serialize();
    if (state) headers.push('tracestate', state);
    return headers;
  }

  /** The replica the router chose for this attempt. */
  setOrigin(origin: string): void {
    if (origin === this.origin) return;
    this.origin = origin;
    if (this.joined) return;
    const server = this.telemetry.server(origin);
    this.span.setAttributes({ 'server.address': server.address, 'server.port': server.port });
  }

  /** For `fetch`, which has no end of its own: the span ends with the response's last byte or its failure. */
  endWithTransport(): void {
    this.endsWithTransport = true;
  }

  /** A new attempt begins: what the last one received is forgotten. */
  attempt(): void {
    this.status = 0;
    this.head = undefined;
    this.tail = [];
    this.tailBytes = 0;
    this.completed = false;
    this.transportError = undefined;
    this.intervals = undefined;
    this.firstChunkAt = 0;
    if (this.all !== undefined) this.all = [];
  }

  onHeaders(status: number): void {
    this.status = status;
  }

  onData(chunk: Buffer): void {
    if (!this.active) return;
    const now = performance.now();
    if (this.firstChunkAt === 0) {
      this.firstChunkAt = now;
      this.head = chunk.length > HEAD_BYTES ? chunk.subarray(0, HEAD_BYTES) : chunk;
    } else if (this.timesChunks) {
      (this.intervals ??= []).push(now - this.lastChunkAt);
    }
    this.lastChunkAt = now;
    this.tail.push(chunk);
    this.tailBytes += chunk.length;
    while (this.tail.length > 1 && this.tailBytes - this.tail[0]!.length >= TAIL_BYTES)
      this.tailBytes -= this.tail.shift()!.length;
    this.all?.push(chunk);
  }

  onComplete(): void {
    this.completed = true;
    if (this.endsWithTransport) this.end();
  }

  /** The attempt failed in transport (after its headers, or for good). */
  onTransportError(error: unknown): void {
    this.transportError ??= error;
    if (this.endsWithTransport) this.end(error);
  }

  /** undici's keep-alive race: the request is sent again at once on another socket. */
  replayed(error: unknown): void {
    this.resends++;
    this.span.addEvent('replay', {
      'error.type': errorType(error),
      'vllm_kit.reason': 'the server closed a reused keep-alive socket before answering',
    });
  }

  /** A retry after a failed attempt (`status`, or a connection failure). */
  retried(attempt: number, reason: number | unknown): void {
    this.resends++;
    this.span.addEvent('retry', {
      'vllm_kit.retry.attempt': attempt + 1,
      'error.type': typeof reason === 'number' ? String(reason) : errorType(reason),
    });
  }

  /** The call failed with this error (what the caller receives). */
  fail(error: unknown): void {
    this.error ??= error;
  }

  /**
   * Ends the span and records the metrics, once. `abortReason` is the call's abort reason when it was aborted: a
   * response that did not complete ended with it (or, with none, was abandoned by its reader).
   */
  end(abortReason?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    const span = this.span;
    if (!this.active) {
      if (!this.joined) span.end();
      return;
    }
    const now = performance.now();
    let error = this.error;
    if (error === undefined && !this.completed) {
      // undici fails a body its reader destroyed with UND_ERR_ABORTED: that is the reader leaving, not a failure.
      const transport = this.transportError;
      const destroyed = (transport as { code?: unknown } | undefined)?.code === 'UND_ERR_ABORTED';
      error = abortReason ?? (transport === undefined || destroyed ? ABANDONED : transport);
    }
    let type = error === undefined ? undefined : errorType(error);
    if (type === undefined && this.status >= 400) type = String(this.status);
    const response = this.status >= 200 && this.status < 300 ? this.readResponse() : undefined;
    const spanAttributes: Attributes = {};
    if (response?.model !== undefined) spanAttributes['gen_ai.response.model'] = response.model;
    if (response?.id !== undefined) spanAttributes['gen_ai.response.id'] = response.id;
    if (response?.finishReasons !== undefined)
      spanAttributes['gen_ai.response.finish_reasons'] = response.finishReasons;
    const usage = response?.usage;
    if (usage?.input !== undefined) spanAttributes['gen_ai.usage.input_tokens'] = usage.input;
    // An embedding has no output tokens (vLLM reports completion_tokens: 0 for it).
    if (usage?.output !== undefined && this.operation === 'embeddings') usage.output = undefined;
    if (usage?.output !== undefined) spanAttributes['gen_ai.usage.output_tokens'] = usage.output;
    const ttfc =
      this.stream && this.firstChunkAt !== 0 ? (this.firstChunkAt - this.startedAt) / 1000 : undefined;
    if (ttfc !== undefined) spanAttributes['gen_ai.response.time_to_first_chunk'] = ttfc;
    if (this.resends > 0) spanAttributes['http.request.resend_count'] = this.resends;
    if (this.all !== undefined) this.captureContent(spanAttributes);

    const instruments = this.telemetry.metrics();
    // The metrics' attributes, shared by every call of the same shape (made once, not per call).
    const shape = this.telemetry.metricAttributes(
      this.operation,
      this.requestModel,
      response?.model,
      this.origin,
      type,
    );
    const attributes = shape.call;
    if (usage?.input !== undefined) instruments.tokens.record(usage.input, shape.input);
    if (usage?.output !== undefined) instruments.tokens.record(usage.output, shape.output);
    if (ttfc !== undefined) instruments.timeToFirstChunk.record(ttfc, attributes);
    const intervals = this.intervals;
    if (intervals !== undefined) {
      if (this.telemetry.chunkTiming === 'each') {
        for (const ms of intervals) instruments.timePerOutputChunk.record(ms / 1000, attributes);
      } else {
        let sum = 0;
        for (const ms of intervals) sum += ms;
        instruments.timePerOutputChunk.record(sum / intervals.length / 1000, attributes);
      }
    }
    // A joined span's outcome is its owner's to tell (a server span's error is its own answer's, not the upstream's).
    if (type !== undefined && !this.joined) {
      spanAttributes['error.type'] = type;
      span.setStatus({
        code: this.telemetry.api.SpanStatusCode.ERROR,
        message: error instanceof Error ? error.message : `HTTP ${this.status}`,
      });
    }
    instruments.duration.record((now - this.startedAt) / 1000, attributes);
    if (this.joined) {
      if (span.isRecording()) span.setAttributes(spanAttributes);
      return;
    }
    span.setAttributes(spanAttributes);
    span.end();
  }

  /** Model, id, finish reasons and usage, from the response's first and last bytes (searched as bytes). */
  private readResponse(): ResponseFields {
    const fields: ResponseFields = {};
    const head = this.head;
    if (head !== undefined) {
      fields.model = stringField(head, MODEL_KEY);
      fields.id = stringField(head, ID_KEY);
    }
    const chunks = this.tail;
    if (chunks.length === 0) return fields;
    // The usage and the finish reason are in the last chunks (a stream's finish event, its usage event, then
    // `[DONE]`): join only as many as needed.
    let tail = chunks[chunks.length - 1]!;
    for (
      let i = chunks.length - 2;
      i >= 0 && (tail.lastIndexOf(USAGE_BYTES) === -1 || tail.lastIndexOf(FINISH_REASON_KEY) === -1);
      i--
    )
      tail = Buffer.concat([chunks[i]!, tail]);
    const usageText = lastUsageText(tail.toString('latin1'));
    const usage = usageText === undefined ? undefined : parseUsage(usageText);
    if (usage !== undefined) fields.usage = { input: usage.prompt, output: usage.completion };
    const reasons = finishReasons(tail);
    if (reasons !== undefined) fields.finishReasons = reasons;
    return fields;
  }

  /** `gen_ai.input.messages` / `gen_ai.output.messages` (only with `captureContent`). */
  private captureContent(attributes: Attributes): void {
    const input = inputMessages(this.input);
    if (input !== undefined) attributes['gen_ai.input.messages'] = safeJsonStringify(input);
    if (this.status < 200 || this.status >= 300 || this.all === undefined) return;
    const output = outputMessages(Buffer.concat(this.all).toString('utf8'), this.stream);
    if (output !== undefined) attributes['gen_ai.output.messages'] = safeJsonStringify(output);
  }
}

/** The error of a response whose reader stopped before its end (a `break` out of a stream, a destroyed body). */
const ABANDONED = { code: 'cancelled' };

/** `error.type`: the status of an HTTP error, the stable code of a vllm-kit error, else the error's code or name. */
export function errorType(error: unknown): string {
  if (error instanceof UpstreamHttpError) return String(error.status);
  if (isVllmKitError(error)) return error.code;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code !== '') return code;
  const name = (error as { name?: unknown } | null)?.name;
  return typeof name === 'string' && name !== '' ? name : '_OTHER';
}

interface RequestFields {
  model?: unknown;
  max_tokens?: unknown;
  max_completion_tokens?: unknown;
  temperature?: unknown;
  top_p?: unknown;
  top_k?: unknown;
  frequency_penalty?: unknown;
  presence_penalty?: unknown;
  seed?: unknown;
  n?: unknown;
  stop?: unknown;
}

function requestAttributes(body: RequestFields, attributes: Attributes): void {
  const maxTokens = body.max_tokens ?? body.max_completion_tokens;
  if (typeof maxTokens === 'number') attributes['gen_ai.request.max_tokens'] = maxTokens;
  if (typeof body.temperature === 'number') attributes['gen_ai.request.temperature'] = body.temperature;
  if (typeof body.top_p === 'number') attributes['gen_ai.request.top_p'] = body.top_p;
  if (typeof body.top_k === 'number') attributes['gen_ai.request.top_k'] = body.top_k;
  if (typeof body.frequency_penalty === 'number')
    attributes['gen_ai.request.frequency_penalty'] = body.frequency_penalty;
  if (typeof body.presence_penalty === 'number')
    attributes['gen_ai.request.presence_penalty'] = body.presence_penalty;
  if (typeof body.seed === 'number') attributes['gen_ai.request.seed'] = body.seed;
  if (typeof body.n === 'number' && body.n !== 1) attributes['gen_ai.request.choice.count'] = body.n;
  if (typeof body.stop === 'string') attributes['gen_ai.request.stop_sequences'] = [body.stop];
  else if (Array.isArray(body.stop) && body.stop.every((s) => typeof s === 'string'))
    attributes['gen_ai.request.stop_sequences'] = body.stop as string[];
}

function serverAttributes(server: { address: string; port: number }, attributes: Attributes): void {
  attributes['server.address'] = server.address;
  attributes['server.port'] = server.port;
}

interface ResponseFields {
  model?: string | undefined;
  id?: string | undefined;
  finishReasons?: string[];
  usage?: { input?: number | undefined; output?: number | undefined } | undefined;
}

const MODEL_KEY = Buffer.from('"model":');
const ID_KEY = Buffer.from('"id":');
const USAGE_BYTES = Buffer.from(USAGE_KEY);
const FINISH_REASON_KEY = Buffer.from('"finish_reason":');

/** The string value of the first `"key": "…"` in the bytes (a top-level field, given the response's field order). */
function stringField(bytes: Buffer, key: Buffer): string | undefined {
  const at = bytes.indexOf(key);
  if (at === -1) return undefined;
  let start = at + key.length;
  while (bytes[start] === 32 /* space */) start++;
  if (bytes[start] !== 34 /* " */) return undefined;
  let end = start + 1;
  let escaped = false;
  for (; end < bytes.length; end++) {
    const c = bytes[end]!;
    if (c === 92 /* \ */) escaped = true;
    else if (c === 34 && bytes[end - 1] !== 92) break;
  }
  if (end >= bytes.length) return undefined;
  const text = bytes.toString('utf8', start + 1, end);
  return escaped ? unescapeJson(text) : text;
}

/** Every non-null `finish_reason` in the bytes, each once, in order. */
function finishReasons(bytes: Buffer): string[] | undefined {
  let reasons: string[] | undefined;
  for (let at = bytes.indexOf(FINISH_REASON_KEY); at !== -1; at = bytes.indexOf(FINISH_REASON_KEY, at + 1)) {
    const reason = stringField(bytes.subarray(at), FINISH_REASON_KEY);
    if (reason !== undefined && !(reasons ??= []).includes(reason)) reasons.push(reason);
  }
  return reasons;
}

function unescapeJson(text: string): string {
  if (!text.includes('\\')) return text;
  try {
    return JSON.parse(`"${text}"`) as string;
  } catch {
    return text;
  }
}

interface MessagePart {
  type: 'text';
  content: string;
}

/** The request's messages (or prompt, or input) in the conventions' shape: role + parts. */
function inputMessages(body: unknown): unknown[] | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const { messages, prompt, input } = body as { messages?: unknown; prompt?: unknown; input?: unknown };
  if (Array.isArray(messages)) {
    return messages.map((message: { role?: unknown; content?: unknown }) => ({
      role: typeof message?.role === 'string' ? message.role : 'user',
      parts: contentParts(message?.content),
    }));
  }
  const text = prompt ?? input;
  if (text === undefined) return undefined;
  return [{ role: 'user', parts: contentParts(text) }];
}

function contentParts(content: unknown): MessagePart[] {
  if (typeof content === 'string') return [{ type: 'text', content }];
  if (Array.isArray(content)) {
    return content.map((part: { type?: unknown; text?: unknown }) =>
      typeof part === 'string'
        ? { type: 'text', content: part }
        : { type: 'text', content: typeof part?.text === 'string' ? part.text : safeJsonStringify(part) },
    );
  }
  return content === undefined || content === null
    ? []
    : [{ type: 'text', content: safeJsonStringify(content) }];
}

interface Choice {
  index?: number;
  message?: { role?: string; content?: unknown };
  delta?: { role?: string; content?: unknown };
  text?: unknown;
  finish_reason?: unknown;
}

/** The response's choices in the conventions' shape, from a JSON body or a stream's events. */
function outputMessages(text: string, stream: boolean): unknown[] | undefined {
  const choices = new Map<number, { content: string; finishReason: unknown }>();
  const add = (choice: Choice) => {
    const index = typeof choice.index === 'number' ? choice.index : 0;
    const entry = choices.get(index) ?? { content: '', finishReason: undefined };
    const content = choice.message?.content ?? choice.delta?.content ?? choice.text;
    if (typeof content === 'string') entry.content += content;
    if (choice.finish_reason !== undefined && choice.finish_reason !== null)
      entry.finishReason = choice.finish_reason;
    choices.set(index, entry);
  };
  try {
    if (stream) {
      for (const line of text.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]' || data === '') continue;
        for (const choice of (JSON.parse(data) as { choices?: Choice[] }).choices ?? []) add(choice);
      }
    } else {
      for (const choice of (JSON.parse(text) as { choices?: Choice[] }).choices ?? []) add(choice);
    }
  } catch {
    return undefined;
  }
  if (choices.size === 0) return undefined;
  return [...choices.entries()]
    .sort(([a], [b]) => a - b)
    .map(([, choice]) => ({
      role: 'assistant',
      parts: [{ type: 'text', content: choice.content }],
      finish_reason: choice.finishReason ?? null,
    }));
}
