// Prometheus metrics of one worker (prom-client); the primary aggregates them over workers for GET /metrics.
import client from 'prom-client';
import type { ConcurrencyLimiter, TokenCache, VllmClient } from 'vllm-kit';

export interface GatewayMetrics {
  registry: client.Registry;
  requests: client.Counter<'route' | 'status'>;
  duration: client.Histogram<'route'>;
  ttft: client.Histogram<'route'>;
  rateLimited: client.Counter;
  /** Counts a finished request and observes its duration (label children cached: no label hashing per request). */
  observeRequest(route: string, status: number, seconds: number): void;
  observeTtft(route: string, seconds: number): void;
  /** How long a request waited for a concurrency slot. */
  observeQueueWait(seconds: number): void;
  /** Counts an upstream failure by kind. */
  upstreamFailure(kind: UpstreamFailureKind): void;
}

/**
 * `unreachable` (502 before a response), `timeout` (504), `mid_response` (the upstream cut a response that had
 * begun), `credentials` (the upstream refused the gateway's VLLM_API_KEY).
 */
export type UpstreamFailureKind = 'unreachable' | 'timeout' | 'mid_response' | 'credentials';

/** `make(key)` once per key, then the cached value. */
function cached<T>(make: (key: string) => T): (key: string) => T {
  const cache = new Map<string, T>();
  return (key) => {
    let value = cache.get(key);
    if (value === undefined) {
      value = make(key);
      cache.set(key, value);
    }
    return value;
  };
}

export function createMetrics(sources: {
  client: VllmClient;
  tokens: TokenCache<unknown>;
  limiter: ConcurrencyLimiter;
}): GatewayMetrics {
  // The global registry: prom-client's cluster aggregation reads it in every worker.
  const registry = client.register;
  registry.clear();
  const requests = new client.Counter({
    name: 'gateway_requests_total',
    help: 'Requests by route and status.',
    labelNames: ['route', 'status'] as const,
  });
  const duration = new client.Histogram({
    name: 'gateway_request_duration_seconds',
    help: 'Request latency, to the last byte.',
    labelNames: ['route'] as const,
    buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
  });
  const ttft = new client.Histogram({
    name: 'gateway_time_to_first_byte_seconds',
    help: 'Time to the first upstream body byte (the first token of a stream).',
    labelNames: ['route'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  const rateLimited = new client.Counter({
    name: 'gateway_rate_limited_total',
    help: 'Requests refused with 429.',
  });
  new client.Gauge({
    name: 'gateway_upstream_connections',
    help: 'Upstream pool connections by state.',
    labelNames: ['upstream', 'state'] as const,
    collect() {
      this.reset();
      for (const u of sources.client.stats().upstreams) {
        this.set({ upstream: u.url, state: 'connected' }, u.connected);
        this.set({ upstream: u.url, state: 'free' }, u.free);
        this.set({ upstream: u.url, state: 'running' }, u.running);
        this.set({ upstream: u.url, state: 'pending' }, u.pending);
      }
    },
  });
  // A counter (prom-client sums counters across workers): each scrape adds what the cache counted since the last one.
  const seen = { hit: 0, miss: 0, negative_hit: 0 };
  new client.Counter({
    name: 'gateway_token_cache_total',
    help: 'Token-cache lookups by outcome.',
    labelNames: ['outcome'] as const,
    collect() {
      const stats = sources.tokens.stats();
      const now = { hit: stats.hits, miss: stats.misses, negative_hit: stats.negativeHits };
      for (const outcome of ['hit', 'miss', 'negative_hit'] as const) {
        this.inc({ outcome }, now[outcome] - seen[outcome]);
        seen[outcome] = now[outcome];
      }
    },
  });
  new client.Gauge({
    name: 'gateway_queue_depth',
    help: 'Requests waiting for an upstream slot.',
    collect() {
      this.set(sources.limiter.pendingCount);
    },
  });
  // A histogram, not an average: averages cannot be summed across workers, and buckets show the tail.
  const queueWait = new client.Histogram({
    name: 'gateway_queue_wait_seconds',
    help: 'Time requests waited for an upstream slot.',
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  const upstreamFailures = new client.Counter({
    name: 'gateway_upstream_failures_total',
    help: 'Upstream failures by kind: unreachable, timeout, mid_response, credentials.',
    labelNames: ['kind'] as const,
  });
  for (const kind of ['unreachable', 'timeout', 'mid_response', 'credentials'] as const) {
    upstreamFailures.inc({ kind }, 0);
  }
  // Routes and statuses are a small closed set (unknown paths are labelled "unknown"), so the caches stay small.
  const requestCounter = cached((route) => cached((status) => requests.labels(route, status)));
  const durationOf = cached((route) => duration.labels(route));
  const ttftOf = cached((route) => ttft.labels(route));
  return {
    registry,
    requests,
    duration,
    ttft,
    rateLimited,
    observeRequest(route, status, seconds) {
      requestCounter(route)(String(status)).inc();
      durationOf(route).observe(seconds);
    },
    observeTtft(route, seconds) {
      ttftOf(route).observe(seconds);
    },
    observeQueueWait(seconds) {
      queueWait.observe(seconds);
    },
    upstreamFailure(kind) {
      upstreamFailures.inc({ kind });
    },
  };
}
