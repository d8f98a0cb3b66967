// The gateway as `npm start` runs it: four node:cluster workers, one rate-limit budget, SIGTERM draining an open
// stream, and a killed worker replaced.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';

const root = resolve(import.meta.dirname, '../..');
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Running {
  child: ChildProcess;
  url: string;
  key: string;
  output: () => string;
}

async function startGateway(sim: VllmSimulator, env: Record<string, string> = {}): Promise<Running> {
  const dir = mkdtempSync(join(tmpdir(), 'vllm-kit-gw-cluster-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const baseEnv = {
    ...process.env,
    ENV: 'production',
    WORKERS: '4',
    HOST: '127.0.0.1',
    PORT: '0',
    DATABASE_URL: `sqlite:${join(dir, 'keys.db')}`,
    VLLM_BASE_URL: sim.url,
    REDIS_URL: '',
    LOG_LEVEL: 'silent',
    SHUTDOWN_GRACE_MS: '20000',
    ...env,
  };
  const keys = spawn(
    process.execPath,
    ['--import', 'tsx', 'examples/gateway/keys-cli.ts', 'create', '--name', 'cluster'],
    {
      cwd: root,
      env: baseEnv,
    },
  );
  let keyOut = '';
  keys.stdout.on('data', (chunk) => (keyOut += chunk));
  await new Promise((done) => keys.once('exit', done));
  const key = keyOut.trim().split('\n').at(-1)!;
  const child = spawn(process.execPath, ['--import', 'tsx', 'examples/gateway/main.ts'], {
    cwd: root,
    env: baseEnv,
  });
  let out = '';
  child.stdout!.on('data', (chunk) => (out += chunk));
  child.stderr!.on('data', (chunk) => (out += chunk));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((done) => child.once('exit', done));
    }
  });
  const url = await new Promise<string>((ready, fail) => {
    const timer = setTimeout(() => fail(new Error(`gateway did not start:\n${out}`)), 30_000);
    child.stdout!.on('data', () => {
      const match = /listening on (http:\/\/\S+) \(4 workers\)/.exec(out);
      if (match) {
        clearTimeout(timer);
        ready(match[1]!);
      }
    });
  });
  return { child, url, key, output: () => out };
}

/** One request on its own connection, so the primary spreads requests over the workers. */
function call(url: string, key: string, body: object): Promise<{ status: number; text: string }> {
  return new Promise((done, fail) => {
    const payload = JSON.stringify(body);
    const req = request(
      `${url}/v1/chat/completions`,
      {
        method: 'POST',
        agent: false,
        headers: {
          authorization: `Bearer ${key}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
        },
      },
      (res) => {
        let text = '';
        res.on('data', (chunk) => (text += chunk));
        res.on('end', () => done({ status: res.statusCode!, text }));
        res.on('error', fail);
      },
    );
    req.on('error', fail);
    req.end(payload);
  });
}

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
    // A key store nobody listens on: every worker fails before it serves.
    const child = spawn(process.execPath, ['--import', 'tsx', 'examples/gateway/main.ts'], {
      cwd: root,
      env: {
        ...process.env,
        ENV: 'production',
        WORKERS: '2',
        HOST: '127.0.0.1',
        PORT: '0',
        DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test',
        VLLM_BASE_URL: 'http://127.0.0.1:1',
        REDIS_URL: '',
        LOG_LEVEL: 'silent',
      },
    });
    let out = '';
    child.stderr.on('data', (chunk) => (out += chunk));
    const code = await new Promise<number | null>((done) => child.once('exit', (c) => done(c)));
    expect(code).toBe(1);
    expect(out).toMatch(/gateway: worker \d+ failed to start \(2\); stopping/);
    expect(out).not.toMatch(/starting a new one/);
  }, 60_000);

  it('replaces a killed worker and keeps serving; SIGTERM lets an open stream finish, then exits 0', async () => {
    const sim = await startVllmSimulator({ itlMs: 30 });
    cleanups.push(() => sim.close());
    const gateway = await startGateway(sim);
    // Kill one worker: the primary starts another.
    const { execSync } = await import('node:child_process');
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
    const exited = new Promise<number | null>((done) => gateway.child.once('exit', (code) => done(code)));
    gateway.child.kill('SIGTERM');
    const result = await stream;
    expect(result.status).toBe(200);
    expect(result.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(await exited).toBe(0);
    expect(sim.stats().completed).toBeGreaterThanOrEqual(5);
  }, 90_000);
});
