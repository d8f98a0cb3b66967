// Scenario: fair admission and the shared upstream limit.
// (1) At 150% of the upstream's capacity, one API key offers 10× the load of each of three others (Poisson arrivals,
// streamed chat). The three light keys' p99 time to first token is compared with their solo run (the same three
// alone); Jain's fairness index is taken on each key's served rate over its max-min fair share; goodput under the fair
// policy is compared with FIFO's (one gateway each, the same arrivals).
// (2) Two gateway processes (2 workers each) with UPSTREAM_CONCURRENCY on Redis in front of one simulator: the
// simulator's peak in-flight requests against the limit, its mean utilisation, and what taking a permit costs
// (acquire + release, µs, Redis and memory).
// Run: npm run build && npx tsx bench/scenarios/fairness.ts [--quick]

import { resolve } from 'node:path';
import { Redis } from 'ioredis';
import { createRandom } from '../../src/testing/generation.js';
import { startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { kit } from '../lib/kit.js';
import { ClientPool, closedLoopRun, percentile, send } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const durationMs = quick ? 3000 : 12_000;
const warmupMs = quick ? 500 : 2000;
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const SLOTS = 32;

// An upstream whose requests take ~280 ms (120 ms to the first token — an 8B model's prefill under moderate load —
// and 40 tokens at 4 ms), ±20% jitter: capacity is SLOTS requests in flight (the gateway's LIMIT_CONCURRENCY), about
// SLOTS / 0.28 s. (Without jitter every slot frees in lockstep with the others and a light key's request waits for
// the next whole batch: a simulator artefact, not the scheduler.)
const upstream = { ttftMs: 120, itlMs: 4, outputTokens: 40, jitter: 0.2, maxNumSeqs: 1024, batchSlowdown: 0 };
const servers = resolve(import.meta.dirname, '../servers');
const sim = await startChild(resolve(servers, 'simulator.ts'), [JSON.stringify(upstream)]);
const KEYS = ['heavy', 'light1', 'light2', 'light3'] as const;
const LIGHT = KEYS.slice(1);
type KeyName = (typeof KEYS)[number];
const gatewayEnv = {
  RATE_LIMIT_POINTS: '2000000',
  WORKERS: '1',
  LIMIT_CONCURRENCY: String(SLOTS),
  MAX_QUEUE: '100000',
  QUEUE_TIMEOUT_MS: '120000',
};
const limitedKeys = KEYS.map((name) => ({ name, rpm: null, tpm: null }));
const fair = await startGateway(sim.url, { ...gatewayEnv, QUEUE_POLICY: 'fair' }, [], limitedKeys);
const fifo = await startGateway(sim.url, { ...gatewayEnv, QUEUE_POLICY: 'fifo' }, [], limitedKeys);
const body = JSON.stringify({ messages: [{ role: 'user', content: 'Tell me a story.' }], stream: true });

/** Capacity, measured: SLOTS closed loops for a few seconds through the fair gateway. */
async function capacity(): Promise<number> {
  const clients = new ClientPool(fair.url);
  const run = await closedLoopRun(
    (loop) =>
      send(
        clients.for(loop),
        { path: '/v1/chat/completions', body, headers: { authorization: `Bearer ${fair.keys.heavy}` } },
        true,
      ),
    { concurrency: SLOTS, durationMs: quick ? 1500 : 4000, warmupMs: 500 },
  );
  await clients.close();
  return (run.results.filter((r) => r.status === 200).length / run.elapsedMs) * 1000;
}

interface Arrival {
  key: KeyName;
  at: number;
}

/** Poisson arrivals per key over warm-up + duration, the same for every run (seeded). */
function arrivals(rates: Partial<Record<KeyName, number>>): Arrival[] {
  const list: Arrival[] = [];
  for (const [i, key] of KEYS.entries()) {
    const rate = rates[key];
    if (!rate) continue;
    const random = createRandom(100 + i);
    let t = 0;
    while (true) {
      t += (-Math.log(1 - random()) / rate) * 1000;
      if (t >= warmupMs + durationMs) break;
      list.push({ key, at: t });
    }
  }
  return list.sort((a, b) => a.at - b.at);
}

interface Result {
  key: KeyName;
  at: number;
  status: number;
  ttftMs: number;
  endAt: number;
}

/** Plays the arrivals against a gateway (each request on the client address of its key). */
async function play(gateway: typeof fair, list: Arrival[]): Promise<Result[]> {
  const clients = new ClientPool(gateway.url);
  const begin = performance.now();
  const pending: Promise<Result>[] = [];
  for (const arrival of list) {
    const wait = begin + arrival.at - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const scheduled = begin + arrival.at;
    pending.push(
      send(
        clients.for(KEYS.indexOf(arrival.key)),
        {
          path: '/v1/chat/completions',
          body,
          headers: { authorization: `Bearer ${gateway.keys[arrival.key]}` },
        },
        true,
      ).then((o) => {
        const late = performance.now() - o.ms - scheduled;
        return {
          key: arrival.key,
          at: arrival.at,
          status: o.status,
          ttftMs: o.firstByteMs + late,
          endAt: arrival.at + late + o.ms,
        };
      }),
    );
  }
  const results = await Promise.all(pending);
  await clients.close();
  return results;
}

/** Max-min fair shares of `capacity` among demands (water filling). */
function maxMinShares(demand: Record<string, number>, capacity: number): Record<string, number> {
  const shares: Record<string, number> = {};
  let left = capacity;
  let open = Object.keys(demand).sort((a, b) => demand[a]! - demand[b]!);
  while (open.length > 0) {
    const even = left / open.length;
    const [smallest] = open;
    if (demand[smallest!]! <= even) {
      shares[smallest!] = demand[smallest!]!;
      left -= demand[smallest!]!;
      open = open.slice(1);
    } else {
      for (const key of open) shares[key] = even;
      open = [];
    }
  }
  return shares;
}

function analyse(results: Result[], list: Arrival[]) {
  const windowStart = warmupMs;
  const windowEnd = warmupMs + durationMs;
  const seconds = durationMs / 1000;
  const served: Record<string, number> = {};
  const demand: Record<string, number> = {};
  for (const key of KEYS) {
    served[key] =
      results.filter(
        (r) => r.key === key && r.status === 200 && r.endAt >= windowStart && r.endAt < windowEnd,
      ).length / seconds;
    demand[key] =
      list.filter((a) => a.key === key && a.at >= windowStart && a.at < windowEnd).length / seconds;
  }
  const goodput = Object.values(served).reduce((a, b) => a + b, 0);
  const shares = maxMinShares(demand, goodput);
  const x = KEYS.filter((k) => demand[k]! > 0).map((k) => served[k]! / shares[k]!);
  const jain = x.reduce((a, b) => a + b, 0) ** 2 / (x.length * x.reduce((a, b) => a + b * b, 0));
  const lightTtft = results
    .filter((r) => LIGHT.includes(r.key as never) && r.at >= windowStart && r.status === 200)
    .map((r) => r.ttftMs)
    .sort((a, b) => a - b);
  const heavyTtft = results
    .filter((r) => r.key === 'heavy' && r.at >= windowStart && r.status === 200)
    .map((r) => r.ttftMs)
    .sort((a, b) => a - b);
  const r1 = (n: number) => Number(n.toFixed(1));
  return {
    goodputRps: r1(goodput),
    servedRps: Object.fromEntries(KEYS.map((k) => [k, r1(served[k]!)])),
    demandRps: Object.fromEntries(KEYS.map((k) => [k, r1(demand[k]!)])),
    jain: Number(jain.toFixed(3)),
    lightTtftP50Ms: Math.round(percentile(lightTtft, 50)),
    lightTtftP99Ms: Math.round(percentile(lightTtft, 99)),
    heavyTtftP50Ms: heavyTtft.length ? Math.round(percentile(heavyTtft, 50)) : null,
    errors: results.filter((r) => r.status !== 200).length,
  };
}

const capacityRps = await capacity();
const offered = 1.5 * capacityRps;
const light = offered / 13;
const mixed = arrivals({ heavy: 10 * light, light1: light, light2: light, light3: light });
const solo = arrivals({ light1: light, light2: light, light3: light });
const soloRun = analyse(await play(fair, solo), solo);
const fairRun = analyse(await play(fair, mixed), mixed);
const fifoRun = analyse(await play(fifo, mixed), mixed);
await Promise.all([fair.stop(), fifo.stop()]);

const r3 = (n: number) => Number(n.toFixed(3));
const fairness = {
  capacityRps: Math.round(capacityRps),
  offeredRps: Math.round(offered),
  solo: soloRun,
  fair: fairRun,
  fifo: fifoRun,
  lightTtftP99VsSolo: {
    fair: r3(fairRun.lightTtftP99Ms / soloRun.lightTtftP99Ms),
    fifo: r3(fifoRun.lightTtftP99Ms / soloRun.lightTtftP99Ms),
  },
  goodputFairVsFifo: r3(fairRun.goodputRps / fifoRun.goodputRps),
};
console.log(JSON.stringify(fairness, null, 2));

// ── (2) one limit across two gateway processes on Redis ─────────────────────────────────────────────────────────

const LIMIT = 16;
const redis = new Redis(REDIS_URL);
await redis.del(`{vllm-kit:permits:gateway}:${sim.url}`);
const sharedEnv = {
  RATE_LIMIT_POINTS: '2000000',
  WORKERS: '2',
  REDIS_URL,
  UPSTREAM_CONCURRENCY: String(LIMIT),
  LIMIT_CONCURRENCY: '64',
  QUEUE_TIMEOUT_MS: '120000',
};
const first = await startGateway(sim.url, sharedEnv);
const second = await startGateway(sim.url, sharedEnv);
const samples: number[] = [];
let sampling = true;
const sampler = (async () => {
  while (sampling) {
    const stats = (await sim.ask('stats')) as { stats: { running: number; waiting: number } };
    samples.push(stats.stats.running + stats.stats.waiting);
    await new Promise((r) => setTimeout(r, 2));
  }
})();
const loops = [first, second].map(async (gateway) => {
  const clients = new ClientPool(gateway.url);
  await closedLoopRun(
    (loop) =>
      send(
        clients.for(loop),
        { path: '/v1/chat/completions', body, headers: { authorization: `Bearer ${gateway.key}` } },
        true,
      ),
    { concurrency: 32, durationMs: quick ? 2000 : 8000, warmupMs: 1000 },
  );
  await clients.close();
});
await Promise.all(loops);
sampling = false;
await sampler;
await Promise.all([first.stop(), second.stop()]);
await sim.stop();
// The middle of the run (the loops start and stop at slightly different times).
const steady = samples.slice(Math.floor(samples.length * 0.2), Math.floor(samples.length * 0.8));
const shared = {
  limit: LIMIT,
  peakInFlight: Math.max(...samples),
  utilisation: r3(steady.reduce((a, b) => a + b, 0) / steady.length / LIMIT),
  samples: samples.length,
};

/** acquire + release, µs, one at a time (no contention): what a request pays to take its permit. */
async function permitCost(store: 'memory' | Redis) {
  const pool = kit.createPermitPool({ permits: 1000, store, name: `bench-${process.pid}` });
  const times: number[] = [];
  for (let i = 0; i < (quick ? 200 : 3000); i++) {
    const t = performance.now();
    const permit = await pool.acquire('replica');
    permit.release();
    times.push((performance.now() - t) * 1000);
  }
  await pool.close();
  times.sort((a, b) => a - b);
  return { p50Micros: Math.round(percentile(times, 50)), p99Micros: Math.round(percentile(times, 99)) };
}
const permitMicros = { memory: await permitCost('memory'), redis: await permitCost(redis) };
await redis.quit();
console.log(JSON.stringify({ shared, permitMicros }, null, 2));
console.log(JSON.stringify({ bench: 'fairness', durationMs, fairness, shared, permitMicros }));
if (shared.peakInFlight > LIMIT) process.exitCode = 1;
