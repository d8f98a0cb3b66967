// Where a gateway request's CPU goes: runs the bundled gateway as `npm start` does (1 worker) with V8's CPU profiler
// on (`node --cpu-prof`, which the worker inherits; Node 20 refuses it in NODE_OPTIONS), loads it with autocannon (32 connections, the overhead scenario's request), stops it,
// and attributes every profile sample to the first piece on its stack (leaf first) — µs per request by piece.
// Run: npx tsx bench/profile.ts [seconds] [--stream] [--telemetry] [--functions] [NAME=value…]   (prints the table the README's performance section
// shows; `--stream` profiles 64-token streams instead of short answers, `--telemetry` the gateway exporting its spans
// (its default sampler; OTEL_TRACES_SAMPLER=always_on for every one) and metrics over OTLP to a sink that answers at once)
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runAutocannon } from './lib/autocannon.js';
import { startChild } from './lib/child.js';
import { startGateway } from './lib/gateway.js';

const args = process.argv.slice(2);
const seconds = Number(args.find((a) => /^\d+$/.test(a)) ?? 10);
const stream = args.includes('--stream');
const telemetry = args.includes('--telemetry');
/** `--functions`: also the 60 functions with the most self time (where a piece's µs go). */
const functions = args.includes('--functions');
const root = resolve(import.meta.dirname, '..');
const profiles = mkdtempSync(join(tmpdir(), 'vllm-kit-profile-'));
const sim = await startChild(resolve(import.meta.dirname, 'servers/simulator.ts'));
const sink = telemetry ? await startChild(resolve(import.meta.dirname, 'servers/otlp-sink.ts')) : undefined;
const env: Record<string, string> = { WORKERS: '1', RATE_LIMIT_POINTS: '2000000' };
if (sink !== undefined) {
  Object.assign(env, {
    OTEL_EXPORTER_OTLP_ENDPOINT: sink.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    OTEL_METRIC_EXPORT_INTERVAL: '5000',
  });
}
// NAME=value arguments are the gateway's environment too (OTEL_TRACES_SAMPLER=always_off, say).
for (const arg of args)
  if (/^[A-Z_]+=/.test(arg)) env[arg.slice(0, arg.indexOf('='))] = arg.slice(arg.indexOf('=') + 1);
const gateway = await startGateway(sim.url, env, [
  '--cpu-prof',
  `--cpu-prof-dir=${profiles}`,
  '--cpu-prof-interval=100',
]);
const body = JSON.stringify({
  messages: [{ role: 'user', content: 'Say something short.' }],
  ...(stream ? { max_tokens: 64, stream: true } : { max_tokens: 16 }),
});
const load = {
  url: gateway.url,
  path: '/v1/chat/completions',
  body,
  headers: { authorization: `Bearer ${gateway.key}` },
};
await runAutocannon({ ...load, connections: 32, durationSec: 2 }); // warm-up, inside the profile's window too
const run = await runAutocannon({ ...load, connections: 32, durationSec: seconds });
await gateway.stop(); // the worker drains and exits: V8 writes its profile
await sim.stop();
await sink?.stop();

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}
// The worker's profile is the largest (the primary only forks and waits).
const file = readdirSync(profiles)
  .map((name) => join(profiles, name))
  .sort((a, b) => readFileSync(b).length - readFileSync(a).length)[0]!;
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
rmSync(profiles, { recursive: true, force: true });

// The bundle marks where each source file starts (`// src/client/client.ts`): map a line back to its file.
const bundle = readFileSync(join(root, 'examples/gateway/dist/main.js'), 'utf8').split('\n');
const starts: [number, string][] = [];
bundle.forEach((line, i) => {
  const match = /^\/\/ ((?:src|examples)\/\S+\.ts)$/.exec(line);
  if (match) starts.push([i, match[1]!]);
});
const sourceOf = (frame: Node['callFrame']): string => {
  if (!frame.url.endsWith('dist/main.js')) return frame.url;
  let found = frame.url;
  for (const [line, path] of starts) if (line <= frame.lineNumber) found = path;
  return found;
};

const PIECES: [string, (url: string, fn: string) => boolean][] = [
  [
    'OpenTelemetry: OTLP serialise and export',
    (u) => /@opentelemetry\/(otlp|exporter)|protobufjs|node_modules\/@protobufjs/.test(u),
  ],
  ['OpenTelemetry: metrics SDK', (u) => /@opentelemetry\/sdk-metrics/.test(u)],
  ['OpenTelemetry: trace SDK', (u) => /@opentelemetry\/(sdk-trace|core|resources|api)/.test(u)],
  ["OpenTelemetry: vllm-kit's own", (u) => /src\/client\/telemetry\.ts|gateway\/telemetry\.ts/.test(u)],
  ['request log line (pino)', (u) => /node_modules\/(pino|sonic-boom|fast-redact|thread-stream)/.test(u)],
  ['metrics', (u) => /prom-client|gateway\/metrics\.ts/.test(u)],
  ['per-IP rate limit', (u) => /src\/rate-limit\//.test(u)],
  [
    'key check (token cache, SHA-256)',
    (u, f) => /src\/token-cache\/|lru-cache|crypto\/hash/.test(u) || f === 'authenticate',
  ],
  ['concurrency limiter', (u) => /src\/concurrency\/|p-limit|yocto-queue/.test(u)],
  ['body read, UTF-8 and JSON check', (_u, f) => f === 'readBody' || f === 'parse' || f === 'isUtf8'],
  ['pooled client (replay, routing)', (u) => /src\/client\//.test(u)],
  ['undici (HTTP/1.1 to the upstream)', (u) => /node_modules\/undici/.test(u)],
  [
    'usage accounting (meter, budgets, usage batches)',
    (u) => /src\/key-budgets\/|gateway\/usage-recorder\.ts/.test(u),
  ],
  ['upstream permits', (u) => /src\/upstream-permits\//.test(u)],
  ['gateway pipeline (routing, headers, errors)', (u) => /examples\/gateway\//.test(u)],
  [
    'node:http server (parse, respond, sockets)',
    (u) => /node:_http|node:net|stream_base|node:internal\/streams|node:stream/.test(u),
  ],
  ['garbage collection', (_u, f) => f === '(garbage collector)'],
];
const parent = new Map<number, number>();
for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const micros = new Map<string, number>();
let idle = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const delta = profile.timeDeltas[i] ?? 0;
  let id: number | undefined = profile.samples[i]!;
  let piece = 'event loop, promises, socket writes';
  if (byId.get(id)?.callFrame.functionName === '(idle)') {
    idle += delta;
    continue;
  }
  while (id !== undefined) {
    const frame = byId.get(id)!.callFrame;
    const hit = PIECES.find(([, match]) => match(sourceOf(frame), frame.functionName));
    if (hit) {
      piece = hit[0];
      break;
    }
    id = parent.get(id);
  }
  micros.set(piece, (micros.get(piece) ?? 0) + delta);
}
// Startup and the warm-up are in the profile too; dividing by every request served spreads them thinly.
const requests = run.requests + Math.round(run.rps * 2);
const rows = [...micros].sort((a, b) => b[1] - a[1]);
const total = rows.reduce((sum, [, us]) => sum + us, 0);
console.log(
  `${requests} requests, ${Math.round(run.rps)} req/s; busy ${(total / 1e6).toFixed(1)} s, idle ${(idle / 1e6).toFixed(1)} s`,
);
console.log('| piece | µs per request | share |');
console.log('| --- | --- | --- |');
for (const [piece, us] of rows) {
  console.log(`| ${piece} | ${(us / requests).toFixed(1)} | ${((100 * us) / total).toFixed(0)}% |`);
}
console.log(`| **total (CPU on the worker's main thread)** | **${(total / requests).toFixed(1)}** | |`);

if (functions) {
  const self = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const frame = byId.get(profile.samples[i]!)!.callFrame;
    if (frame.functionName === '(idle)') continue;
    const where = sourceOf(frame)
      .replace(/^.*node_modules\//, '')
      .replace(/^file:\/\/.*?\/(src|examples)\//, '$1/');
    const name = `${frame.functionName || '(anonymous)'} ${where}:${frame.lineNumber + 1}`;
    self.set(name, (self.get(name) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  console.log('\n| function (self time) | µs per request |\n| --- | --- |');
  for (const [name, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 60))
    console.log(`| ${name} | ${(us / requests).toFixed(2)} |`);
}
