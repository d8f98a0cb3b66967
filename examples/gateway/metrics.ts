// Prometheus metrics of one worker (prom-client); the primary aggregates them over workers for GET /metrics.
// The per-request series (requests, durations, time to first byte, queue wait) are kept in lean series of our own and
// rendered through prom-client's registry at scrape time: prom-client's own counters and histograms validate and hash
// their labels on every observation, several µs per request at the gateway's rates.
import client from 'prom-client';
import type { ConcurrencyLimiter, PermitPool, TokenCache, VllmClient } from 'vllm-kit';

export interface GatewayMetrics {
  /** Counts a finished request and observes its duration. */
  observeRequest(route: string, status: number, seconds: number): void;
  observeTtft(route: string, seconds: number): void;
  /** How long a request waited for a concurrency slot. */
  observeQueueWait(seconds: number): void;
  /** Counts a request refused with 429. */
  rateLimited(): void;
  /** Counts an upstream failure by kind. */
  upstreamFailure(kind: UpstreamFailureKind): void;
  /** Adds a response's tokens to the totals, its key's (by key name: never the key itself) and its model's. */
  llmTokens(keyName: string, prompt: number, completion: number, model?: string): void;
  /** Counts a request that reached a replica, by the model it named and its outcome (ok, client_error, server_error). */
  observeModel(model: string, status: number): void;
  /** Counts a 2xx answer whose usage was missing (or unreadable) and was counted from its content instead. */
  usageMissing(reason: 'absent' | 'malformed' | 'estimated'): void;
  /** Counts a request refused by its key's budget. */
  budgetRefused(type: 'requests' | 'tokens'): void;
}

/**
 * `unreachable` (502 before a response), `timeout` (504), `mid_response` (the upstream cut a response that had
 * begun), `credentials` (the upstream refused the gateway's VLLM_API_KEY).
 */
export type UpstreamFailureKind = (typeof UPSTREAM_FAILURE_KINDS)[number];

/** One sample as prom-client's registry renders and its cluster aggregation sums them. */
interface Sample {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

/**
 * A counter or histogram with its series kept by label values, observed in O(1) without label validation or
 * hashing, and handed to prom-client's registry (which calls `get()`) as its own metrics are.
 */
class LeanMetric {
  readonly aggregator = 'sum';
  private readonly series = new Map<
    string,
    { labels: Record<string, string>; counts: number[]; sum: number }
  >();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'histogram',
    private readonly buckets: readonly number[] = [],
  ) {}

  /** The series of one set of labels (`key` identifies it: callers cache the returned series). */
  seriesFor(key: string, labels: Record<string, string>): { counts: number[]; sum: number } {
    let series = this.series.get(key);
    if (series === undefined) {
      series = { labels, counts: new Array<number>(this.buckets.length + 1).fill(0), sum: 0 };
      this.series.set(key, series);
    }
    return series;
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: Sample[] } {
    const values: Sample[] = [];
    for (const { labels, counts, sum } of this.series.values()) {
      if (this.type === 'counter') {
        values.push({ labels, value: sum });
        continue;
      }
      let cumulative = 0;
      for (let i = 0; i < this.buckets.length; i++) {
        cumulative += counts[i]!;
        values.push({
          labels: { ...labels, le: this.buckets[i]! },
          value: cumulative,
          metricName: `${this.name}_bucket`,
        });
      }
      cumulative += counts[this.buckets.length]!;
      values.push({
        labels: { ...labels, le: '+Inf' },
        value: cumulative,
        metricName: `${this.name}_bucket`,
      });
      values.push({ labels, value: sum, metricName: `${this.name}_sum` });
      values.push({ labels, value: cumulative, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** Zeroes every series (callers keep their references to them). */
  reset(): void {
    for (const series of this.series.values()) {
      series.counts.fill(0);
      series.sum = 0;
    }
  }
}

/** A counter whose values are totals a piece keeps itself (its `stats()`), read when the registry is scraped. */
class TotalsCounter {
  readonly type = 'counter';
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly read: () => Sample[],
  ) {}
  get() {
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values: this.read(),
    };
  }
  reset(): void {}
}

/** What prom-client's registry needs of a metric: its name, help, type, how the primary aggregates it, and `get()`. */
interface CustomMetric {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'histogram';
  readonly aggregator: 'sum';
  get(): { name: string; help: string; type: string; aggregator: string; values: Sample[] };
}

/**
 * Registers a metric of our own. prom-client's `registerMetric` is typed for its own classes only, though the registry
 * (and its cluster aggregation) call no more than `CustomMetric` has: the one place that says so to the compiler.
 */
function registerCustom(registry: client.Registry, metric: CustomMetric): void {
  registry.registerMetric(metric as unknown as client.Metric);
}

/** Adds one observation to a histogram series. */
function observe(buckets: readonly number[], series: { counts: number[]; sum: number }, value: number): void {
  let i = 0;
  while (i < buckets.length && value > buckets[i]!) i++;
  series.counts[i]!++;
  series.sum += value;
}

const DURATION_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const QUEUE_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const UPSTREAM_FAILURE_KINDS = [
  'unreachable',
  'timeout',
  'mid_response',
  'credentials',
  'server_error',
] as const;

/** What the metrics read at scrape time. */
interface MetricSources {
  client: VllmClient;
  keyCache: Pick<TokenCache<unknown>, 'stats'>;
  concurrencyLimiter: ConcurrencyLimiter;
  permits?: PermitPool | undefined;
  /** Series by key name (`gateway_key_tokens_total`): only where the metrics are not public. */
  perKey?: boolean;
}

/**
 * The worker's metrics, in prom-client's global registry (its cluster aggregation reads it in every worker): the
 * per-request series this gateway observes, and the pieces' own figures read at scrape time.
 */
export function createMetrics(sources: MetricSources): GatewayMetrics {
  const registry = client.register;
  registry.clear();
  const lean = leanMetrics(registry, sources.perKey === true);
  registerClientMetrics(registry, sources);
  registerQueueMetrics(sources.concurrencyLimiter);
  if (sources.permits !== undefined) registerPermitMetrics(registry, sources.permits);
  return recorder(lean, sources.perKey === true);
}

/** The per-request series: name, help, type (and buckets). */
const LEAN_METRICS = {
  requests: ['gateway_requests_total', 'Requests by route and status.', 'counter'],
  duration: [
    'gateway_request_duration_seconds',
    'Request latency, to the last byte.',
    'histogram',
    DURATION_BUCKETS,
  ],
  ttft: [
    'gateway_time_to_first_byte_seconds',
    'Time to the first upstream body byte (the first token of a stream).',
    'histogram',
    TTFT_BUCKETS,
  ],
  queueWait: [
    'gateway_queue_wait_seconds',
    'Time requests waited for an upstream slot.',
    'histogram',
    QUEUE_BUCKETS,
  ],
  rateLimited: ['gateway_rate_limited_total', 'Requests refused with 429.', 'counter'],
  upstreamFailures: [
    'gateway_upstream_failures_total',
    'Upstream failures by kind: unreachable, timeout, mid_response, credentials.',
    'counter',
  ],
  tokens: ['gateway_tokens_total', 'Tokens used, by type (prompt, completion).', 'counter'],
  keyTokens: [
    'gateway_key_tokens_total',
    'Tokens used, by key name and type (prompt, completion); only with METRICS_PER_KEY.',
    'counter',
  ],
  usageMissing: [
    'gateway_usage_missing_total',
    'Answers without readable usage, charged from their content (reason: absent, malformed) or, cut before any answer, from the elapsed time (estimated).',
    'counter',
  ],
  modelRequests: [
    'gateway_model_requests_total',
    'Requests that reached a replica, by the model they named (an alias as named) and outcome (ok, client_error, server_error; a cut response is a server_error, a client that left a client_error).',
    'counter',
  ],
  modelTokens: [
    'gateway_model_tokens_total',
    'Tokens used, by model (as the request named it) and type (prompt, completion).',
    'counter',
  ],
  budgetRefusals: [
    'gateway_budget_refusals_total',
    "Requests refused by their key's budget, by limit (requests, tokens).",
    'counter',
  ],
} satisfies Record<string, ConstructorParameters<typeof LeanMetric>>;

/**
 * The per-request series (lean: observed in O(1), rendered at scrape time), registered. A histogram, not an average,
 * for the queue wait: averages cannot be summed across workers, and buckets show the tail.
 */
function leanMetrics(registry: client.Registry, perKey: boolean) {
  const made = {} as Record<keyof typeof LEAN_METRICS, LeanMetric>;
  for (const [name, definition] of Object.entries(LEAN_METRICS) as [
    keyof typeof LEAN_METRICS,
    ConstructorParameters<typeof LeanMetric>,
  ][]) {
    made[name] = new LeanMetric(...definition);
    // Series by key name only where the metrics are not public (METRICS_PER_KEY).
    if (name !== 'keyTokens' || perKey) registerCustom(registry, made[name]);
  }
  return made;
}

type LeanMetrics = ReturnType<typeof leanMetrics>;

/** The client's figures (connections, routing, adapter loads) and the key cache's, read at scrape time. */
function registerClientMetrics(registry: client.Registry, sources: MetricSources): void {
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
  // Totals the pieces keep themselves, read at scrape time (counters: the primary sums them across workers).
  registerCustom(
    registry,
    new TotalsCounter('gateway_token_cache_total', 'Token-cache lookups by outcome.', () => {
      const stats = sources.keyCache.stats();
      return [
        { labels: { outcome: 'hit' }, value: stats.hits },
        { labels: { outcome: 'miss' }, value: stats.misses },
        { labels: { outcome: 'negative_hit' }, value: stats.negativeHits },
      ];
    }),
  );
  // Per replica: keyed requests sent to the replica their key maps to, and those it took over (load bound, ejection).
  registerCustom(
    registry,
    new TotalsCounter(
      'gateway_upstream_routed_total',
      'Requests routed to each upstream by prefix routing: following their cached prefix (prefix), off it because its replica was over the load bound (fallback), or new conversations placed to balance the caches (placed).',
      () =>
        sources.client.stats().upstreams.flatMap((u) => [
          { labels: { upstream: u.url, how: 'prefix' }, value: u.prefixRouted },
          { labels: { upstream: u.url, how: 'fallback' }, value: u.fallbacks },
          { labels: { upstream: u.url, how: 'placed' }, value: u.placed },
        ]),
    ),
  );
  // On-demand LoRA loads (LORA_ADAPTERS), by adapter: sent, and of them failed.
  registerCustom(
    registry,
    new TotalsCounter(
      'gateway_adapter_loads_total',
      'LoRA adapter loads the gateway sent to replicas (POST /v1/load_lora_adapter), by adapter and outcome (ok, failed).',
      () =>
        Object.entries(sources.client.stats().adapterLoads).flatMap(([adapter, { sent, failed }]) => [
          { labels: { adapter, outcome: 'ok' }, value: sent - failed },
          { labels: { adapter, outcome: 'failed' }, value: failed },
        ]),
    ),
  );
}

/** The concurrency limiter's queue, by priority band and key. */
function registerQueueMetrics(limiter: ConcurrencyLimiter): void {
  new client.Gauge({
    name: 'gateway_queue_depth',
    help: 'Requests waiting for an upstream slot.',
    collect() {
      this.set(limiter.pendingCount);
    },
  });
  new client.Gauge({
    name: 'gateway_queue_waiting',
    help: 'Requests waiting for an upstream slot, by priority band (fair policy).',
    labelNames: ['priority'] as const,
    collect() {
      this.reset();
      for (const [priority, n] of Object.entries(limiter.stats().pendingByPriority))
        this.set({ priority }, n);
    },
  });
  new client.Gauge({
    name: 'gateway_queue_keys',
    help: 'API keys with requests waiting (the fair queue serves them in turn).',
    collect() {
      this.set(Object.keys(limiter.stats().pendingByKey).length);
    },
  });
}

/** The shared upstream permits (UPSTREAM_CONCURRENCY). */
function registerPermitMetrics(registry: client.Registry, permits: PermitPool): void {
  new client.Gauge({
    name: 'gateway_upstream_permits',
    help: 'Shared upstream permits (UPSTREAM_CONCURRENCY) held and waited for, by upstream.',
    labelNames: ['upstream', 'state'] as const,
    collect() {
      this.reset();
      for (const [upstream, r] of Object.entries(permits.stats().byResource)) {
        this.set({ upstream, state: 'held' }, r.held);
        this.set({ upstream, state: 'waiting' }, r.waiting);
      }
    },
  });
  new client.Gauge({
    name: 'gateway_upstream_permits_degraded',
    help: 'Workers whose permit store (primary or Redis) is failing: each holds its local share meanwhile.',
    collect() {
      this.set(permits.stats().degraded ? 1 : 0);
    },
  });
  registerCustom(
    registry,
    new TotalsCounter(
      'gateway_upstream_permits_fallback_total',
      'Permits granted from the local share while the permit store was failing.',
      () => [{ labels: {}, value: permits.stats().fallbackAcquired }],
    ),
  );
}

/** The functions the gateway observes with, over the lean series (made once per label value, then cached). */
function recorder(lean: LeanMetrics, perKey: boolean): GatewayMetrics {
  // Present from the start (at 0), so dashboards and alerts see them before the first event.
  const rateLimitedSeries = lean.rateLimited.seriesFor('', {});
  const failureSeries = seriesByValue(lean.upstreamFailures, 'kind', UPSTREAM_FAILURE_KINDS);
  const queueSeries = lean.queueWait.seriesFor('', {});
  const missingSeries = seriesByValue(lean.usageMissing, 'reason', [
    'absent',
    'malformed',
    'estimated',
  ] as const);
  const refusalSeries = seriesByValue(lean.budgetRefusals, 'type', ['requests', 'tokens'] as const);
  const tokenSeries = seriesByValue(lean.tokens, 'type', ['prompt', 'completion'] as const);
  const tokensByKey = new Map<string, TokenSeries>();
  const tokensByModel = new Map<string, TokenSeries>();
  const requestsByModel = new Map<string, Record<Outcome, { sum: number }>>();
  const routes = new RouteSeries(lean);
  return {
    observeRequest(route, status, seconds) {
      const entry = routes.of(route);
      let counter = entry.byStatus.get(status);
      if (counter === undefined) {
        counter = lean.requests.seriesFor(`${route} ${status}`, { route, status: String(status) });
        entry.byStatus.set(status, counter);
      }
      counter.sum++;
      observe(DURATION_BUCKETS, entry.duration, seconds);
    },
    observeTtft(route, seconds) {
      observe(TTFT_BUCKETS, routes.of(route).ttft, seconds);
    },
    observeQueueWait(seconds) {
      observe(QUEUE_BUCKETS, queueSeries, seconds);
    },
    rateLimited() {
      rateLimitedSeries.sum++;
    },
    upstreamFailure(kind) {
      failureSeries[kind].sum++;
    },
    llmTokens(key, prompt, completion, model) {
      tokenSeries.prompt.sum += prompt;
      tokenSeries.completion.sum += completion;
      if (model !== undefined) {
        const label = boundedModel(tokensByModel, model);
        addTokens(tokensByModel, lean.modelTokens, 'model', label, prompt, completion);
      }
      if (perKey) addTokens(tokensByKey, lean.keyTokens, 'key', key, prompt, completion);
    },
    observeModel(model, status) {
      model = boundedModel(requestsByModel, model);
      let series = requestsByModel.get(model);
      if (series === undefined) {
        series = seriesByValue(lean.modelRequests, 'outcome', OUTCOMES, { model });
        requestsByModel.set(model, series);
      }
      series[status >= 500 ? 'server_error' : status >= 400 ? 'client_error' : 'ok'].sum++;
    },
    usageMissing(reason) {
      missingSeries[reason].sum++;
    },
    budgetRefused(type) {
      refusalSeries[type].sum++;
    },
  };
}

const OUTCOMES = ['ok', 'client_error', 'server_error'] as const;
type Outcome = (typeof OUTCOMES)[number];

/** One series per value of `label` (with `fixed` labels beside it), made now: so each shows at 0 from the start. */
function seriesByValue<V extends string>(
  metric: LeanMetric,
  label: string,
  values: readonly V[],
  fixed: Record<string, string> = {},
): Record<V, { counts: number[]; sum: number }> {
  const prefix = Object.values(fixed).join('\u0000');
  const series = {} as Record<V, { counts: number[]; sum: number }>;
  for (const value of values) {
    series[value] = metric.seriesFor(prefix === '' ? value : `${prefix}\u0000${value}`, {
      ...fixed,
      [label]: value,
    });
  }
  return series;
}

/**
 * Routes and statuses are a small closed set (unknown paths are labelled "unknown"): series are looked up by route,
 * then by status, in small maps.
 */
class RouteSeries {
  private readonly byRoute = new Map<
    string,
    {
      duration: { counts: number[]; sum: number };
      ttft: { counts: number[]; sum: number };
      byStatus: Map<number, { sum: number }>;
    }
  >();

  constructor(private readonly lean: LeanMetrics) {}

  of(route: string) {
    let entry = this.byRoute.get(route);
    if (entry === undefined) {
      entry = {
        duration: this.lean.duration.seriesFor(route, { route }),
        ttft: this.lean.ttft.seriesFor(route, { route }),
        byStatus: new Map(),
      };
      this.byRoute.set(route, entry);
    }
    return entry;
  }
}

type TokenSeries = { prompt: { sum: number }; completion: { sum: number } };

/** Adds tokens to the prompt and completion series of one label value (made on first use). */
function addTokens(
  seen: Map<string, TokenSeries>,
  metric: LeanMetric,
  label: 'key' | 'model',
  value: string,
  prompt: number,
  completion: number,
): void {
  let series = seen.get(value);
  if (series === undefined) {
    series = {
      prompt: metric.seriesFor(`${value}\u0000prompt`, { [label]: value, type: 'prompt' }),
      completion: metric.seriesFor(`${value}\u0000completion`, { [label]: value, type: 'completion' }),
    };
    seen.set(value, series);
  }
  series.prompt.sum += prompt;
  series.completion.sum += completion;
}

/**
 * Model labels are names some replica serves (the client refuses others before sending), but a replica whose models
 * are unknown takes any name: past this many, further names are counted as `other`.
 */
const MAX_MODEL_SERIES = 100;

function boundedModel(seen: ReadonlyMap<string, unknown>, model: string): string {
  return seen.has(model) || seen.size < MAX_MODEL_SERIES ? model : 'other';
}
