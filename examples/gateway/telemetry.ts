// OpenTelemetry for the gateway: with OTEL_EXPORTER_OTLP_ENDPOINT (or a per-signal endpoint) set, the OpenTelemetry
// Node SDK exports traces and metrics over OTLP, configured by the standard OTEL_* variables (protocol, headers,
// sampler, service name, export intervals). Each request gets a server span (HTTP semantic conventions) that parents
// the client's GenAI span. Off otherwise: then not one OpenTelemetry module is loaded.
import type { IncomingMessage } from 'node:http';
import type * as OpenTelemetryApi from '@opentelemetry/api';
import type { Logger } from 'pino';

type Env = Record<string, string | undefined>;

/** A request's server span: its context parents the upstream call, `end` closes it with the outcome. */
export interface RequestSpan {
  readonly context: unknown;
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
export async function startTelemetry(env: Env, logger: Logger): Promise<GatewayTelemetry> {
  const api = await import('@opentelemetry/api');
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const namedByEnv =
    (env.OTEL_SERVICE_NAME ?? '') !== '' || /(^|,)\s*service\.name=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '');
  const sdk = new NodeSDK({
    ...(namedByEnv ? {} : { serviceName: 'vllm-kit-gateway' }),
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
    startRequest: requestSpans(api),
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
function requestSpans(api: typeof OpenTelemetryApi): GatewayTelemetry['startRequest'] {
  const tracer = api.trace.getTracer('vllm-kit-gateway');
  const duration = api.metrics.getMeter('vllm-kit-gateway').createHistogram('http.server.request.duration', {
    description: 'Duration of HTTP server requests',
    unit: 's',
    advice: { explicitBucketBoundaries: DURATION_BUCKETS },
  });
  const { SpanKind, SpanStatusCode, ROOT_CONTEXT, propagation, trace } = api;
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
      end(status, errorType) {
        const metricAttributes: OpenTelemetryApi.Attributes = {
          'http.request.method': method,
          'url.scheme': 'http',
        };
        if (route !== undefined) metricAttributes['http.route'] = route;
        if (status !== undefined) {
          span.setAttribute('http.response.status_code', status);
          metricAttributes['http.response.status_code'] = status;
        }
        // A server span is an error for 5xx (the conventions leave 4xx to the client), or with no answer at all.
        const type = errorType ?? (status !== undefined && status >= 500 ? String(status) : undefined);
        if (type !== undefined) {
          span.setAttribute('error.type', type);
          span.setStatus({ code: SpanStatusCode.ERROR });
          metricAttributes['error.type'] = type;
        }
        duration.record((performance.now() - started) / 1000, metricAttributes);
        span.end();
      },
    };
  };
}
