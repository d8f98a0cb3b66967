// Scenario 4, saturation: offered load at twice the upstream's capacity. Straight to the simulator, vLLM's unbounded
// waiting queue grows and so does everyone's latency; through the gateway (2 workers, limiter sized to the upstream's
// slots, a short bounded queue), the excess is shed at once with 503 + Retry-After, the upstream queue stays empty
// and goodput stays at capacity. One abusive client address sends 20 requests/s on top and meets 429 + Retry-After.
// Run: npm run build && npx tsx bench/scenarios/saturation.ts [--quick]
import { resolve } from 'node:path';
import { createRandom } from '../../src/testing/generation.js';
import { startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { ClientPool, closedLoopRun, median, type Outcome, openLoop, send, summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const durationMs = quick ? 2000 : 15_000;
const warmupMs = quick ? 500 : 2000;
const SLOTS = 32;
// 50 ms to the first token, 10 ms a token, 16 tokens: 200 ms a request, so 32 slots serve 160 requests/s.
const upstream = { maxNumSeqs: SLOTS, ttftMs: 50, itlMs: 10, jitter: 0, keepAliveTimeoutMs: 5000 };
const nominalCapacity = SLOTS / 0.2;
const LEGIT_ADDRESSES = 16_384;
const ABUSER = LEGIT_ADDRESSES; // one more address, sending far above 20 a minute
const ABUSER_RATE = 20;

const sim = await startChild(resolve(import.meta.dirname, '../servers/simulator.ts'), [
  JSON.stringify(upstream),
]);
const workers = 2;
const gateway = await startGateway(sim.url, {
  WORKERS: String(workers),
  // Each worker has its own limiter: together they hold exactly the upstream's slots, plus a short queue.
  LIMIT_CONCURRENCY: String(SLOTS / workers),
  MAX_QUEUE: String(SLOTS / workers / 2),
  QUEUE_TIMEOUT_MS: '2000',
});
const body = JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 16 });

/** The upstream's waiting queue, sampled every 100 ms while `during` runs. */
async function sampleWaiting<T>(
  during: Promise<T>,
): Promise<{ result: T; waitingMax: number; waitingMedian: number }> {
  const waiting: number[] = [];
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      const reply = (await sim.ask('stats')) as { stats: { waiting: number } };
      waiting.push(reply.stats.waiting);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const result = await during;
  stop = true;
  await sampler;
  return { result, waitingMax: Math.max(...waiting), waitingMedian: median(waiting) };
}

// Capacity: the simulator with exactly as many callers as slots (nothing queues).
const capacityClients = new ClientPool(sim.url);
const capacityRun = await closedLoopRun(
  (loop) => send(capacityClients.for(loop), { path: '/v1/chat/completions', body }),
  { concurrency: SLOTS, durationMs: quick ? 1000 : 5000, warmupMs },
);
await capacityClients.close();
const capacity = (capacityRun.results.filter((o) => o.status === 200).length / capacityRun.elapsedMs) * 1000;
const offeredRate = 2 * capacity;

async function overload(url: string, key: string) {
  const clients = new ClientPool(url);
  const pick = createRandom(7);
  const request = { path: '/v1/chat/completions', body, headers: { authorization: `Bearer ${key}` } };
  const legit = openLoop({
    ratePerSec: offeredRate,
    durationMs,
    warmupMs,
    seed: 1,
    send: () => send(clients.for(Math.floor(pick() * LEGIT_ADDRESSES)), request),
  });
  const abuser = openLoop({
    ratePerSec: ABUSER_RATE,
    durationMs,
    warmupMs,
    seed: 2,
    send: () => send(clients.for(ABUSER), request),
  });
  const { result, waitingMax, waitingMedian } = await sampleWaiting(Promise.all([legit, abuser]));
  await clients.close();
  const [legitRun, abuserRun] = result;
  // Goodput: successful answers per second, from the start of the window until the last one came back (a queue
  // that keeps answering long after the load stopped does not get to count those answers as if on time).
  const describe = (outcomes: Outcome[], finishedMs: number) => {
    const statuses: Record<string, number> = {};
    for (const o of outcomes) statuses[o.status] = (statuses[o.status] ?? 0) + 1;
    const ok = outcomes.filter((o) => o.status === 200);
    const shed = outcomes.filter((o) => o.status === 503 || o.status === 429);
    const okLatency = summarize(ok.map((o) => o.ms));
    const shedLatency = summarize(shed.map((o) => o.ms));
    return {
      statuses,
      goodputRps: Math.round((ok.length / finishedMs) * 1000),
      okP50Ms: Math.round(okLatency.p50),
      okP99Ms: Math.round(okLatency.p99),
      shedP50Ms: Number(shedLatency.p50.toFixed(2)),
      shedP99Ms: Number(shedLatency.p99.toFixed(2)),
      shedWithRetryAfter: shed.filter((o) => o.retryAfter !== undefined).length,
      shed: shed.length,
    };
  };
  return {
    legit: describe(legitRun.outcomes, legitRun.finishedMs),
    abuser: describe(abuserRun.outcomes, abuserRun.finishedMs),
    drainMs: Math.round(Math.max(legitRun.finishedMs, abuserRun.finishedMs) - legitRun.elapsedMs),
    upstreamWaitingMax: waitingMax,
    upstreamWaitingMedian: waitingMedian,
  };
}

const direct = await overload(sim.url, 'unused');
const through = await overload(gateway.url, gateway.key);
await gateway.stop();
await sim.stop();

const result = {
  bench: 'saturation',
  upstream,
  nominalCapacityRps: nominalCapacity,
  measuredCapacityRps: Math.round(capacity),
  offeredRps: Math.round(offeredRate),
  abuserRps: ABUSER_RATE,
  durationMs,
  gateway: { workers, limitConcurrencyPerWorker: SLOTS / workers, maxQueuePerWorker: SLOTS / workers / 2 },
  direct,
  through,
  goodputVsCapacity: Number(((through.legit.goodputRps + through.abuser.goodputRps) / capacity).toFixed(3)),
  everyShedHasRetryAfter:
    through.legit.shed + through.abuser.shed ===
    through.legit.shedWithRetryAfter + through.abuser.shedWithRetryAfter,
};
console.table({
  'straight to the simulator': {
    goodputRps: direct.legit.goodputRps + direct.abuser.goodputRps,
    okP50Ms: direct.legit.okP50Ms,
    okP99Ms: direct.legit.okP99Ms,
    upstreamWaitingMax: direct.upstreamWaitingMax,
    statuses: JSON.stringify(direct.legit.statuses),
  },
  'through the gateway': {
    goodputRps: through.legit.goodputRps + through.abuser.goodputRps,
    okP50Ms: through.legit.okP50Ms,
    okP99Ms: through.legit.okP99Ms,
    upstreamWaitingMax: through.upstreamWaitingMax,
    statuses: JSON.stringify(through.legit.statuses),
  },
  'abusive address, through the gateway': {
    goodputRps: through.abuser.goodputRps,
    okP50Ms: through.abuser.okP50Ms,
    okP99Ms: through.abuser.okP99Ms,
    upstreamWaitingMax: Number.NaN,
    statuses: JSON.stringify(through.abuser.statuses),
  },
});
console.log(JSON.stringify(result));
if (!result.everyShedHasRetryAfter) process.exitCode = 1;
