// Starts the reference gateway exactly as `npm start` does (the bundled examples/gateway/dist/main.js, node:cluster
// workers), with a fresh SQLite key store holding one key, request logs written to a file, and reads its workers'
// memory from /proc.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { openKeyStore } from '../../examples/gateway/key-store.js';
import { ownChild } from './child.js';

const root = resolve(import.meta.dirname, '../..');

export interface RunningGateway {
  url: string;
  /** An API key the gateway accepts (no limits). */
  key: string;
  /** The keys asked for in `keys`, by name. */
  keys: Record<string, string>;
  /** The primary's and the workers' process ids. */
  pids(): number[];
  /** Resident memory of each worker, in bytes. */
  workerRss(): number[];
  stop(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

/** Polls `url` until it answers 200 (or fails after `timeoutMs`). */
export async function waitForOk(url: string, timeoutMs = 30_000, exited?: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited?.()) throw new Error(`${url}: the server exited before answering`);
    try {
      const response = await fetch(url);
      await response.body?.cancel();
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer 200 within ${timeoutMs} ms`);
}

function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = /VmRSS:\s+(\d+)/.exec(status)?.[1];
  return Number(kb) * 1024;
}

/**
 * `env` overrides the gateway's configuration (see examples/gateway/config.ts); production mode, request logs written
 * to a file (logging is part of the cost), no Redis unless `env.REDIS_URL` is given.
 */
export async function startGateway(
  upstream: string,
  env: Record<string, string> = {},
  /** Node flags for the primary; the workers inherit them (node:cluster forks with the primary's execArgv). */
  nodeArgs: string[] = [],
  /** More keys to create, with limits. */
  limitedKeys: { name: string; rpm: number | null; tpm: number | null }[] = [],
): Promise<RunningGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'vllm-kit-bench-gw-'));
  const databaseUrl = `sqlite:${join(dir, 'keys.db')}`;
  const store = await openKeyStore(databaseUrl);
  const { key } = await store.create('bench');
  const keys: Record<string, string> = {};
  for (const { name, rpm, tpm } of limitedKeys) keys[name] = (await store.create(name, { rpm, tpm })).key;
  await store.close();
  const port = await freePort();
  // What `npm start` runs: the bundle, built once per benchmark run.
  execFileSync('npm', ['run', '-s', 'build:gateway'], { cwd: root, stdio: 'inherit' });
  // One JSON line per request at info, to a file as in production (logging is part of the cost).
  const logFd = openSync(join(dir, 'gateway.log'), 'a');
  const child: ChildProcess = ownChild(
    spawn(process.execPath, [...nodeArgs, 'examples/gateway/dist/main.js'], {
      cwd: root,
      env: {
        ...process.env,
        ENV: 'production',
        HOST: '127.0.0.1',
        PORT: String(port),
        VLLM_BASE_URL: upstream,
        DATABASE_URL: databaseUrl,
        REDIS_URL: '',
        SHUTDOWN_GRACE_MS: '2000',
        ...env,
      },
      stdio: ['ignore', logFd, 'inherit'],
    }),
  );
  closeSync(logFd);
  const url = `http://127.0.0.1:${port}`;
  await waitForOk(`${url}/health`, 30_000, () => child.exitCode !== null);
  const workers = () =>
    execFileSync('ps', ['--ppid', String(child.pid), '-o', 'pid='], { encoding: 'utf8' })
      .split('\n')
      .map((line) => Number(line.trim()))
      .filter((pid) => pid > 0);
  return {
    url,
    key,
    keys,
    pids: () => [child.pid!, ...workers()],
    workerRss: () => workers().map(rssBytes),
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((done) => child.once('exit', done));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
