// Bench: the zero-latency simulator against a plain node:http server returning the same JSON, side by side.
// Run: npx tsx bench/simulator.ts [--quick]
import { resolve } from 'node:path';
import { startChild } from './lib/child.js';
import { closedLoop, median } from './lib/load.js';

const quick = process.argv.includes('--quick');
const rounds = quick ? 1 : 5;
const durationMs = quick ? 500 : 3000;
const connections = 32;
const request = JSON.stringify({
  messages: [{ role: 'user', content: 'Say something short.' }],
  max_tokens: 16,
});

interface Sample {
  rps: number;
  cpuMicrosPerRequest: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
}

const SERVERS: Record<string, [script: string, args: string[]]> = {
  'plain node:http (body discarded)': ['servers/plain-http.ts', []],
  'plain node:http (body parsed)': ['servers/plain-http.ts', ['--parse']],
  'vllm-kit simulator': ['servers/simulator.ts', []],
};

async function measure(name: string): Promise<Sample> {
  const [script, args] = SERVERS[name]!;
  const server = await startChild(resolve(import.meta.dirname, script), args);
  try {
    // Warm-up is inside closedLoop; CPU is read around the counted window only approximately, so read it around
    // the whole run and divide by every request sent (warm-up included) — both servers are treated the same.
    const cpuBefore = await server.cpuMicros();
    const result = await closedLoop({
      url: server.url,
      path: '/v1/chat/completions',
      body: request,
      connections,
      durationMs,
      warmupMs: quick ? 200 : 1000,
    });
    const cpu = (await server.cpuMicros()) - cpuBefore;
    return {
      rps: result.requestsPerSec,
      cpuMicrosPerRequest: cpu / (result.requests * (1 + (quick ? 200 : 1000) / durationMs)),
      p50Ms: result.p50Ms,
      p99Ms: result.p99Ms,
      errors: result.errors,
    };
  } finally {
    await server.stop();
  }
}

const names = Object.keys(SERVERS);
const samples: Record<string, Sample[]> = Object.fromEntries(names.map((name) => [name, []]));
for (let round = 0; round < rounds; round++) {
  // Rotate the order each round so drift on a shared machine hits every server alike.
  const order = names.map((_, i) => names[(i + round) % names.length]!);
  for (const name of order) samples[name]!.push(await measure(name));
}

const summary = Object.fromEntries(
  Object.entries(samples).map(([name, list]) => [
    name,
    {
      rps: Math.round(median(list.map((s) => s.rps))),
      cpuMicrosPerRequest: Number(median(list.map((s) => s.cpuMicrosPerRequest)).toFixed(1)),
      p50Ms: Number(median(list.map((s) => s.p50Ms)).toFixed(2)),
      p99Ms: Number(median(list.map((s) => s.p99Ms)).toFixed(2)),
      errors: list.reduce((sum, s) => sum + s.errors, 0),
    },
  ]),
);
const discarded = summary['plain node:http (body discarded)']!;
const parsed = summary['plain node:http (body parsed)']!;
const sim = summary['vllm-kit simulator']!;
console.table(summary);
console.log(
  JSON.stringify({
    bench: 'simulator',
    rounds,
    connections,
    durationMs,
    node: process.version,
    summary,
    throughputVsDiscarded: Number((sim.rps / discarded.rps).toFixed(3)),
    throughputVsParsed: Number((sim.rps / parsed.rps).toFixed(3)),
    cpuVsDiscarded: Number((sim.cpuMicrosPerRequest / discarded.cpuMicrosPerRequest).toFixed(3)),
    cpuVsParsed: Number((sim.cpuMicrosPerRequest / parsed.cpuMicrosPerRequest).toFixed(3)),
  }),
);
if (Object.values(summary).some((s) => s.errors > 0)) process.exitCode = 1;
