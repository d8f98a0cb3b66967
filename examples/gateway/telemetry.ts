// OpenTelemetry for the gateway: with OTEL_EXPORTER_OTLP_ENDPOINT (or a per-signal endpoint) set, the OpenTelemetry
// Node SDK exports traces and metrics over OTLP, configured by the standard OTEL_* variables (protocol, headers,
// sampler, service name, export intervals). Each request gets a server span (HTTP semantic conventions) that the client
// records its GenAI call into — one span per request, half the SDK's and the export's work of a server span parenting a
// client span that would tell the same story (OTEL_GENAI_UPSTREAM_SPAN=true keeps the two). Off otherwise: then not one
// OpenTelemetry module is loaded.
import type { IncomingMessage } from 'node:http';
import type * as OpenTelemetryApi from '@opentelemetry/api';
import type { Sampler } from '@opentelemetry/sdk-trace-base';
import type { Logger } from 'pino';

type Env = Record<string, string | undefined>;

/**
 * A request's server span: the upstream call is recorded into it (`span`, one span per request) or, with
 * OTEL_GENAI_UPSTREAM_SPAN=true, gets a child span of its own under `context`; `end` closes it with the outcome.
 */
export interface RequestSpan {
  readonly context: unknown;
  /** The span the client records the GenAI call into; undefined when the call gets its own child span. */
  readonly span: unknown;
  /** `status` when a response went out; `errorType` when the request failed (a 5xx, a cut stream, a client gone). */
  end(status: number | undefined, errorType: string | undefined): void;
}

export interface GatewayTelemetry {
  /** The API module, handed to the client so that it need not look it up. */
  readonly api: object;
  startRequest(req: IncomingMessage, path: string, route: string | undefined, requestId: string): RequestSpan;
  /** Flushes what is buffered (spans, the last metrics) and stops exporting. */
  shutdown(): Promise<void>;
}

/** On when an OTLP endpoint is configured, unless OTEL_SDK_DISABLED says otherwise. */
export function telemetryConfigured(env: Env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? '').toLowerCase() === 'true') return false;
  return [
    'OTEL_EXPORTER_OTLP_ENDPOINT',
    'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
    'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT',
  ].some((name) => (env[name] ?? '') !== '');
}

/** Longest wait for the last export on shutdown: a collector that is down must not hold the drain. */
const SHUTDOWN_TIMEOUT_MS = 5000;

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/** Starts the SDK (traces and metrics over OTLP) for this process. */
export async function startTelemetry(
  env: Env,
  logger: Logger,
  options: { upstreamSpan: boolean },
): Promise<GatewayTelemetry> {
  const api = await import('@opentelemetry/api');
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const namedByEnv =
    (env.OTEL_SERVICE_NAME ?? '') !== '' || /(^|,)\s*service\.name=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '');
  const sampler = await defaultSampler(env);
  const sdk = new NodeSDK({
    ...(namedByEnv ? {} : { serviceName: 'vllm-kit-gateway' }),
    ...(sampler === undefined ? {} : { sampler }),
    // No context manager: the gateway hands each request's context to the client itself. The default one
    // (AsyncLocalStorage) would, on Node 20, put a hook on every promise of every request once anything used it.
    contextManager: null as never,
    // The gateway logs with pino to stdout; no OpenTelemetry log pipeline.
    logRecordProcessors: [],
  });
  sdk.start();
  logDiagnostics(api, logger);
  return {
    api,
    startRequest: requestSpans(api, options.upstreamSpan),
    async shutdown() {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, SHUTDOWN_TIMEOUT_MS);
        timer.unref();
      });
      await Promise.race([sdk.shutdown().catch(() => undefined), timeout]);
      clearTimeout(timer);
    },
  };
}

/** The share of traces started here that are sampled when OTEL_TRACES_SAMPLER is not set. */
export const DEFAULT_TRACE_RATIO = 0.1;

/**
 * The gateway's sampler when OTEL_TRACES_SAMPLER is not set: parent-based, a caller's decision is followed (its
 * sampled traces are whole), and DEFAULT_TRACE_RATIO (or OTEL_TRACES_SAMPLER_ARG) of the traces that start here. Every
 * request traced costs about a quarter of the gateway's throughput on a fast upstream (docs/performance.md);
 * OTEL_TRACES_SAMPLER=parentbased_always_on asks for it. Undefined: the SDK's own choice from the environment.
 */
export async function defaultSampler(env: Env): Promise<Sampler | undefined> {
  if ((env.OTEL_TRACES_SAMPLER ?? '') !== '') return undefined;
  const { ParentBasedSampler, TraceIdRatioBasedSampler } = await import('@opentelemetry/sdk-trace-base');
  const arg = Number(env.OTEL_TRACES_SAMPLER_ARG ?? '');
  const ratio =
    (env.OTEL_TRACES_SAMPLER_ARG ?? '') !== '' && arg >= 0 && arg <= 1 ? arg : DEFAULT_TRACE_RATIO;
  return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) });
}

/**
 * The SDK reports export failures through its diagnostic logger: route warnings to ours (never more than once a
 * minute per message, a collector that is down would otherwise fill the log).
 */
function logDiagnostics(api: typeof OpenTelemetryApi, logger: Logger): void {
  const lastWarned = new Map<string, number>();
  const warnOnce = (message: string): void => {
    const now = Date.now();
    if ((lastWarned.get(message) ?? 0) > now - 60_000) return;
    lastWarned.set(message, now);
    logger.warn({ otel: message }, 'opentelemetry');
  };
  api.diag.setLogger(
    { error: warnOnce, warn: warnOnce, info: () => {}, debug: () => {}, verbose: () => {} },
    api.DiagLogLevel.WARN,
  );
}

/** A server span per request, and the conventions' request-duration histogram. */
function requestSpans(api: typeof OpenTelemetryApi, upstreamSpan: boolean): GatewayTelemetry['startRequest'] {
  const tracer = api.trace.getTracer('vllm-kit-gateway');
  const duration = api.metrics.getMeter('vllm-kit-gateway').createHistogram('http.server.request.duration', {
    description: 'Duration of HTTP server requests',
    unit: 's',
    advice: { explicitBucketBoundaries: DURATION_BUCKETS },
  });
  const { SpanKind, SpanStatusCode, ROOT_CONTEXT, propagation, trace } = api;
  const shapes = new MetricShapes();
  return (req, path, route, requestId) => {
    const started = performance.now();
    const method = req.method ?? 'GET';
    // An incoming traceparent continues the caller's trace (the propagators of OTEL_PROPAGATORS read it).
    const parent = propagation.extract(ROOT_CONTEXT, req.headers);
    // The conventions' required attributes, the route and the request id. Not the client's address or user agent:
    // personal data has no place in traces by default (and every attribute is paid for on every span exported).
    const attributes: OpenTelemetryApi.Attributes = {
      'http.request.method': method,
      'url.path': path,
      'url.scheme': 'http',
      'vllm_kit.request_id': requestId,
    };
    if (route !== undefined) attributes['http.route'] = route;
    const span = tracer.startSpan(
      route === undefined ? method : `${method} ${route}`,
      { kind: SpanKind.SERVER, attributes },
      parent,
    );
    return {
      context: trace.setSpan(parent, span),
      span: upstreamSpan ? undefined : span,
      end(status, errorType) {
        // A server span is an error for 5xx (the conventions leave 4xx to the client), or with no answer at all.
        const type = errorType ?? (status !== undefined && status >= 500 ? String(status) : undefined);
        if (span.isRecording()) {
          if (status !== undefined) span.setAttribute('http.response.status_code', status);
          if (type !== undefined) {
            span.setAttribute('error.type', type);
            span.setStatus({ code: SpanStatusCode.ERROR });
          }
        }
        duration.record((performance.now() - started) / 1000, shapes.of(method, route, status, type));
        span.end();
      },
    };
  };
}

/** Distinct attribute sets of the request-duration metric kept (beyond it the cache starts over). */
const MAX_SHAPES = 1000;

/**
 * The request-duration metric's attributes, one object per distinct shape (method, route, status, error): they take
 * few values, and a cached object spares building one per request. Bounded, as the metric's own cardinality is.
 */
class MetricShapes {
  private readonly shapes = new Map<string, OpenTelemetryApi.Attributes>();

  of(
    method: string,
    route: string | undefined,
    status: number | undefined,
    errorType: string | undefined,
  ): OpenTelemetryApi.Attributes {
    const key = `${method} ${route} ${status} ${errorType}`;
    let attributes = this.shapes.get(key);
    if (attributes === undefined) {
      attributes = { 'http.request.method': method, 'url.scheme': 'http' };
      if (route !== undefined) attributes['http.route'] = route;
      if (status !== undefined) attributes['http.response.status_code'] = status;
      if (errorType !== undefined) attributes['error.type'] = errorType;
      if (this.shapes.size >= MAX_SHAPES) this.shapes.clear();
      this.shapes.set(key, attributes);
    }
    return attributes;
  }
}
