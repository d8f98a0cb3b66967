// The gateway's operations as a separate process (workers, the primary's aggregation, production logging): metrics
// that add up across workers, /metrics while a worker dies, logs that reach stdout promptly.
import { describe, expect, it } from 'vitest';
import { trackResources } from '../helpers/fixtures.js';
import { chat, children, trackGatewayProcesses } from '../helpers/gateway-process.js';

const { start } = trackGatewayProcesses();
const resources = trackResources();
const small = { messages: [{ role: 'user', content: 'x' }], max_tokens: 1 };

/** The value of one sample line of a Prometheus text exposition. */
function sample(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (line === undefined) throw new Error(`no sample ${name} in:\n${text}`);
  return Number(line.slice(name.length + 1));
}

describe('metrics across workers (14)', () => {
  it('counters and histograms add up to the traffic sent, whichever worker served it', async () => {
    const sim = await resources.simulator();
    const gateway = await start(sim.url, { env: { WORKERS: '2', RATE_LIMIT_POINTS: '1000' } });
    for (let i = 0; i < 12; i++) expect((await chat(gateway.url, gateway.key, small)).status).toBe(200);
    const text = await (await fetch(`${gateway.url}/metrics`)).text();
    // Every request was looked up in one worker's token cache: a hit or a miss, 12 in all (a counter, summed).
    const hits = sample(text, 'gateway_token_cache_total{outcome="hit"}');
    const misses = sample(text, 'gateway_token_cache_total{outcome="miss"}');
    expect(hits + misses).toBe(12);
    expect(misses).toBeGreaterThanOrEqual(1);
    expect(misses).toBeLessThanOrEqual(2);
    expect(text).toContain('# TYPE gateway_token_cache_total counter');
    // Queue waits: one observation per limited request, summed over workers; no lifetime average left.
    expect(sample(text, 'gateway_queue_wait_seconds_count')).toBe(12);
    expect(sample(text, 'gateway_queue_wait_seconds_sum')).toBeLessThan(12);
    expect(text).toContain('# TYPE gateway_queue_wait_seconds histogram');
    expect(text).not.toContain('gateway_queue_wait_seconds_avg');
    expect(sample(text, 'gateway_requests_total{route="/v1/chat/completions",status="200"}')).toBe(12);
    // Concurrent scrapes (about 20 per worker) share one IPC listener per worker and one aggregation.
    const statuses = await Promise.all(
      Array.from({ length: 40 }, async () => (await fetch(`${gateway.url}/metrics`)).status),
    );
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(gateway.output()).not.toContain('MaxListenersExceededWarning');
  }, 60_000);
});

describe('/metrics while a worker dies (7)', () => {
  it('answers 503 at once instead of an empty 200 after 5 s, and leaves no listeners behind', async () => {
    const sim = await resources.simulator();
    const gateway = await start(sim.url, { env: { WORKERS: '2' } });
    const [victim] = children(gateway.child.pid!);
    // A worker that cannot answer the primary's aggregation: every scrape now waits on it.
    process.kill(victim!, 'SIGSTOP');
    const scrapes = Array.from({ length: 20 }, () =>
      // A connection the primary handed to the stopped worker is lost with it (node:cluster does not hand it on):
      // those scrapes never reach the gateway's code and are cut short here.
      fetch(`${gateway.url}/metrics`, { signal: AbortSignal.timeout(4000) }).then(
        async (reply) => ({ status: reply.status, text: await reply.text() }),
        () => ({ status: 0, text: '' }),
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(victim!, 'SIGKILL');
    const results = await Promise.all(scrapes);
    const answered = results.filter((r) => r.status !== 0);
    expect(answered.length).toBeGreaterThan(0);
    for (const r of answered) {
      if (r.status === 200) expect(r.text).toContain('gateway_requests_total');
      else {
        expect(r.status).toBe(503);
        expect(JSON.parse(r.text)).toMatchObject({ error: { code: 'metrics_unavailable' } });
      }
    }
    expect(answered.some((r) => r.status === 503)).toBe(true);
    // A replacement worker comes up; scrapes work again.
    await expect
      .poll(async () => (await fetch(`${gateway.url}/metrics`)).status, { timeout: 15_000, interval: 200 })
      .toBe(200);
    expect(gateway.output()).not.toContain('MaxListenersExceededWarning');
  }, 60_000);
});

describe('production logs (11)', () => {
  it('reach stdout within a second, one line per request, and nothing is lost on SIGTERM', async () => {
    const sim = await resources.simulator();
    const gateway = await start(sim.url, { env: { WORKERS: '1', LOG_LEVEL: 'info' } });
    const lines = () =>
      gateway
        .output()
        .split('\n')
        .filter((l) => l.includes('"msg":"request"'));
    for (let i = 0; i < 3; i++) await chat(gateway.url, gateway.key, small);
    // Three short lines are far below the 4 KB batch: only the flush interval can bring them out.
    await expect.poll(lines, { timeout: 3000, interval: 100 }).toHaveLength(3);
    for (let i = 0; i < 2; i++) await chat(gateway.url, gateway.key, small);
    gateway.child.kill('SIGTERM');
    expect(await gateway.exited).toBe(0);
    expect(lines()).toHaveLength(5);
    expect(gateway.output()).not.toContain(gateway.key);
  }, 60_000);
});
