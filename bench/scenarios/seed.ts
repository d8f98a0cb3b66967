// Scenario 2, the seed's before and after: a simulated H100 serving Llama-3.1-8B (../shared/VLLM.md: 15 ms to the
// first token, 6.5 ms a token alone and slower as the batch fills, ~200 output tokens a request with a heavy tail),
// streamed chat requests arriving as a Poisson process from 4,096 client addresses, at rising rates. "Before" is the
// seed's unoptimised backend (one process, a 50 ms key query per request that blocks it, a new upstream connection
// per request, no limiter); "after" is the reference gateway with its default configuration (`npm start`). A rate
// is sustained when 99% of its requests succeed and their p99 time to first token stays within the bound.
// Run: npm run build && npx tsx bench/scenarios/seed.ts [--quick]
import { resolve } from 'node:path';
import { createRandom } from '../../src/testing/generation.js';
import { startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { ClientPool, openLoop, send, summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const ratesPerMin = quick ? [160, 1200] : [160, 600, 1200, 1800, 2400];
const durationMs = quick ? 3000 : 15_000;
const warmupMs = quick ? 500 : 2000;
const TTFT_P99_BOUND_MS = 1000;
const MIN_SUCCESS = 0.99;
const ADDRESSES = 4096;

const h100 = {
  ttftMs: 15,
  itlMs: 6.5,
  jitter: 0.2,
  batchSlowdown: 3,
  maxNumSeqs: 256,
  keepAliveTimeoutMs: 5000,
};
const sim = await startChild(resolve(import.meta.dirname, '../servers/simulator.ts'), [JSON.stringify(h100)]);
const before = await startChild(resolve(import.meta.dirname, '../servers/seed-before.ts'), [sim.url]);
const after = await startGateway(sim.url);

// Each request asks something different, so output lengths differ (the simulator's are drawn per prompt).
const body = (i: number) =>
  JSON.stringify({
    messages: [{ role: 'user', content: `Question ${i}: explain how a connection pool works.` }],
    stream: true,
  });

interface Step {
  ratePerMin: number;
  offered: number;
  ok: number;
  successRate: number;
  statuses: Record<string, number>;
  ttftP50Ms: number;
  ttftP99Ms: number;
  e2eP50Ms: number;
  e2eP99Ms: number;
  sustained: boolean;
}

async function sweep(url: string, key: string): Promise<Step[]> {
  const steps: Step[] = [];
  for (const ratePerMin of ratesPerMin) {
    const clients = new ClientPool(url);
    const pick = createRandom(ratePerMin + 1);
    const run = await openLoop({
      ratePerSec: ratePerMin / 60,
      durationMs,
      warmupMs,
      seed: ratePerMin,
      send: (i) =>
        send(
          clients.for(Math.floor(pick() * ADDRESSES)),
          { path: '/v1/chat/completions', body: body(i), headers: { authorization: `Bearer ${key}` } },
          true,
        ),
    });
    await clients.close();
    const statuses: Record<string, number> = {};
    for (const o of run.outcomes) statuses[o.status] = (statuses[o.status] ?? 0) + 1;
    const ok = run.outcomes.filter((o) => o.status === 200);
    const ttft = summarize(ok.map((o) => o.firstByteMs));
    const e2e = summarize(ok.map((o) => o.ms));
    const successRate = run.offered === 0 ? 0 : ok.length / run.offered;
    const step: Step = {
      ratePerMin,
      offered: run.offered,
      ok: ok.length,
      successRate: Number(successRate.toFixed(4)),
      statuses,
      ttftP50Ms: Math.round(ttft.p50),
      ttftP99Ms: Math.round(ttft.p99),
      e2eP50Ms: Math.round(e2e.p50),
      e2eP99Ms: Math.round(e2e.p99),
      sustained: successRate >= MIN_SUCCESS && ttft.p99 <= TTFT_P99_BOUND_MS,
    };
    steps.push(step);
    // Past the first rate it cannot sustain, a backend only queues more: stop its sweep there.
    if (!step.sustained) break;
  }
  return steps;
}

const beforeSteps = await sweep(before.url, 'any-key');
const afterSteps = await sweep(after.url, after.key);
await Promise.all([before.stop(), after.stop()]);
await sim.stop();

const sustained = (steps: Step[]) =>
  Math.max(0, ...steps.filter((s) => s.sustained).map((s) => s.ratePerMin));
const result = {
  bench: 'seed',
  upstream: h100,
  ttftP99BoundMs: TTFT_P99_BOUND_MS,
  minSuccess: MIN_SUCCESS,
  durationMs,
  addresses: ADDRESSES,
  before: beforeSteps,
  after: afterSteps,
  sustainedPerMin: { before: sustained(beforeSteps), after: sustained(afterSteps) },
  // The highest rate tried is a floor for "after": it sustained every rate offered.
  afterSustainedEveryRate: afterSteps.length === ratesPerMin.length && afterSteps.every((s) => s.sustained),
  vsSeedTarget: Number((sustained(afterSteps) / 160).toFixed(1)),
};
console.table(
  [
    ...beforeSteps.map((s) => ({ backend: 'before', ...s })),
    ...afterSteps.map((s) => ({ backend: 'after', ...s })),
  ].map(({ statuses, ...rest }) => ({ ...rest, statuses: JSON.stringify(statuses) })),
);
console.log(JSON.stringify(result));
if (sustained(afterSteps) < 160) process.exitCode = 1;
