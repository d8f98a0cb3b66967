// The gateway as `npm start` runs it: four node:cluster workers, one rate-limit budget, SIGTERM draining an open
// stream, and a killed worker replaced.
import { execSync, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startVllmSimulator } from '../../src/testing/index.js';
import { chat as call, trackGatewayProcesses } from '../helpers/gateway-process.js';

const root = resolve(import.meta.dirname, '../..');
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
const { start } = trackGatewayProcesses();
const startGateway = (sim: { url: string }, env: Record<string, string> = {}) => start(sim.url, { env });

describe('gateway with node:cluster workers', () => {
  it('holds one IP to one 20-per-minute budget across 4 workers (exactly 20 of 25)', async () => {
    const sim = await startVllmSimulator();
    cleanups.push(() => sim.close());
    const { url, key } = await startGateway(sim);
    const statuses: number[] = [];
    for (let i = 0; i < 25; i++)
      statuses.push(
        (await call(url, key, { messages: [{ role: 'user', content: 'x' }], max_tokens: 1 })).status,
      );
    expect(statuses.filter((s) => s === 200)).toHaveLength(20);
    expect(statuses.slice(20)).toEqual([429, 429, 429, 429, 429]);
    expect(sim.stats().connectionsAccepted).toBeGreaterThan(1);
    // /metrics sums every worker's counters (the primary aggregates them).
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/gateway_requests_total\{route="\/v1\/chat\/completions",status="200"\} 20\b/);
    expect(metrics).toMatch(/gateway_rate_limited_total 5\b/);
  }, 60_000);

  it('stops (exit 1) instead of forking in a loop when workers cannot start', async () => {
    // A port another process holds: every worker fails before it serves. (A database that is down no longer stops
    // workers: the primary checks it once at start, and workers connect on first use.)
    const { createServer } = await import('node:net');
    const holder = createServer();
    await new Promise<void>((done) => holder.listen(0, '127.0.0.1', done));
    const port = (holder.address() as { port: number }).port;
    const child = spawn(process.execPath, ['--import', 'tsx', 'examples/gateway/main.ts'], {
      cwd: root,
      env: {
        ...process.env,
        ENV: 'production',
        WORKERS: '2',
        HOST: '127.0.0.1',
        PORT: String(port),
        DATABASE_URL: 'sqlite::memory:',
        VLLM_BASE_URL: 'http://127.0.0.1:1',
        REDIS_URL: '',
        LOG_LEVEL: 'silent',
      },
    });
    let out = '';
    child.stderr.on('data', (chunk) => (out += chunk));
    const code = await new Promise<number | null>((done) => child.once('exit', (c) => done(c)));
    await new Promise((done) => holder.close(done));
    expect(code).toBe(1);
    expect(out).toMatch(/gateway: worker \d+ failed to start \(2\); stopping/);
    expect(out).toMatch(/cannot listen on HOST:PORT \(127\.0\.0\.1:\d+\): the port is in use/);
    expect(out).not.toMatch(/starting a new one/);
  }, 60_000);

  it('replaces a killed worker and keeps serving; SIGTERM lets an open stream finish, then exits 0', async () => {
    const sim = await startVllmSimulator({ itlMs: 30 });
    cleanups.push(() => sim.close());
    const gateway = await startGateway(sim);
    // Kill one worker: the primary starts another.
    const workers = execSync(`pgrep -P ${gateway.child.pid}`).toString().trim().split('\n').map(Number);
    expect(workers).toHaveLength(4);
    process.kill(workers[0]!, 'SIGKILL');
    await expect
      .poll(() => gateway.output(), { timeout: 10_000 })
      .toMatch(new RegExp(`worker ${workers[0]} exited \\(SIGKILL\\); starting a new one`));
    await expect
      .poll(() => execSync(`pgrep -P ${gateway.child.pid}`).toString().trim().split('\n').length, {
        timeout: 15_000,
      })
      .toBe(4);
    for (let i = 0; i < 4; i++) {
      expect(
        (await call(gateway.url, gateway.key, { messages: [{ role: 'user', content: 'x' }], max_tokens: 1 }))
          .status,
      ).toBe(200);
    }
    // An open stream of ~1.5 s, then SIGTERM half-way through: it must complete, then the process exits 0.
    const stream = call(gateway.url, gateway.key, {
      messages: [{ role: 'user', content: 'x' }],
      max_tokens: 50,
      stream: true,
    });
    await expect.poll(() => sim.stats().running).toBe(1);
    gateway.child.kill('SIGTERM');
    const result = await stream;
    expect(result.status).toBe(200);
    expect(result.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(await gateway.exited).toBe(0);
    expect(sim.stats().completed).toBeGreaterThanOrEqual(5);
  }, 90_000);
});
