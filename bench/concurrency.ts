// Bench: the limiter's overhead per run beyond p-limit's own, and a saturation run against the simulator
// (maxNumSeqs 64): the upstream queue stays near zero and throughput near capacity.
// Run: npm run build && npx tsx bench/concurrency.ts [--quick]
import { resolve } from 'node:path';
import pLimit from 'p-limit';
import { startChild } from './lib/child.js';
import { kit } from './lib/kit.js';
import { closedLoopCalls, median } from './lib/load.js';

const quick = process.argv.includes('--quick');

async function perRun(concurrent: number): Promise<{ pLimitNs: number; limiterNs: number }> {
  const n = quick ? 20_000 : 300_000;
  const task = async () => 1;
  const limit = pLimit(concurrent);
  const limiter = kit.createConcurrencyLimiter({
    concurrency: concurrent,
    maxQueue: Number.POSITIVE_INFINITY,
  });
  const time = async (run: () => Promise<unknown>) => {
    const started = process.hrtime.bigint();
    // `concurrent` callers in parallel, each awaiting its runs in turn.
    await Promise.all(
      Array.from({ length: concurrent }, async () => {
        for (let i = 0; i < n / concurrent; i++) await run();
      }),
    );
    return Number(process.hrtime.bigint() - started) / n;
  };
  const pLimitNs: number[] = [];
  const limiterNs: number[] = [];
  for (let round = 0; round < (quick ? 1 : 5); round++) {
    pLimitNs.push(await time(() => limit(task)));
    limiterNs.push(await time(() => limiter.run(task)));
  }
  await limiter.close();
  return { pLimitNs: median(pLimitNs), limiterNs: median(limiterNs) };
}

async function saturation() {
  const sim = await startChild(resolve(import.meta.dirname, 'servers/simulator.ts'), [
    JSON.stringify({ maxNumSeqs: 64, ttftMs: 20, itlMs: 5 }),
  ]);
  const client = kit.createVllmClient({ baseUrl: sim.url, connections: 512 });
  const body = { messages: [{ role: 'user' as const, content: 'hi' }], max_tokens: 16 };
  // Nominal service time: 20 ms + 15 × 5 ms = 95 ms, so 64 / 0.095 s ≈ 674 requests/s; the simulator's measured
  // capacity is what it serves when saturated with its own queue always full (the unbounded run).
  const nominal = 64 / 0.095;
  const durationMs = quick ? 1000 : 8000;
  const run = async (limited: boolean) => {
    const limiter = kit.createConcurrencyLimiter({ concurrency: 64, maxQueue: Number.POSITIVE_INFINITY });
    const call = () =>
      limited ? limiter.run(() => client.chatCompletion(body)) : client.chatCompletion(body);
    // The upstream's waiting queue, sampled every 100 ms.
    const waiting: number[] = [];
    const sampler = setInterval(async () => {
      const reply = (await sim.ask('stats')) as { stats: { waiting: number } };
      waiting.push(reply.stats.waiting);
    }, 100);
    // 256 callers: four times the upstream's slots.
    const result = await closedLoopCalls(call, {
      concurrency: 256,
      durationMs,
      warmupMs: quick ? 200 : 1000,
    });
    clearInterval(sampler);
    await limiter.close();
    return {
      ...result,
      ofNominal: result.requestsPerSec / nominal,
      upstreamWaitingMedian: median(waiting),
      upstreamWaitingMax: Math.max(...waiting),
    };
  };
  const unlimited = await run(false);
  const limited = await run(true);
  await client.close();
  await sim.stop();
  return {
    nominalCapacity: Math.round(nominal),
    unlimited,
    limited,
    goodputVsSaturated: limited.requestsPerSec / unlimited.requestsPerSec,
  };
}

const overhead1 = await perRun(1);
const overhead64 = await perRun(64);
const sat = await saturation();
const r = (n: number) => Number(n.toFixed(3));
console.table({
  'p-limit, 1 caller': { nsPerRun: r(overhead1.pLimitNs) },
  'limiter, 1 caller': { nsPerRun: r(overhead1.limiterNs) },
  'p-limit, 64 callers': { nsPerRun: r(overhead64.pLimitNs) },
  'limiter, 64 callers': { nsPerRun: r(overhead64.limiterNs) },
});
console.table({
  'unbounded (vLLM queues)': {
    rps: Math.round(sat.unlimited.requestsPerSec),
    p50Ms: r(sat.unlimited.p50Ms),
    p99Ms: r(sat.unlimited.p99Ms),
    ofNominal: r(sat.unlimited.ofNominal),
    upstreamWaiting: sat.unlimited.upstreamWaitingMedian,
  },
  'limiter at 64 (gateway queues)': {
    rps: Math.round(sat.limited.requestsPerSec),
    p50Ms: r(sat.limited.p50Ms),
    p99Ms: r(sat.limited.p99Ms),
    ofNominal: r(sat.limited.ofNominal),
    upstreamWaiting: sat.limited.upstreamWaitingMedian,
  },
});
console.log(
  JSON.stringify({
    bench: 'concurrency',
    node: process.version,
    overheadNsPerRun: {
      oneCaller: r(overhead1.limiterNs - overhead1.pLimitNs),
      sixtyFourCallers: r(overhead64.limiterNs - overhead64.pLimitNs),
    },
    saturation: sat,
  }),
);
