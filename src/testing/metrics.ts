// The simulator's counters, exposed by `stats()` and as Prometheus text under vLLM's metric names.

/** Cumulative histogram with fixed upper bounds, in seconds (Prometheus semantics). */
export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length).fill(0);
  }

  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (seconds <= bounds[i]!) {
        this.counts[i]!++;
        return;
      }
    }
  }

  render(name: string, labels: string): string[] {
    const lines: string[] = [];
    let cumulative = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      cumulative += this.counts[i]!;
      lines.push(`${name}_bucket{${labels},le="${this.bounds[i]}"} ${cumulative}`);
    }
    lines.push(`${name}_bucket{${labels},le="+Inf"} ${this.count}`);
    lines.push(`${name}_sum{${labels}} ${this.sum}`);
    lines.push(`${name}_count{${labels}} ${this.count}`);
    return lines;
  }
}

// vLLM's own bucket boundaries (vllm/v1/metrics/loggers.py), trimmed at the long end.
const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640,
  2560,
];
const ITL_BUCKETS = [
  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
];
const REQUEST_BUCKETS = [
  0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680,
];

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

export class SimulatorMetrics {
  connections = 0;
  requests = 0;
  promptTokens = 0;
  generationTokens = 0;
  readonly finished: Record<FinishReason, number> = { stop: 0, length: 0, abort: 0, error: 0 };
  readonly ttft = new Histogram(TTFT_BUCKETS);
  readonly itl = new Histogram(ITL_BUCKETS);
  readonly e2e = new Histogram(REQUEST_BUCKETS);
  readonly queueTime = new Histogram(REQUEST_BUCKETS);

  render(
    model: string,
    running: number,
    waiting: number,
    maxNumSeqs: number,
    prefixCache?: { queries: number; hits: number },
    /** The KV cache's size in tokens (`vllm:cache_config_info`), when prefix caching is on. */
    cacheTokens?: number,
  ): string {
    const labels = `engine="0",model_name=${JSON.stringify(model)}`;
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, values: string[]) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...values);
    };
    metric('vllm:num_requests_running', 'gauge', 'Number of requests in model execution batches.', [
      `vllm:num_requests_running{${labels}} ${running}`,
    ]);
    metric('vllm:num_requests_waiting', 'gauge', 'Number of requests waiting to be processed.', [
      `vllm:num_requests_waiting{${labels}} ${waiting}`,
    ]);
    if (cacheTokens !== undefined && cacheTokens > 0) {
      metric('vllm:cache_config_info', 'gauge', 'Information of the LLMEngine CacheConfig', [
        `vllm:cache_config_info{block_size="16",enable_prefix_caching="True",engine="0",num_gpu_blocks="${Math.floor(cacheTokens / 16)}"} 1.0`,
      ]);
    }
    metric('vllm:kv_cache_usage_perc', 'gauge', 'KV-cache usage. 1 means 100 percent usage.', [
      `vllm:kv_cache_usage_perc{${labels}} ${running / maxNumSeqs}`,
    ]);
    metric(
      'vllm:prefix_cache_queries',
      'counter',
      'Prefix cache queries, in terms of number of queried tokens.',
      [`vllm:prefix_cache_queries_total{${labels}} ${prefixCache?.queries ?? 0}`],
    );
    metric('vllm:prefix_cache_hits', 'counter', 'Prefix cache hits, in terms of number of cached tokens.', [
      `vllm:prefix_cache_hits_total{${labels}} ${prefixCache?.hits ?? 0}`,
    ]);
    metric('vllm:prompt_tokens_total', 'counter', 'Number of prefill tokens processed.', [
      `vllm:prompt_tokens_total{${labels}} ${this.promptTokens}`,
    ]);
    metric('vllm:generation_tokens_total', 'counter', 'Number of generation tokens processed.', [
      `vllm:generation_tokens_total{${labels}} ${this.generationTokens}`,
    ]);
    metric(
      'vllm:request_success_total',
      'counter',
      'Count of successfully processed requests.',
      (Object.keys(this.finished) as FinishReason[]).map(
        (reason) =>
          `vllm:request_success_total{${labels},finished_reason="${reason}"} ${this.finished[reason]}`,
      ),
    );
    metric('vllm:time_to_first_token_seconds', 'histogram', 'Histogram of time to first token in seconds.', [
      ...this.ttft.render('vllm:time_to_first_token_seconds', labels),
    ]);
    metric('vllm:inter_token_latency_seconds', 'histogram', 'Histogram of inter-token latency in seconds.', [
      ...this.itl.render('vllm:inter_token_latency_seconds', labels),
    ]);
    metric('vllm:e2e_request_latency_seconds', 'histogram', 'Histogram of e2e request latency in seconds.', [
      ...this.e2e.render('vllm:e2e_request_latency_seconds', labels),
    ]);
    metric(
      'vllm:request_queue_time_seconds',
      'histogram',
      'Histogram of time spent in WAITING phase for request.',
      [...this.queueTime.render('vllm:request_queue_time_seconds', labels)],
    );
    // Simulator-only figures (not in vLLM), so tests can reconcile `/metrics` with `stats()`.
    metric('vllm_sim:connections_total', 'counter', 'TCP connections accepted.', [
      `vllm_sim:connections_total{${labels}} ${this.connections}`,
    ]);
    metric('vllm_sim:requests_total', 'counter', 'HTTP requests received on any route.', [
      `vllm_sim:requests_total{${labels}} ${this.requests}`,
    ]);
    return `${lines.join('\n')}\n`;
  }
}
