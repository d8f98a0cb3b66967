// Turns the suite's results into the markdown capacity report, its SVG charts and the summary table.
import { barChart, lineChart } from './svg.js';

// The scripts' JSON lines, as they print them.
type Figures = any;

export interface Report {
  date: string;
  quick: boolean;
  machine: { cpu: string; cores: number; memoryGb: number; node: string; kernel: string };
  minutes: number;
  results: Record<string, Figures>;
}

const fmt = (n: number | undefined, digits = 0) =>
  n === undefined || n === null || Number.isNaN(n)
    ? '—'
    : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

function table(headers: string[], rows: (string | number)[][]): string {
  return [
    `| ${headers.join(' | ')} |`,
    `| ${headers.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

/** One row per headline figure: what was measured, the target, and whether it was met. */
export function summarize(report: Report): { figure: string; value: string; target: string; met: string }[] {
  const r = report.results;
  const rows: { figure: string; value: string; target: string; met: string }[] = [];
  // A quick run's figures mean nothing: its rows carry no verdict.
  const add = (figure: string, value: string, target = '', met?: boolean) =>
    rows.push({ figure, value, target, met: met === undefined || report.quick ? '' : met ? 'yes' : 'NO' });
  const atLeast = (figure: string, value: number, limit: number, digits: number) =>
    add(figure, fmt(value, digits), `≥ ${limit}`, value >= limit);
  const atMost = (figure: string, value: number, limit: number, digits: number) =>
    add(figure, fmt(value, digits), `≤ ${limit}`, value <= limit);
  if (r.overhead) {
    const o = r.overhead.ratios;
    atLeast(
      'gateway (1 worker) / bare passthrough, req/s (autocannon)',
      o.autocannon.gateway1VsPassthrough,
      0.8,
      2,
    );
    atLeast(
      'gateway (1 worker) / bare passthrough, req/s (our generator)',
      o.ours.gateway1VsPassthrough,
      0.8,
      2,
    );
    atLeast('gateway (1 worker) / Fastify stack, req/s (autocannon)', o.autocannon.gateway1VsFastify, 1.2, 2);
    atLeast('gateway (1 worker) / Fastify stack, req/s (our generator)', o.ours.gateway1VsFastify, 1.2, 2);
    atMost(
      'gateway added p50 over the bare passthrough, one caller (ms)',
      o.addedP50MsOneCaller.gateway1OverPassthrough,
      0.3,
      3,
    );
  }
  if (r.routing) {
    const g = r.routing.ratios;
    // Where prefix affinity is the point (sessions with their own prompts): the worst over workloads and replica sets.
    const reuse = Object.entries(g.worst as Record<string, Figures>).filter(
      ([name]) => name !== 'one hot prompt',
    );
    const worstOn = (field: string) => Math.max(...reuse.map(([, w]) => w[field] as number));
    atMost(
      'prefix routing TTFT p50 / least-outstanding, worst workload × replica set',
      worstOn('worstP50VsLeastOutstanding'),
      0.6,
      2,
    );
    atMost(
      'prefix routing TTFT p99 / least-outstanding, worst (own-prompt sessions)',
      Math.max(
        ...reuse
          .filter(([n]) => n.includes('sessions'))
          .map(([, w]) => w.worstP99VsLeastOutstanding as number),
      ),
      0.85,
      2,
    );
    atMost(
      'prefix routing TTFT p50 and p99 / least-outstanding, worst of any workload',
      Math.max(g.worstP50OnReuse, g.worstP99OnReuse),
      1,
      2,
    );
    atMost(
      'prefix hit rate, points below the ideal for the cache sizes, worst',
      g.worstPointsBelowIdeal,
      5,
      1,
    );
    atMost('requests per replica, max / mean, worst', g.worstMaxOverMean, 1.3, 2);
    atMost('hit rate, 4 workers or 2 gateways vs 1 worker, points apart', g.worstPointsProcessesVsOne, 5, 1);
    atMost('200 sessions: TTFT p50 / least-outstanding (median of the sets)', g.twoHundredMedianP50, 0.6, 2);
    atMost('share of sessions moved by removing 1 of 4 replicas', g.sessionsMovedByRemoval, 0.3, 2);
  }
  if (r['routing-cost']) {
    const c = r['routing-cost'];
    add(
      'prefix routing per request, 6.8K-character prompts: hash; decision (µs)',
      `${fmt(c.hashMicros, 1)}; ${fmt(c.decisionMicros, 1)}`,
    );
    add('prefix routing: placements shared with peers, bytes per request', fmt(c.syncBytesPerRequest));
  }
  if (r.models) {
    const m = r.models.ratios;
    atMost('models: misrouted requests (2 bases × 2 replicas, embedder, 6 adapters)', m.misrouted, 0, 0);
    atMost('models: adapter TTFT p50, adapter-aware / unaware', m.adapterTtftP50AwareVsUnaware, 1, 2);
    atMost('models: adapter swaps, adapter-aware / unaware', m.swapsAwareVsUnaware, 1, 2);
    atMost('models: on-demand loads for 6 adapters (one each)', m.onDemandLoads, 6, 0);
  }
  if (r.budgets) {
    const b = r.budgets;
    atLeast(
      'budgets on / off, req/s, short answers (autocannon)',
      b.throughput.budgetedVsFree.short,
      0.95,
      3,
    );
    atLeast('budgets on / off, req/s, streams (autocannon)', b.throughput.budgetedVsFree.stream, 0.95, 3);
    add(
      'usage accounting, 200-token stream (µs)',
      fmt(b.accounting.meterStream200ContinuousStrippedMicros, 1),
    );
    add('usage accounting, JSON body (µs)', fmt(b.accounting.meterWholeBodyMicros, 2));
    add('budget admit + charge, memory (µs)', fmt(b.accounting.budgetAdmitAndChargeMicros, 2));
  }
  if (r.telemetry) {
    const t = r.telemetry.gateway.vsOff;
    atLeast('OpenTelemetry 100% sampled / off, req/s, short answers', t['short on'], 0.9, 3);
    atLeast('OpenTelemetry 100% sampled / off, req/s, streams', t['stream on'], 0.9, 3);
    add(
      'OpenTelemetry 10% sampled / off, short / streams',
      `${fmt(t['short sampled'], 3)} / ${fmt(t['stream sampled'], 3)}`,
    );
    add(
      'client with the API but no SDK / telemetry off, calls/s',
      fmt(r.telemetry.client['short noop/off'], 3),
    );
  }
  if (r.fairness) {
    const f = r.fairness;
    atMost('fair: light keys p99 TTFT / their solo run', f.fairness.lightTtftP99VsSolo.fair, 1.5, 2);
    add('FIFO: light keys p99 TTFT / their solo run', fmt(f.fairness.lightTtftP99VsSolo.fifo, 1));
    atLeast("fair: Jain's index, served / max-min share", f.fairness.fair.jain, 0.9, 3);
    atLeast('fair / FIFO goodput', f.fairness.goodputFairVsFifo, 0.95, 3);
    atMost('UPSTREAM_CONCURRENCY: peak in flight / limit', f.shared.peakInFlight / f.shared.limit, 1, 2);
    atLeast('UPSTREAM_CONCURRENCY: utilisation', f.shared.utilisation, 0.9, 3);
    add(
      'permit acquire + release, Redis (µs p50 / p99)',
      `${f.permitMicros.redis.p50Micros} / ${f.permitMicros.redis.p99Micros}`,
    );
  }
  if (r.seed) {
    add('seed "before" sustained (req/min)', fmt(r.seed.sustainedPerMin.before));
    add(
      'gateway defaults sustained (req/min)',
      `${r.seed.afterSustainedEveryRate ? '≥ ' : ''}${fmt(r.seed.sustainedPerMin.after)}`,
      '≫ 160',
      r.seed.sustainedPerMin.after >= 4 * 160,
    );
  }
  if (r.streaming) {
    for (const a of r.streaming.added)
      add(`streaming: added TTFT p50 at ${a.concurrency} (ms)`, fmt(a.addedTtftP50Ms, 2));
    for (const a of r.streaming.added)
      add(`streaming: added gap p99 at ${a.concurrency} (ms)`, fmt(a.addedGapP99Ms, 2));
    add(
      `streaming: worker memory at ${r.streaming.memory.streams} streams (MB)`,
      fmt(r.streaming.memory.workerRssMb, 1),
    );
  }
  if (r.saturation) {
    const s = r.saturation;
    add('saturation: goodput / capacity', fmt(s.goodputVsCapacity, 3), '≥ 0.95', s.goodputVsCapacity >= 0.95);
    add(
      'saturation: upstream queue max (gateway / direct)',
      `${s.through.upstreamWaitingMax} / ${s.direct.upstreamWaitingMax}`,
    );
    add(
      'saturation: every 503/429 has Retry-After',
      String(s.everyShedHasRetryAfter),
      'true',
      s.everyShedHasRetryAfter,
    );
  }
  if (r['token-cache'])
    add(
      'token-cache hit (µs)',
      fmt(r['token-cache'].hitMicrosPerVerify, 2),
      '≤ 2',
      r['token-cache'].hitMicrosPerVerify <= 2,
    );
  if (r['rate-limit']) {
    const rl = r['rate-limit'];
    add(
      `rate-limit heap, ${fmt(rl.ours.keys)} keys (MB)`,
      fmt(rl.ours.heapMb, 1),
      rl.ours.keys >= 1e6 ? '≤ 150' : '',
      rl.ours.keys >= 1e6 ? rl.ours.heapMb <= 150 : undefined,
    );
    // The first round's goal: a check in memory with a million keys resident, at most 1 µs.
    add(
      'rate-limit check, memory, 1,000,000 keys (µs)',
      fmt(rl.ours.microsPerCheck, 2),
      '≤ 1',
      rl.ours.keys >= 1e6 ? rl.ours.microsPerCheck <= 1 : undefined,
    );
    add('rate-limit check, cluster (µs, sequential)', fmt(rl.clusterPath.microsPerCheck, 1));
    add('rate-limit check, Redis (µs, sequential)', fmt(rl.redisMicros, 1));
  }
  if (r.concurrency) {
    add('limiter overhead, 1 caller (µs)', fmt(r.concurrency.overheadNsPerRun.oneCaller / 1000, 2));
    add('limiter overhead, 64 callers (µs)', fmt(r.concurrency.overheadNsPerRun.sixtyFourCallers / 1000, 2));
  }
  if (r.client) add('client / raw undici, req/s', fmt(r.client.vsRawUndici, 2));
  if (r.simulator)
    add('simulator / plain node:http (body parsed), req/s', fmt(r.simulator.throughputVsParsed, 2));
  if (r['browser-size'])
    add('vllm-kit/browser, min+gzip (bytes)', fmt(r['browser-size'].minGzipBytes), '', undefined);
  return rows;
}

export function renderReport(
  report: Report,
  date: string,
): { markdown: string; charts: Record<string, string> } {
  const r = report.results;
  const charts: Record<string, string> = {};
  const parts: string[] = [];
  const chart = (name: string, svg: string, alt: string) => {
    const file = `${date}-${name}.svg`;
    charts[file] = svg;
    parts.push(`![${alt}](./${file})`);
  };
  parts.push(
    `# vllm-kit capacity report, ${date}${report.quick ? ' (--quick: a smoke run, figures meaningless)' : ''}`,
  );
  parts.push(
    `Machine: ${report.machine.cpu}, ${report.machine.cores} cores, ${report.machine.memoryGb} GB, Node ${report.machine.node}, Linux ${report.machine.kernel}. ` +
      `Load generator, simulator and servers share the machine over loopback; the suite took ${report.minutes} min. ` +
      "Raw figures: the JSON file beside this report. Method: the README's performance section.",
  );
  parts.push(
    '## Summary',
    table(
      ['figure', 'value', 'target', 'met'],
      summarize(report).map((s) => [s.figure, s.value, s.target, s.met]),
    ),
  );

  if (r.overhead) {
    const o = r.overhead;
    parts.push('## 1. Overhead (zero-latency simulator)');
    parts.push('autocannon, 32 keep-alive connections (medians over rounds):');
    parts.push(
      table(
        ['target', 'req/s', 'own CPU µs/req', 'p50 ms', 'p99 ms', 'errors'],
        o.autocannon.map((p: Figures) => [
          p.target,
          fmt(p.rps),
          fmt(p.cpuMicrosPerRequest),
          fmt(p.p50Ms, 1),
          fmt(p.p99Ms, 1),
          p.errors,
        ]),
      ),
    );
    parts.push('Our generator, closed loops, one source address per caller (medians over rounds):');
    parts.push(
      table(
        ['target', 'callers', 'req/s', 'own CPU µs/req', 'p50 ms', 'p90 ms', 'p99 ms', 'errors'],
        o.points.map((p: Figures) => [
          p.target,
          p.concurrency,
          fmt(p.rps),
          fmt(p.cpuMicrosPerRequest),
          fmt(p.p50Ms, 3),
          fmt(p.p90Ms, 3),
          fmt(p.p99Ms, 3),
          p.errors,
        ]),
      ),
    );
    const ratioRows = Object.keys(o.ratios.autocannon).map((name) => [
      name,
      fmt(o.ratios.autocannon[name], 2),
      fmt(o.ratios.ours[name], 2),
    ]);
    parts.push('Ratios, medians of per-round ratios:');
    parts.push(table(['ratio', 'autocannon', 'our generator'], ratioRows));
    const targets = [...new Set(o.points.map((p: Figures) => p.target))] as string[];
    chart(
      'throughput',
      lineChart({
        title: 'Throughput against concurrency',
        xLabel: 'concurrent callers',
        yLabel: 'requests/s',
        logX: true,
        series: targets.map((t) => ({
          name: t,
          points: o.points.filter((p: Figures) => p.target === t).map((p: Figures) => [p.concurrency, p.rps]),
        })),
      }),
      'throughput against concurrency',
    );
    const loaded = o.points.filter((p: Figures) => p.concurrency === o.ratios.concurrency);
    chart(
      'latency',
      barChart({
        title: `Latency percentiles at ${o.ratios.concurrency} callers`,
        xLabel: 'target',
        yLabel: 'ms',
        groups: loaded.map((p: Figures) => p.target),
        series: [
          { name: 'p50', values: loaded.map((p: Figures) => p.p50Ms) },
          { name: 'p90', values: loaded.map((p: Figures) => p.p90Ms) },
          { name: 'p99', values: loaded.map((p: Figures) => p.p99Ms) },
        ],
      }),
      'latency percentiles',
    );
  }

  if (r.routing) {
    const g = r.routing;
    parts.push(
      `## Prefix routing on every workload (4 replicas with prefix caching, ${g.replicaSets} replica sets each, caches 1.0–1.5× a replica's share, gateway 2 workers)`,
    );
    parts.push(
      table(
        [
          'workload',
          'worst p50 / LO',
          'median p50 / LO',
          'worst p99 / LO',
          'worst max/mean',
          'worst points below ideal',
        ],
        Object.entries(g.ratios.worst as Record<string, Figures>).map(([name, w]) => [
          name,
          fmt(w.worstP50VsLeastOutstanding, 2),
          fmt(w.medianP50VsLeastOutstanding, 2),
          fmt(w.worstP99VsLeastOutstanding, 2),
          fmt(w.worstMaxOverMean, 2),
          fmt(w.worstPointsBelowIdeal, 1),
        ]),
      ),
    );
    parts.push(
      table(
        ['workload', 'hit rate, 1 worker', '4 workers, points', '2 gateway processes (Redis), points'],
        Object.entries(g.ratios.agreement as Record<string, Figures>).map(([name, a]) => [
          name,
          fmt(a.hitRateOneWorker, 3),
          fmt(a.pointsFourWorkersVsOne, 1),
          fmt(a.pointsTwoGatewaysVsOne, 1),
        ]),
      ),
    );
    parts.push(
      `Removing one of four replicas half-way through 200 sessions moved ${fmt(g.ratios.sessionsMovedByRemoval * 100, 0)}% of them.`,
    );
  }

  if (r.models) {
    const m = r.models;
    parts.push(
      `## Several models (2 bases × 2 replicas with max_loras 2, an embedding replica, 6 adapters; ${m.clients} clients for ${fmt(m.durationMs / 1000)} s per set-up, gateway 2 workers)`,
    );
    parts.push(
      table(
        [
          'set-up',
          'requests',
          'errors',
          'misrouted',
          'adapter TTFT p50 ms',
          'adapter TTFT p99 ms',
          'base TTFT p50 ms',
          'adapter swaps',
          'adapter loads',
          'loads / min',
        ],
        m.results.map((x: Figures) => [
          x.setup,
          x.requests,
          x.errors,
          x.misrouted,
          fmt(x.adapterTtftP50Ms, 1),
          fmt(x.adapterTtftP99Ms, 1),
          fmt(x.baseTtftP50Ms, 1),
          x.swaps,
          x.adapterLoads,
          fmt(x.adapterLoadsPerMinute, 1),
        ]),
      ),
    );
  }

  if (r.seed) {
    const s = r.seed;
    parts.push(
      `## 2. The seed's before and after (streamed chat, Poisson arrivals, ${fmt(s.addresses)} client addresses; sustained = ≥ ${s.minSuccess * 100}% succeed and p99 time to first token ≤ ${s.ttftP99BoundMs} ms)`,
    );
    const rows = (name: string, steps: Figures[]) =>
      steps.map((x) => [
        name,
        fmt(x.ratePerMin),
        x.offered,
        `${(x.successRate * 100).toFixed(1)}%`,
        fmt(x.ttftP50Ms),
        fmt(x.ttftP99Ms),
        fmt(x.e2eP50Ms),
        fmt(x.e2eP99Ms),
        x.sustained ? 'yes' : 'no',
      ]);
    parts.push(
      table(
        [
          'backend',
          'req/min offered',
          'requests',
          'succeeded',
          'TTFT p50 ms',
          'TTFT p99 ms',
          'end-to-end p50 ms',
          'p99 ms',
          'sustained',
        ],
        [...rows('before (seed, unoptimised)', s.before), ...rows('after (gateway defaults)', s.after)],
      ),
    );
    chart(
      'seed',
      lineChart({
        title: 'p99 time to first token against offered load',
        xLabel: 'requests/min offered',
        yLabel: 'p99 TTFT, ms',
        series: [
          { name: 'before', points: s.before.map((x: Figures) => [x.ratePerMin, x.ttftP99Ms]) },
          { name: 'after', points: s.after.map((x: Figures) => [x.ratePerMin, x.ttftP99Ms]) },
        ],
        reference: { y: s.ttftP99BoundMs, label: 'bound' },
      }),
      'p99 TTFT against offered load',
    );
  }

  if (r.streaming) {
    const s = r.streaming;
    parts.push('## 3. Streaming (64-token streams, closed loops, H100-like simulator without jitter)');
    parts.push(
      table(
        [
          'target',
          'streams at once',
          'streams',
          'TTFT p50 ms',
          'TTFT p99 ms',
          'chunk gap p50 ms',
          'gap p99 ms',
          'worker RSS MB',
          'TTFT mean inside the gateway ms',
        ],
        s.points.map((p: Figures) => [
          p.target,
          p.concurrency,
          p.streams,
          fmt(p.ttftP50Ms, 2),
          fmt(p.ttftP99Ms, 2),
          fmt(p.gapP50Ms, 2),
          fmt(p.gapP99Ms, 2),
          fmt(p.workerRssMb, 1),
          fmt(p.gatewayTtftMeanMs, 2),
        ]),
      ),
    );
    parts.push(
      table(
        ['streams at once', 'added TTFT p50 ms', 'added TTFT p99 ms', 'added gap p50 ms', 'added gap p99 ms'],
        s.added.map((a: Figures) => [
          a.concurrency,
          fmt(a.addedTtftP50Ms, 2),
          fmt(a.addedTtftP99Ms, 2),
          fmt(a.addedGapP50Ms, 2),
          fmt(a.addedGapP99Ms, 2),
        ]),
      ),
    );
    parts.push(
      `Gateway worker memory at ${s.memory.streams} streams: ${fmt(s.memory.workerRssMb, 1)} MB RSS (${fmt(s.memory.idleRssMb, 1)} MB idle, ≈ ${fmt(s.memory.kbPerStream)} KB per stream).`,
    );
  }

  if (r.saturation) {
    const s = r.saturation;
    parts.push(
      `## 4. Saturation (offered ${fmt(s.offeredRps)} req/s, twice the measured capacity of ${fmt(s.measuredCapacityRps)} req/s, plus one address sending ${s.abuserRps} req/s)`,
    );
    const row = (name: string, x: Figures, waiting: number, drain: number) => [
      name,
      JSON.stringify(x.statuses).replace(/"/g, ''),
      fmt(x.goodputRps),
      fmt(x.okP50Ms),
      fmt(x.okP99Ms),
      fmt(x.shedP50Ms, 2),
      Number.isNaN(waiting) ? '—' : waiting,
      fmt(drain),
    ];
    parts.push(
      table(
        [
          'path',
          'statuses',
          'goodput req/s',
          'ok p50 ms',
          'ok p99 ms',
          'shed p50 ms',
          'upstream queue max',
          'drain after load ms',
        ],
        [
          row('straight to the simulator', s.direct.legit, s.direct.upstreamWaitingMax, s.direct.drainMs),
          row('through the gateway', s.through.legit, s.through.upstreamWaitingMax, s.through.drainMs),
          row('abusive address, through the gateway', s.through.abuser, Number.NaN, Number.NaN),
        ],
      ),
    );
    chart(
      'saturation',
      barChart({
        title: 'Overload at 2× capacity',
        xLabel: 'path',
        yLabel: 'ms / requests per second',
        groups: ['straight to the simulator', 'through the gateway'],
        series: [
          {
            name: 'goodput, req/s',
            values: [s.direct.legit.goodputRps, s.through.legit.goodputRps + s.through.abuser.goodputRps],
          },
          { name: 'p99 of answered, ms', values: [s.direct.legit.okP99Ms, s.through.legit.okP99Ms] },
        ],
      }),
      'overload at twice capacity',
    );
  }

  if (r.budgets) {
    const b = r.budgets;
    parts.push(
      `## Per-key budgets (gateway with ${b.throughput.workers} workers; a key with rpm and tpm against one without, autocannon, ${b.rounds} interleaved rounds)`,
    );
    parts.push(
      table(
        ['workload', 'no limits, req/s', 'with limits, req/s', 'ratio (median per round)'],
        (['short', 'stream'] as const).map((shape) => [
          shape === 'short' ? 'short answers (16 tokens)' : 'streams (64 tokens)',
          fmt(b.throughput.rps[`${shape} free`]),
          fmt(b.throughput.rps[`${shape} budgeted`]),
          fmt(b.throughput.budgetedVsFree[shape], 3),
        ]),
      ),
    );
    parts.push(
      table(
        ['accounting step', 'µs'],
        [
          ['requestUsage (ask a streamed request for usage)', fmt(b.accounting.requestUsageMicros, 2)],
          ['UsageMeter, JSON body', fmt(b.accounting.meterWholeBodyMicros, 2)],
          [
            `UsageMeter, ${b.accounting.streamEvents}-event stream, continuous usage stripped`,
            fmt(b.accounting.meterStream200ContinuousStrippedMicros, 1),
          ],
          [
            `UsageMeter, ${b.accounting.streamEvents}-event stream, final usage chunk`,
            fmt(b.accounting.meterStream200FinalUsageMicros, 1),
          ],
          ['admit + charge, memory store', fmt(b.accounting.budgetAdmitAndChargeMicros, 2)],
        ],
      ),
    );
  }

  if (r.telemetry) {
    const t = r.telemetry;
    const g = t.gateway;
    parts.push(
      `## OpenTelemetry (gateway with 2 workers, OTLP http/protobuf to a local collector stand-in; autocannon, ${t.rounds} mirrored rounds, median of per-round ratios)`,
    );
    const variants = [
      ['on', '100% of traces, and metrics'],
      ['sampled', '10% of traces, and metrics'],
      ['metricsOnly', 'metrics only (no trace sampled)'],
      ['tracesOnly', '100% of traces, no metrics'],
    ];
    parts.push(
      table(
        ['gateway', 'short answers req/s', 'ratio to off', 'streams req/s', 'ratio to off'],
        [
          ['off', fmt(g.rps['short off']), '1', fmt(g.rps['stream off']), '1'],
          ...variants.map(([name, label]) => [
            label!,
            fmt(g.rps[`short ${name}`]),
            fmt(g.vsOff[`short ${name}`], 3),
            fmt(g.rps[`stream ${name}`]),
            fmt(g.vsOff[`stream ${name}`], 3),
          ]),
        ],
      ),
    );
    parts.push(
      table(
        ['client in-process, calls/s against telemetry off', 'short answers', 'streams'],
        [
          [
            'the API installed, no SDK',
            fmt(t.client['short noop/off'], 3),
            fmt(t.client['stream noop/off'], 3),
          ],
          [
            'the SDK recording every span and the metrics',
            fmt(t.client['short sdk/off'], 3),
            fmt(t.client['stream sdk/off'], 3),
          ],
        ],
      ),
    );
  }

  if (r.fairness) {
    const f = r.fairness;
    const fr = f.fairness;
    parts.push(
      `## Fair admission (upstream capacity ${fmt(fr.capacityRps)} req/s; offered ${fmt(fr.offeredRps)} req/s = 150%, one key 10× each of three others; Poisson arrivals, streams)`,
    );
    const row = (name: string, run: typeof fr.fair) => [
      name,
      fmt(run.goodputRps, 1),
      `${fmt(run.servedRps.heavy, 1)} / ${fmt(run.servedRps.light1, 1)} / ${fmt(run.servedRps.light2, 1)} / ${fmt(run.servedRps.light3, 1)}`,
      fmt(run.jain, 3),
      fmt(run.lightTtftP50Ms),
      fmt(run.lightTtftP99Ms),
      run.heavyTtftP50Ms === null ? '—' : fmt(run.heavyTtftP50Ms),
    ];
    parts.push(
      table(
        [
          'run',
          'goodput req/s',
          'served req/s (heavy / light ×3)',
          "Jain's index",
          'light TTFT p50 ms',
          'light TTFT p99 ms',
          'heavy TTFT p50 ms',
        ],
        [
          row('light keys alone (solo)', fr.solo),
          row('fair (QUEUE_POLICY=fair)', fr.fair),
          row('FIFO', fr.fifo),
        ],
      ),
    );
    parts.push(
      `Two gateway processes (2 workers each) with \`UPSTREAM_CONCURRENCY=${f.shared.limit}\` on Redis: peak in flight at the simulator ${f.shared.peakInFlight}, mean utilisation ${fmt(f.shared.utilisation * 100, 1)}%. Taking and returning a permit: ${f.permitMicros.redis.p50Micros} µs p50, ${f.permitMicros.redis.p99Micros} µs p99 on Redis; ${f.permitMicros.memory.p50Micros} µs p50 in memory.`,
    );
  }

  const pieces = ['token-cache', 'rate-limit', 'concurrency', 'client', 'simulator', 'browser-size'].filter(
    (n) => r[n],
  );
  if (pieces.length > 0) {
    parts.push('## 5. Pieces');
    parts.push("Each piece's own benchmark (bench/<name>.ts), its figures as printed:");
    for (const name of pieces)
      parts.push(`### ${name}`, `\`\`\`json\n${JSON.stringify(r[name], null, 2)}\n\`\`\``);
  }
  return { markdown: `${parts.join('\n\n')}\n`, charts };
}
