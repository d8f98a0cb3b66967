// Scenario 1, overhead: the zero-latency simulator straight, behind a bare node:http + undici passthrough (the limit
// of any Node gateway) and behind the full reference gateway (every piece on) with 1 and 2 workers. Closed loops at
// several concurrencies, each caller on its own source address; targets rotated each round; medians reported.
// Run: npm run build && npx tsx bench/scenarios/overhead.ts [--quick]
import { resolve } from 'node:path';
import { type ChildServer, processCpuMicros, startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { ClientPool, closedLoopRun, median, send, summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const rounds = quick ? 1 : 3;
const durationMs = quick ? 400 : 2500;
const warmupMs = quick ? 150 : 500;
const concurrencies = quick ? [1, 32] : [1, 8, 32, 128];
const body = JSON.stringify({
  messages: [{ role: 'user', content: 'Say something short.' }],
  max_tokens: 16,
});

const servers = resolve(import.meta.dirname, '../servers');
const sim: ChildServer = await startChild(resolve(servers, 'simulator.ts'));
const passthrough = await startChild(resolve(servers, 'passthrough.ts'), [sim.url]);
// Every piece on: rate limit (checked on every request; its budget raised so that no request is refused, since this
// measures cost, not policy), key check through the token cache, concurrency limiter, metrics, request logs.
const gatewayEnv = { RATE_LIMIT_POINTS: '2000000' };
const gateway1 = await startGateway(sim.url, { ...gatewayEnv, WORKERS: '1' });
const gateway2 = await startGateway(sim.url, { ...gatewayEnv, WORKERS: '2' });

// `pids`: the processes whose CPU time is the target's own cost (the simulator's is the same for every target).
const targets: Record<string, { url: string; key: string; pids: () => number[] }> = {
  direct: { url: sim.url, key: 'unused', pids: () => [sim.pid] },
  passthrough: { url: passthrough.url, key: 'unused', pids: () => [passthrough.pid] },
  'gateway, 1 worker': { url: gateway1.url, key: gateway1.key, pids: gateway1.pids },
  'gateway, 2 workers': { url: gateway2.url, key: gateway2.key, pids: gateway2.pids },
};
const names = Object.keys(targets);

interface Sample {
  rps: number;
  cpuMicrosPerRequest: number;
  p50: number;
  p90: number;
  p99: number;
  errors: number;
}
const samples = new Map<string, Sample[]>();

async function measure(name: string, concurrency: number): Promise<Sample> {
  const { url, key, pids } = targets[name]!;
  const clients = new ClientPool(url);
  const request = { path: '/v1/chat/completions', body, headers: { authorization: `Bearer ${key}` } };
  const processes = pids();
  let cpuAtOpen = 0;
  let cpu = 0;
  try {
    const run = await closedLoopRun((loop) => send(clients.for(loop), request), {
      concurrency,
      durationMs,
      warmupMs,
      onWindow: (edge) => {
        if (edge === 'open') cpuAtOpen = processCpuMicros(processes);
        else cpu = processCpuMicros(processes) - cpuAtOpen;
      },
    });
    const ok = run.results.filter((o) => o.status === 200);
    const latency = summarize(ok.map((o) => o.ms));
    return {
      rps: (ok.length / run.elapsedMs) * 1000,
      cpuMicrosPerRequest: cpu / run.results.length,
      ...latency,
      errors: run.results.length - ok.length + run.errors,
    };
  } finally {
    await clients.close();
  }
}

for (let round = 0; round < rounds; round++) {
  const order = names.map((_, i) => names[(i + round) % names.length]!);
  for (const name of order) {
    for (const concurrency of concurrencies) {
      const key = `${name}@${concurrency}`;
      const list = samples.get(key) ?? [];
      list.push(await measure(name, concurrency));
      samples.set(key, list);
    }
  }
}
await Promise.all([gateway1.stop(), gateway2.stop(), passthrough.stop()]);
await sim.stop();

const r2 = (n: number) => Number(n.toFixed(2));
const r3 = (n: number) => Number(n.toFixed(3));
const points = names.flatMap((target) =>
  concurrencies.map((concurrency) => {
    const list = samples.get(`${target}@${concurrency}`)!;
    return {
      target,
      concurrency,
      rps: Math.round(median(list.map((s) => s.rps))),
      cpuMicrosPerRequest: Math.round(median(list.map((s) => s.cpuMicrosPerRequest))),
      p50Ms: r3(median(list.map((s) => s.p50))),
      p90Ms: r3(median(list.map((s) => s.p90))),
      p99Ms: r3(median(list.map((s) => s.p99))),
      errors: list.reduce((sum, s) => sum + s.errors, 0),
    };
  }),
);
const at = (target: string, concurrency: number) =>
  points.find((p) => p.target === target && p.concurrency === concurrency)!;
const loaded = 32;
const ratios = {
  concurrency: loaded,
  gateway1VsPassthrough: r2(at('gateway, 1 worker', loaded).rps / at('passthrough', loaded).rps),
  gateway2VsPassthrough: r2(at('gateway, 2 workers', loaded).rps / at('passthrough', loaded).rps),
  passthroughVsDirect: r2(at('passthrough', loaded).rps / at('direct', loaded).rps),
  // CPU per request: the gateway's own processes against the passthrough's, at the same load.
  gateway1CpuVsPassthrough: r2(
    at('gateway, 1 worker', loaded).cpuMicrosPerRequest / at('passthrough', loaded).cpuMicrosPerRequest,
  ),
  // Added latency with one caller: what a request pays for the hop and every check, without queueing.
  addedP50MsOneCaller: {
    passthrough: r3(at('passthrough', 1).p50Ms - at('direct', 1).p50Ms),
    gateway1: r3(at('gateway, 1 worker', 1).p50Ms - at('direct', 1).p50Ms),
    gateway1OverPassthrough: r3(at('gateway, 1 worker', 1).p50Ms - at('passthrough', 1).p50Ms),
  },
  addedP99MsOneCaller: {
    passthrough: r3(at('passthrough', 1).p99Ms - at('direct', 1).p99Ms),
    gateway1: r3(at('gateway, 1 worker', 1).p99Ms - at('direct', 1).p99Ms),
  },
};
console.table(points);
console.table(ratios);
console.log(JSON.stringify({ bench: 'overhead', rounds, durationMs, concurrencies, points, ratios }));
if (points.some((p) => p.errors > 0)) process.exitCode = 1;
