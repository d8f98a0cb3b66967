// The gateway as a separate process, as `npm start` runs it (workers, signals), for tests: a fresh SQLite key store
// with one key, the URL it listens on, its output, and a kill in teardown.
import { type ChildProcess, execSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach } from 'vitest';

const root = resolve(import.meta.dirname, '../..');

export interface GatewayProcess {
  child: ChildProcess;
  url: string;
  key: string;
  output: () => string;
  /** Resolves with the exit code (or the signal's name) of the started process. */
  exited: Promise<number | string>;
  /** Its key store (another gateway given it in `env` shares the keys). */
  databaseUrl: string;
  /** Runs `npm run keys -- …args` on this gateway's key store; resolves with its exit status and output. */
  keys(...args: string[]): { status: number | null; stdout: string; stderr: string };
}

export interface StartOptions {
  env?: Record<string, string>;
  /** `npm start` (npm in front, as a container's `CMD ["npm","start"]`), or node directly. @default 'node' */
  via?: 'node' | 'npm';
  /** Its own process group (so a test can signal the whole group, as systemd and Ctrl-C do). @default false */
  detached?: boolean;
  /** Arguments for the key created at start (`--rpm 5`, say). */
  keyArgs?: string[];
  /** The name of the key created at start. @default 'test' */
  keyName?: string;
}

/** Registers an afterEach that kills (SIGKILL, whole group when detached) what `start` started. */
export function trackGatewayProcesses() {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function start(upstream: string, options: StartOptions = {}): Promise<GatewayProcess> {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-kit-gw-process-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const env = {
      ...process.env,
      ENV: 'production',
      WORKERS: '4',
      HOST: '127.0.0.1',
      PORT: '0',
      DATABASE_URL: `sqlite:${join(dir, 'keys.db')}`,
      VLLM_BASE_URL: upstream,
      REDIS_URL: '',
      LOG_LEVEL: 'silent',
      SHUTDOWN_GRACE_MS: '20000',
      ...options.env,
    };
    const creating = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'examples/gateway/keys-cli.ts',
        'create',
        '--name',
        options.keyName ?? 'test',
        ...(options.keyArgs ?? []),
      ],
      {
        cwd: root,
        env,
      },
    );
    let keyOut = '';
    creating.stdout.on('data', (chunk) => (keyOut += chunk));
    await new Promise((done) => creating.once('exit', done));
    const key = keyOut.trim().split('\n').at(-1)!;
    // Started by node directly (systemd, a container's CMD), the gateway has no npm around it: none of the npm_*
    // variables the test runner itself inherited from `npm test`.
    const gatewayEnv =
      options.via === 'npm'
        ? env
        : Object.fromEntries(Object.entries(env).filter(([name]) => !name.startsWith('npm_')));
    const [command, args] =
      options.via === 'npm'
        ? ['npm', ['start', '--silent']]
        : [process.execPath, ['--import', 'tsx', 'examples/gateway/main.ts']];
    const child = spawn(command, args, { cwd: root, env: gatewayEnv, detached: options.detached ?? false });
    let out = '';
    child.stdout!.on('data', (chunk) => (out += chunk));
    child.stderr!.on('data', (chunk) => (out += chunk));
    const exited = new Promise<number | string>((done) =>
      child.once('exit', (code, signal) => done(code ?? signal ?? 'unknown')),
    );
    // Everything it started, even what outlived it: its process group when detached, else its descendants.
    cleanups.push(async () => {
      if (options.detached) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {}
      } else if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    });
    const workers = env.ENV === 'development' ? 1 : Number(env.WORKERS);
    const url = await new Promise<string>((ready, fail) => {
      const timer = setTimeout(() => fail(new Error(`gateway did not start:\n${out}`)), 30_000);
      const pattern = new RegExp(
        `listening on (http://\\S+) \\((${workers} workers|1 worker, development)\\)`,
      );
      child.stdout!.on('data', () => {
        const match = pattern.exec(out);
        if (match) {
          clearTimeout(timer);
          ready(match[1]!);
        }
      });
    });
    const keys = (...args: string[]) => {
      const run = spawnSync(process.execPath, ['--import', 'tsx', 'examples/gateway/keys-cli.ts', ...args], {
        cwd: root,
        env,
        encoding: 'utf8',
      });
      return { status: run.status, stdout: run.stdout, stderr: run.stderr };
    };
    return { child, url, key, output: () => out, exited, keys, databaseUrl: env.DATABASE_URL };
  }

  return { start, onCleanup: (close: () => Promise<unknown>) => void cleanups.push(close) };
}

/** The live processes `ps` selects (`-g PGID`, `--ppid PID`); zombies, dead but not yet reaped, are not counted. */
function livePids(selector: string): number[] {
  return execSync(`ps -o pid=,stat= ${selector} || true`)
    .toString()
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([pid, stat]) => pid && !stat?.startsWith('Z'))
    .map(([pid]) => Number(pid));
}

/** The pids of a process group's live members. */
export function groupMembers(pgid: number): number[] {
  return livePids(`-g ${pgid}`);
}

/** One chat request on its own connection (so the cluster spreads requests over the workers). */
export function chat(
  url: string,
  key: string,
  body: object,
): Promise<{ status: number; text: string; complete: boolean }> {
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
        res.on('end', () => done({ status: res.statusCode!, text, complete: res.complete }));
        res.on('error', fail);
        res.on('aborted', () => done({ status: res.statusCode!, text, complete: false }));
      },
    );
    req.on('error', fail);
    req.end(payload);
  });
}

/** The pids of a process's live children (a gateway primary's: its workers). */
export function children(pid: number): number[] {
  return livePids(`--ppid ${pid}`);
}

/** Whether a pid is alive. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The pids of a gateway primary's live workers (its node children; tsx's esbuild service is not one). */
export function workerPids(pid: number): number[] {
  return execSync(`ps -o pid=,stat=,comm= --ppid ${pid} || true`)
    .toString()
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([p, stat, comm]) => p && !stat?.startsWith('Z') && comm === 'node')
    .map(([p]) => Number(p))
    .sort((a, b) => a - b);
}
