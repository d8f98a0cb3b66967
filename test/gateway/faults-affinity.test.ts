// A client choosing its own affinity key (X-Session-Id) to pin a replica, against the gateway as `npm start` runs it
// (4 workers, 3 replicas): the load bound holds for the replica across workers, and a victim sharing that replica is
// never queued behind the attacker.
import { request } from 'node:http';
import { describe, expect, it } from 'vitest';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';
import { generations } from '../helpers/gateway.js';
import { trackGatewayProcesses } from '../helpers/gateway-process.js';

const { start, onCleanup } = trackGatewayProcesses();

/** One streamed request with this session id; resolves with its duration, ms. */
function call(url: string, key: string, session: string, maxTokens: number): Promise<number> {
  const started = performance.now();
  return new Promise((done, fail) => {
    const req = request(`${url}/v1/chat/completions`, {
      method: 'POST',
      agent: false,
      headers: {
        authorization: `Bearer ${key}`,
        'content-type': 'application/json',
        'x-session-id': session,
      },
    });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () =>
        res.statusCode === 200 ? done(performance.now() - started) : fail(res.statusCode),
      );
    });
    req.on('error', fail);
    req.end(
      JSON.stringify({ messages: [{ role: 'user', content: session }], max_tokens: maxTokens, stream: true }),
    );
  });
}

async function replicas(options: Parameters<typeof startVllmSimulator>[0]): Promise<VllmSimulator[]> {
  const sims = await Promise.all([0, 1, 2].map(() => startVllmSimulator({ model: 'm', ...options })));
  for (const sim of sims) onCleanup(() => sim.close());
  return sims;
}

describe('a client-chosen affinity key', () => {
  it('cannot put more than the load bound on one replica, across 4 workers', async () => {
    const sims = await replicas({ ttftMs: 400, itlMs: 5 });
    const gateway = await start(sims.map((s) => s.url).join(','), {
      env: { WORKERS: '4', RATE_LIMIT_POINTS: '100000' },
    });
    await Promise.all(Array.from({ length: 60 }, () => call(gateway.url, gateway.key, 'pinned', 4)));
    const counts = sims.map((s) => generations(s));
    expect(counts.reduce((a, b) => a + b, 0)).toBe(60);
    // The bound for 60 in flight over 3 replicas: ⌈1.25 × 61 / 3⌉ + 8 = 34. It was 53–58 (per worker, plus slack).
    expect(Math.max(...counts)).toBeLessThanOrEqual(34);
  }, 60_000);

  it("never queues a victim behind an attacker's 24 pinned streams on their shared replica", async () => {
    // 12 slots per replica (vLLM's --max-num-seqs): 24 streams on one replica leave 12 waiting, and the victim behind
    // them (its p99 went from 0.33 s to 9.4 s). Spread, no replica runs out of slots and nothing waits. The latency
    // itself is a benchmark's to measure; here the cause is checked: the replica's own waiting queue.
    const sims = await replicas({ ttftMs: 20, itlMs: 10, maxNumSeqs: 12, batchSlowdown: 1 });
    const urls = sims.map((s) => s.url);
    const gateway = await start(urls.join(','), { env: { WORKERS: '2', RATE_LIMIT_POINTS: '100000' } });
    // The attacker's session starts alone; then a victim session living on the same replica (sessions are placed by
    // what replicas hold, in turn, so one of the first few lands there).
    const servedBy = async (session: string) => {
      const before = sims.map((s) => generations(s));
      await call(gateway.url, gateway.key, session, 2);
      return sims.findIndex((s, k) => generations(s) > before[k]!);
    };
    const home = await servedBy('attacker');
    let victim = '';
    for (let i = 0; victim === '' && i < 20; i++)
      if ((await servedBy(`victim-${i}`)) === home) victim = `victim-${i}`;
    expect(victim).not.toBe('');
    // Sessions stay where they were placed, whichever worker takes the turn (the workers share placements).
    for (let i = 0; i < 4; i++) expect(await servedBy(victim)).toBe(home);
    const attack = Promise.all(
      Array.from({ length: 24 }, () => call(gateway.url, gateway.key, 'attacker', 300).catch(() => 0)),
    );
    await new Promise((r) => setTimeout(r, 200));
    let waitingPeak = 0;
    let runningPeak = 0;
    const watch = setInterval(() => {
      for (const sim of sims) {
        waitingPeak = Math.max(waitingPeak, sim.stats().waiting);
        runningPeak = Math.max(runningPeak, sim.stats().running);
      }
    }, 2);
    for (let i = 0; i < 6; i++) await call(gateway.url, gateway.key, victim, 20);
    clearInterval(watch);
    await attack;
    expect(waitingPeak).toBe(0);
    expect(runningPeak).toBeLessThanOrEqual(12);
  }, 90_000);
});
