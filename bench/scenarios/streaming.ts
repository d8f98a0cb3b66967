// Scenario 3, streaming: what the gateway adds to time to first token and to the gap between chunks, at 1, 64 and
// 1,000 concurrent streams (closed loops, one source address each), against the same streams straight from the
// simulator; and the gateway worker's memory while it holds 1,000 streams. The simulator is an H100-class server
// (1,024 running slots, 15 ms to the first token, 6.5 ms a token slowing to ~64 ms with 1,000 running, no jitter),
// so both targets see the same upstream timing and the difference is the gateway's.
// Run: npm run build && npx tsx bench/scenarios/streaming.ts [--quick]
import { resolve } from 'node:path';
import { startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { ClientPool, closedLoopRun, median, type Outcome, send, summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const concurrencies = quick ? [1, 64] : [1, 64, 1000];
const durationMs = quick ? 1500 : 8000;
const warmupMs = quick ? 500 : 3000;

const upstream = {
  maxNumSeqs: 1024,
  ttftMs: 15,
  itlMs: 6.5,
  batchSlowdown: 9,
  jitter: 0,
  keepAliveTimeoutMs: 5000,
};
const sim = await startChild(resolve(import.meta.dirname, '../servers/simulator.ts'), [
  JSON.stringify(upstream),
]);
// One worker (memory per worker), its limiter and pool sized to the upstream's slots; the rate limit is checked on
// every request but its budget raised, since this measures the streaming path, not the policy.
const gateway = await startGateway(sim.url, {
  WORKERS: '1',
  LIMIT_CONCURRENCY: '1024',
  RATE_LIMIT_POINTS: '2000000',
});
const body = JSON.stringify({
  messages: [{ role: 'user', content: 'Tell me a story.' }],
  max_tokens: 64,
  stream: true,
});

interface Point {
  target: string;
  concurrency: number;
  streams: number;
  failed: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  gapP50Ms: number;
  gapP99Ms: number;
  workerRssMb?: number;
  idleRssMb?: number;
  gatewayTtftMeanMs?: number | undefined;
}
let ttftSeen = { sum: 0, count: 0 };

async function measure(target: 'direct' | 'gateway', concurrency: number): Promise<Point> {
  const url = target === 'direct' ? sim.url : gateway.url;
  const clients = new ClientPool(url);
  const request = { path: '/v1/chat/completions', body, headers: { authorization: `Bearer ${gateway.key}` } };
  const rss: number[] = [];
  const idle = target === 'gateway' ? Math.max(...gateway.workerRss()) : 0;
  let sampler: NodeJS.Timeout | undefined;
  const run = await closedLoopRun((loop) => send(clients.for(loop), request, true), {
    concurrency,
    durationMs,
    warmupMs,
    onWindow: (edge) => {
      if (target !== 'gateway') return;
      if (edge === 'open') sampler = setInterval(() => rss.push(Math.max(...gateway.workerRss())), 250);
      else clearInterval(sampler);
    },
  });
  await clients.close();
  // The gateway's own view: the mean of its time-to-first-byte histogram over this run (it starts timing when its
  // handler starts, so the difference from the client's figure is time spent before the handler ran).
  let gatewayTtftMeanMs: number | undefined;
  if (target === 'gateway') {
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    const read = (name: string) =>
      Number(
        new RegExp(
          `gateway_time_to_first_byte_seconds_${name}\\{route="/v1/chat/completions"\\} (\\S+)`,
        ).exec(metrics)?.[1] ?? 0,
      );
    const sum = read('sum');
    const count = read('count');
    gatewayTtftMeanMs = Number((((sum - ttftSeen.sum) / (count - ttftSeen.count)) * 1000).toFixed(2));
    ttftSeen = { sum, count };
  }
  const ok = run.results.filter((o: Outcome) => o.status === 200 && !o.failed);
  const ttft = summarize(ok.map((o) => o.firstByteMs));
  const gaps = summarize(ok.flatMap((o) => o.gaps ?? []));
  const mb = (bytes: number) => Number((bytes / 1048576).toFixed(1));
  return {
    target,
    concurrency,
    streams: ok.length,
    failed: run.results.length - ok.length + run.errors,
    ttftP50Ms: Number(ttft.p50.toFixed(2)),
    ttftP99Ms: Number(ttft.p99.toFixed(2)),
    gapP50Ms: Number(gaps.p50.toFixed(2)),
    gapP99Ms: Number(gaps.p99.toFixed(2)),
    ...(target === 'gateway' ? { workerRssMb: mb(median(rss)), idleRssMb: mb(idle), gatewayTtftMeanMs } : {}),
  };
}

const points: Point[] = [];
for (const concurrency of concurrencies) {
  points.push(await measure('direct', concurrency));
  points.push(await measure('gateway', concurrency));
}
await gateway.stop();
await sim.stop();

const added = concurrencies.map((concurrency) => {
  const direct = points.find((p) => p.target === 'direct' && p.concurrency === concurrency)!;
  const through = points.find((p) => p.target === 'gateway' && p.concurrency === concurrency)!;
  const r = (n: number) => Number(n.toFixed(2));
  return {
    concurrency,
    addedTtftP50Ms: r(through.ttftP50Ms - direct.ttftP50Ms),
    addedTtftP99Ms: r(through.ttftP99Ms - direct.ttftP99Ms),
    addedGapP50Ms: r(through.gapP50Ms - direct.gapP50Ms),
    addedGapP99Ms: r(through.gapP99Ms - direct.gapP99Ms),
  };
});
const largest = points.find((p) => p.target === 'gateway' && p.concurrency === concurrencies.at(-1))!;
const memory = {
  streams: largest.concurrency,
  workerRssMb: largest.workerRssMb,
  idleRssMb: largest.idleRssMb,
  kbPerStream: Math.round(
    (((largest.workerRssMb ?? 0) - (largest.idleRssMb ?? 0)) * 1024) / largest.concurrency,
  ),
};
console.table(points);
console.table(added);
console.table([memory]);
console.log(JSON.stringify({ bench: 'streaming', upstream, durationMs, points, added, memory }));
if (points.some((p) => p.failed > 0)) process.exitCode = 1;
