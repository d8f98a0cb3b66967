// Scenario: what OpenTelemetry costs. (1) The client in-process, calls per second against the simulator, with
// telemetry off (what a user without @opentelemetry/api gets: the client then never loads it), with the API installed
// but no SDK (the default for most installs: no-op spans), and with the SDK recording every span (batch processor)
// and the GenAI metrics. (2) The gateway (2 workers) with OTLP export on — 100% sampled, batch span processor,
// http/protobuf to a local collector stand-in — and with 10% of traces sampled, against the same gateway with it
// off, autocannon, short answers and streams, mirrored rounds, median of per-round ratios.
// Run: npm run build && npx tsx bench/scenarios/telemetry.ts [--quick]
import { resolve } from 'node:path';
import * as api from '@opentelemetry/api';
import {
  MeterProvider,
  PeriodicExportingMetricReader,
  type PushMetricExporter,
} from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, BatchSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { runAutocannon } from '../lib/autocannon.js';
import { type ChildServer, startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { kit } from '../lib/kit.js';
import { median, microsPerCall } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const rounds = quick ? 1 : 6;
const durationMs = quick ? 300 : 1500;
const autocannonSec = quick ? 1 : 2;
const r3 = (n: number) => Number(n.toFixed(3));

const servers = resolve(import.meta.dirname, '../servers');
const upstream: ChildServer = await startChild(resolve(servers, 'simulator.ts'), [
  JSON.stringify({ model: 'm' }),
]);
const messages = [{ role: 'user', content: 'Tell me about the history of lighthouses in a few paragraphs.' }];

// ── (1) the client in-process ────────────────────────────────────────────────────────────────────────────────────

// Exporters that drop what they are given: the SDK's own work (spans, batching, aggregation) is measured, not I/O.
const dropSpans: SpanExporter = { export: (_spans, done) => done({ code: 0 }), shutdown: async () => {} };
const dropMetrics: PushMetricExporter = {
  export: (_metrics, done) => done({ code: 0 }),
  forceFlush: async () => {},
  shutdown: async () => {},
};
const tracerProvider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(dropSpans)] });
const meterProvider = new MeterProvider({
  readers: [new PeriodicExportingMetricReader({ exporter: dropMetrics, exportIntervalMillis: 1000 })],
});
const clients = {
  off: kit.createVllmClient({ baseUrl: upstream.url, telemetry: false }),
  noop: kit.createVllmClient({ baseUrl: upstream.url }),
  sdk: kit.createVllmClient({ baseUrl: upstream.url, telemetry: { tracerProvider, meterProvider } }),
};
type Mode = keyof typeof clients;

/** Calls per second: 32 loops calling at once for `durationMs`. */
async function callsPerSecond(mode: Mode, stream: boolean): Promise<number> {
  const client = clients[mode];
  const until = performance.now() + durationMs;
  let calls = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (performance.now() < until) {
        if (stream) {
          for await (const _ of client.streamChatCompletion({ messages, max_tokens: 64 })) {
            // drain
          }
        } else await client.chatCompletion({ messages, max_tokens: 16 });
        calls++;
      }
    }),
  );
  return (calls / durationMs) * 1000;
}

const clientRatios: Record<string, number[]> = {
  'short noop/off': [],
  'short sdk/off': [],
  'stream noop/off': [],
  'stream sdk/off': [],
};
const modes: Mode[] = ['off', 'noop', 'sdk'];
for (const stream of [false, true]) for (const mode of modes) await callsPerSecond(mode, stream); // warm-up
for (let round = 0; round < rounds; round++) {
  for (const stream of [false, true]) {
    // Each order in turn, so that a drift of the machine's speed does not favour one mode.
    const order = round % 2 === 0 ? modes : [...modes].reverse();
    const rate: Record<string, number> = {};
    for (const mode of order) rate[mode] = await callsPerSecond(mode, stream);
    const shape = stream ? 'stream' : 'short';
    clientRatios[`${shape} noop/off`]!.push(rate.noop! / rate.off!);
    clientRatios[`${shape} sdk/off`]!.push(rate.sdk! / rate.off!);
  }
}
for (const client of Object.values(clients)) await client.close();
await Promise.all([tracerProvider.shutdown(), meterProvider.shutdown()]);
const client = Object.fromEntries(
  Object.entries(clientRatios).map(([name, list]) => [name, r3(median(list))]),
);
console.table(client);

// ── (1b) the pieces of a call's telemetry, µs ───────────────────────────────────────────────────────────────────
// The SDK's own costs (a span started and ended through a batch processor; a histogram update with a GenAI call's six
// attributes) and vllm-kit's share (the per-call object: reading model, usage and finish reasons from a response,
// building and caching the attributes, with a non-recording span and real metrics). The last is internal, so it is
// measured from the sources.
const { ClientTelemetry } = await import('../../src/client/telemetry.js');
const microIterations = quick ? 2000 : 100_000;
const microseconds = (fn: () => void) => microsPerCall(fn, microIterations);
const microTracer = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(dropSpans)] });
const microMeter = new MeterProvider({
  readers: [new PeriodicExportingMetricReader({ exporter: dropMetrics, exportIntervalMillis: 60_000 })],
});
const tracer = microTracer.getTracer('bench');
const histogram = microMeter.getMeter('bench').createHistogram('h');
const spanAttributes = {
  'gen_ai.operation.name': 'chat',
  'gen_ai.provider.name': 'vllm',
  'gen_ai.request.model': 'm',
  'gen_ai.request.max_tokens': 16,
  'vllm_kit.request_id': 'req-1',
  'server.address': '127.0.0.1',
  'server.port': 8000,
};
const metricAttributes = {
  'gen_ai.operation.name': 'chat',
  'gen_ai.provider.name': 'vllm',
  'gen_ai.request.model': 'm',
  'gen_ai.response.model': 'm',
  'server.address': '127.0.0.1',
  'server.port': 8000,
};
const responseBody = Buffer.from(
  JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion',
    model: 'm',
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: 'Lighthouses guided ships.' },
        finish_reason: 'length',
      },
    ],
    usage: { prompt_tokens: 18, total_tokens: 34, completion_tokens: 16, prompt_tokens_details: null },
  }),
);
const own = ClientTelemetry.create({
  api,
  tracerProvider: undefined,
  meterProvider: microMeter,
  providerName: 'vllm',
  captureContent: false,
  chunkTiming: 'each',
})!;
const micro = {
  sdkSpanMicros: microseconds(() => {
    const span = tracer.startSpan('chat m', { kind: api.SpanKind.CLIENT, attributes: spanAttributes });
    span.setAttributes({
      'gen_ai.response.model': 'm',
      'gen_ai.usage.input_tokens': 18,
      'gen_ai.usage.output_tokens': 16,
    });
    span.end();
  }),
  sdkHistogramRecordMicros: microseconds(() => histogram.record(0.1, metricAttributes)),
  vllmKitCallMicros: microseconds(() => {
    const call = own.start({
      path: '/v1/chat/completions',
      body: { model: 'm', max_tokens: 16 },
      stream: false,
      parent: undefined,
      span: undefined,
      requestId: 'req-1',
      origin: 'http://127.0.0.1:8000',
    })!;
    call.attempt();
    call.onHeaders(200);
    call.onData(responseBody);
    call.onComplete();
    call.end();
  }),
};
await Promise.all([microTracer.shutdown(), microMeter.shutdown()]);
console.table(micro);

// ── (2) the gateway with OTLP export on and off ─────────────────────────────────────────────────────────────────

const sink: ChildServer = await startChild(resolve(servers, 'otlp-sink.ts'));
const gatewayEnv = { RATE_LIMIT_POINTS: '2000000', WORKERS: process.env.BENCH_WORKERS ?? '2' };
const exporting = {
  ...gatewayEnv,
  OTEL_EXPORTER_OTLP_ENDPOINT: sink.url,
  OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
  OTEL_METRIC_EXPORT_INTERVAL: '5000',
};
// Every span (the case), 10% of traces (metrics still from every request), and each signal alone: where the
// cost goes.
const variants = {
  off: gatewayEnv,
  on: { ...exporting, OTEL_TRACES_SAMPLER: 'always_on' },
  sampled: { ...exporting, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' },
  metricsOnly: { ...exporting, OTEL_TRACES_SAMPLER: 'always_off' },
  tracesOnly: { ...exporting, OTEL_TRACES_SAMPLER: 'always_on', OTEL_METRICS_EXPORTER: 'none' },
  // Every span and metric, streams' chunk gaps as one mean per stream instead of one record per chunk.
  chunkMean: { ...exporting, OTEL_TRACES_SAMPLER: 'always_on', OTEL_GENAI_CHUNK_TIMING: 'mean' },
};
type GatewayName = keyof typeof variants;
// --quick (CI) proves the scenario runs: the three gateways the summary reads, not the breakdown.
const names = (Object.keys(variants) as GatewayName[]).filter(
  (name) => !quick || name === 'off' || name === 'on' || name === 'sampled',
);
const gateways = {} as Record<GatewayName, Awaited<ReturnType<typeof startGateway>>>;
for (const name of names) gateways[name] = await startGateway(upstream.url, variants[name]);
const bodies = {
  short: JSON.stringify({ messages, max_tokens: 16 }),
  stream: JSON.stringify({ messages, max_tokens: 64, stream: true }),
};
const run = (name: GatewayName, body: string) =>
  runAutocannon({
    url: gateways[name].url,
    path: '/v1/chat/completions',
    body,
    headers: { authorization: `Bearer ${gateways[name].key}` },
    connections: 32,
    durationSec: autocannonSec,
  });
for (const name of names) for (const body of Object.values(bodies)) await run(name, body);
const ratios: Record<string, number[]> = {};
const rps: Record<string, number[]> = {};
let errors = 0;
for (let round = 0; round < rounds; round++) {
  for (const [shape, body] of Object.entries(bodies)) {
    // Each side twice a round, the order mirrored (A B C C B A, then reversed): a drift of the machine's speed
    // during the round cancels out of the ratios.
    const half = round % 2 === 0 ? names : [...names].reverse();
    const sum: Record<string, number> = {};
    for (const name of [...half, ...[...half].reverse()]) {
      const r = await run(name, body);
      errors += r.errors + r.non2xx;
      sum[name] = (sum[name] ?? 0) + r.rps;
      (rps[`${shape} ${name}`] ??= []).push(r.rps);
    }
    for (const name of names.slice(1)) (ratios[`${shape} ${name}`] ??= []).push(sum[name]! / sum.off!);
  }
}
for (const name of names) await gateways[name].stop();
// The traced gateway's last spans and metrics were flushed by its drain: the collector saw them.
const exported = ((await sink.ask('stats')) as { stats: { exports: number; bytes: number } }).stats;
await sink.stop();
await upstream.stop();
if (exported.exports === 0) {
  console.error('bench: the traced gateway exported nothing');
  errors++;
}

const gateway = {
  rps: Object.fromEntries(Object.entries(rps).map(([name, list]) => [name, Math.round(median(list))])),
  vsOff: Object.fromEntries(Object.entries(ratios).map(([name, list]) => [name, r3(median(list))])),
  exports: exported.exports,
  exportedMegabytes: r3(exported.bytes / 2 ** 20),
  errors,
};
console.table(gateway.rps);
console.log(JSON.stringify(gateway.vsOff));
console.log(
  JSON.stringify({
    bench: 'telemetry',
    rounds,
    client,
    micro: Object.fromEntries(Object.entries(micro).map(([name, v]) => [name, r3(v)])),
    gateway,
  }),
);
if (errors > 0) process.exitCode = 1;
