// UPSTREAM_CONCURRENCY across processes: one limit on in-flight requests per replica across 4 workers (a SIGKILLed
// worker's permits come back at once) and across two gateway processes on Redis, counted at the simulator.
import { describe, expect, it } from 'vitest';
import { watchInFlight } from '../helpers/fixtures.js';
import { trackGateways } from '../helpers/gateway.js';
import { chat, children, trackGatewayProcesses } from '../helpers/gateway-process.js';
import { REDIS_URL } from '../helpers/services.js';

const gateways = trackGateways();
const processes = trackGatewayProcesses();
// Every request comes from 127.0.0.1: the per-IP limit (20 a minute by default) would refuse most of them.
const UNLIMITED_IP = { RATE_LIMIT_POINTS: '1000000' };

describe('UPSTREAM_CONCURRENCY across processes', () => {
  const streamBody = { messages: [{ role: 'user', content: 'hi' }], stream: true };

  it('holds across 4 workers; a SIGKILLed worker’s permits come back at once', async () => {
    const sim = await gateways.simulator({ ttftMs: 10, itlMs: 3, outputTokens: 30 });
    const gateway = await processes.start(sim.url, {
      env: { ...UNLIMITED_IP, WORKERS: '4', UPSTREAM_CONCURRENCY: '6' },
    });
    const watch = watchInFlight(sim);
    const replies = await Promise.all(
      Array.from({ length: 48 }, () => chat(gateway.url, gateway.key, streamBody)),
    );
    expect(replies.every((r) => r.status === 200 && r.complete)).toBe(true);
    expect(watch.stop()).toBe(6);

    // Kill a worker while it holds permits; the survivors (and its replacement) still reach the full limit.
    const slowSim = sim;
    const inFlight = Array.from({ length: 24 }, () =>
      chat(gateway.url, gateway.key, streamBody).catch(() => null),
    );
    await expect.poll(() => slowSim.stats().running, { timeout: 5000 }).toBeGreaterThanOrEqual(4);
    process.kill(children(gateway.child.pid!)[0]!, 'SIGKILL');
    await Promise.all(inFlight);
    await expect.poll(() => slowSim.stats().running + slowSim.stats().waiting, { timeout: 5000 }).toBe(0);
    const after = watchInFlight(sim);
    const again = await Promise.all(
      Array.from({ length: 36 }, () => chat(gateway.url, gateway.key, streamBody)),
    );
    expect(again.every((r) => r.status === 200)).toBe(true);
    expect(after.stop()).toBe(6);
  }, 90_000);

  it('holds across two gateway processes on Redis', async () => {
    const sim = await gateways.simulator({ ttftMs: 10, itlMs: 3, outputTokens: 30 });
    const env = {
      ...UNLIMITED_IP,
      // Its own per-IP budget in the shared Redis: this test's 40 requests must not count against other tests'.
      RATE_LIMIT_NAME: `admission-${process.pid}-${Date.now()}`,
      WORKERS: '2',
      REDIS_URL,
      UPSTREAM_CONCURRENCY: '5',
    };
    const first = await processes.start(sim.url, { env });
    const second = await processes.start(sim.url, {
      env: { ...env, DATABASE_URL: first.databaseUrl },
      keyName: 'second',
    });
    const watch = watchInFlight(sim);
    const replies = await Promise.all(
      Array.from({ length: 40 }, (_, i) => chat(i % 2 ? first.url : second.url, first.key, streamBody)),
    );
    expect(replies.every((r) => r.status === 200)).toBe(true);
    expect(watch.stop()).toBe(5);
  }, 90_000);
});
