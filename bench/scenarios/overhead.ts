// Scenario 1, overhead: the zero-latency simulator straight; behind a bare node:http + undici passthrough (the honest
// limit of any Node gateway); behind the Fastify and Express stacks a team would assemble instead; and behind the
// reference gateway (every piece on, request logs to a file) with 1 and 2 workers. Each round measures every target
// with autocannon (32 connections) and with our own closed-loop generator (1 and 32 callers, each on its own source
// address); targets are rotated each round, and ratios are computed per round, then their medians reported.
// Run: npx tsx bench/scenarios/overhead.ts [--quick]
import { resolve } from 'node:path';
import { runAutocannon } from '../lib/autocannon.js';
import { type ChildServer, processCpuMicros, startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { ClientPool, closedLoopRun, median, send, summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const rounds = quick ? 1 : 8;
const autocannonSec = quick ? 1 : 3;
const durationMs = quick ? 400 : 2000;
const warmupMs = quick ? 150 : 500;
const concurrencies = [1, 32];
const loaded = 32;
const body = JSON.stringify({
  messages: [{ role: 'user', content: 'Say something short.' }],
  max_tokens: 16,
});
const PEER_KEY = 'vk-bench-peer-key';

const servers = resolve(import.meta.dirname, '../servers');
const sim: ChildServer = await startChild(resolve(servers, 'simulator.ts'));
const passthrough = await startChild(resolve(servers, 'passthrough.ts'), [sim.url]);
const fastify = await startChild(resolve(servers, 'fastify-stack.ts'), [sim.url, PEER_KEY]);
const express = await startChild(resolve(servers, 'express-stack.ts'), [sim.url, PEER_KEY]);
// Every piece on: rate limit (checked on every request; its budget raised so that no request is refused, since this
// measures cost, not policy), key check through the token cache, concurrency limiter, metrics, request logs.
const gatewayEnv = { RATE_LIMIT_POINTS: '2000000' };
const gateway1 = await startGateway(sim.url, { ...gatewayEnv, WORKERS: '1' });
const gateway2 = await startGateway(sim.url, { ...gatewayEnv, WORKERS: '2' });

// `pids`: the processes whose CPU time is the target's own cost (the simulator's is the same for every target).
const child = (c: ChildServer) => ({ url: c.url, key: PEER_KEY, pids: () => [c.pid] });
const targets: Record<string, { url: string; key: string; pids: () => number[] }> = {
  direct: { url: sim.url, key: PEER_KEY, pids: () => [sim.pid] },
  passthrough: child(passthrough),
  'fastify stack': child(fastify),
  'express stack': child(express),
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

/** Our generator: a closed loop of `concurrency` callers, each on its own source address. */
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

/** autocannon: 32 keep-alive connections from one address (rate limits see one client: their budget is raised). */
async function measureAutocannon(name: string): Promise<Sample> {
  const { url, key, pids } = targets[name]!;
  const processes = pids();
  const before = processCpuMicros(processes);
  const run = await runAutocannon({
    url,
    path: '/v1/chat/completions',
    body,
    headers: { authorization: `Bearer ${key}` },
    connections: loaded,
    durationSec: autocannonSec,
  });
  const cpu = processCpuMicros(processes) - before;
  return {
    rps: run.rps,
    cpuMicrosPerRequest: cpu / Math.max(1, run.requests),
    p50: run.p50Ms,
    p90: run.p50Ms,
    p99: run.p99Ms,
    errors: run.errors + run.non2xx,
  };
}

// Warm every target up (JIT tiers, pools, caches) with both generators before anything counts: a server with more
// code on its hot path takes longer to reach its steady state, and the first seconds would measure that instead.
for (const name of names) {
  await measureAutocannon(name);
  await measure(name, 8);
}

const ours = new Map<string, Sample[]>();
const cannon = new Map<string, Sample[]>();
const push = (map: Map<string, Sample[]>, key: string, sample: Sample) =>
  map.set(key, [...(map.get(key) ?? []), sample]);
// The machine is shared: its speed drifts over minutes. Each round measures every target with one generator, then
// every target with the other, in an order rotated each round, so the two sides of a ratio are seconds apart.
for (let round = 0; round < rounds; round++) {
  const order = names.map((_, i) => names[(i + round) % names.length]!);
  for (const name of order) push(cannon, name, await measureAutocannon(name));
  for (const concurrency of concurrencies) {
    for (const name of order) push(ours, `${name}@${concurrency}`, await measure(name, concurrency));
  }
}
await Promise.all([gateway1.stop(), gateway2.stop(), passthrough.stop(), fastify.stop(), express.stop()]);
await sim.stop();

const r2 = (n: number) => Number(n.toFixed(2));
const r3 = (n: number) => Number(n.toFixed(3));
const points = names.flatMap((target) =>
  concurrencies.map((concurrency) => {
    const list = ours.get(`${target}@${concurrency}`)!;
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
const autocannon = names.map((target) => {
  const list = cannon.get(target)!;
  return {
    target,
    rps: Math.round(median(list.map((s) => s.rps))),
    cpuMicrosPerRequest: Math.round(median(list.map((s) => s.cpuMicrosPerRequest))),
    p50Ms: median(list.map((s) => s.p50)),
    p99Ms: median(list.map((s) => s.p99)),
    errors: list.reduce((sum, s) => sum + s.errors, 0),
  };
});

/** The median over rounds of a per-round ratio (both sides measured in the same round, minutes apart at most). */
function ratio(map: Map<string, Sample[]>, a: string, b: string, pick: (s: Sample) => number = (s) => s.rps) {
  const left = map.get(a)!;
  const right = map.get(b)!;
  return r2(median(left.map((s, i) => pick(s) / pick(right[i]!))));
}
const perRoundDifference = (a: string, b: string) => {
  const left = ours.get(a)!;
  const right = ours.get(b)!;
  return r3(median(left.map((s, i) => s.p50 - right[i]!.p50)));
};
const byGenerator = (map: Map<string, Sample[]>, suffix: string) => ({
  gateway1VsPassthrough: ratio(map, `gateway, 1 worker${suffix}`, `passthrough${suffix}`),
  gateway2VsPassthrough: ratio(map, `gateway, 2 workers${suffix}`, `passthrough${suffix}`),
  gateway1VsFastify: ratio(map, `gateway, 1 worker${suffix}`, `fastify stack${suffix}`),
  fastifyVsPassthrough: ratio(map, `fastify stack${suffix}`, `passthrough${suffix}`),
  expressVsPassthrough: ratio(map, `express stack${suffix}`, `passthrough${suffix}`),
  passthroughVsDirect: ratio(map, `passthrough${suffix}`, `direct${suffix}`),
  // Own CPU per request against the passthrough's (lower is better; 1.0 would be free).
  gateway1CpuVsPassthrough: ratio(
    map,
    `gateway, 1 worker${suffix}`,
    `passthrough${suffix}`,
    (s) => s.cpuMicrosPerRequest,
  ),
});
const ratios = {
  concurrency: loaded,
  autocannon: byGenerator(cannon, ''),
  ours: byGenerator(ours, `@${loaded}`),
  // Added latency with one caller (our generator): what a request pays for the hop and every check, no queueing.
  addedP50MsOneCaller: {
    gateway1OverPassthrough: perRoundDifference('gateway, 1 worker@1', 'passthrough@1'),
    passthroughOverDirect: perRoundDifference('passthrough@1', 'direct@1'),
    gateway1OverDirect: perRoundDifference('gateway, 1 worker@1', 'direct@1'),
  },
};
console.table(points);
console.table(autocannon);
console.log(JSON.stringify(ratios, null, 2));
console.log(
  JSON.stringify({
    bench: 'overhead',
    rounds,
    durationMs,
    autocannonSec,
    concurrencies,
    points,
    autocannon,
    ratios,
  }),
);
if (points.some((p) => p.errors > 0) || autocannon.some((p) => p.errors > 0)) process.exitCode = 1;
