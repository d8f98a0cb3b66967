// The gateway when its key store fails, as production delivers it: PostgreSQL behind a TCP proxy the test cuts (a
// restart or failover as the gateway sees it; the machine's own server is never stopped), a database that never
// answers, a SQLite file locked by another process. Workers never die; cached keys keep working; lookups that need
// the database answer 503 key_store_unavailable; usage is written once the database is back, exactly once.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { startVllmSimulator } from '../../src/testing/index.js';
import { chat, trackGatewayProcesses, workerPids } from '../helpers/gateway-process.js';
import { DATABASE_URL, uniqueName } from '../helpers/services.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

const root = resolve(import.meta.dirname, '../..');
const { start, onCleanup } = trackGatewayProcesses();
const body = { messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4 };
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function simulator() {
  const sim = await startVllmSimulator({ model: 'm', outputTokens: 3 });
  onCleanup(() => sim.close());
  return sim;
}

/** Polls until `check` passes (real processes flush on their own schedule), then returns its last value. */
async function eventually<T>(read: () => Promise<T>, check: (value: T) => boolean, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await read();
    if (check(value) || Date.now() > deadline) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Creates a key with the keys CLI, without blocking this process; resolves with the key. */
async function createKey(databaseUrl: string, name: string): Promise<string> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', 'examples/gateway/keys-cli.ts', 'create', '--name', name],
    { cwd: root, env: { ...process.env, DATABASE_URL: databaseUrl } },
  );
  return stdout.trim().split('\n').at(-1)!;
}

async function usageRequests(keyName: string): Promise<number> {
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  try {
    const rows = (
      await client.query(
        'SELECT COALESCE(u.requests, 0) AS n FROM api_keys k LEFT JOIN key_usage u ON u.key_id = k.id WHERE k.name = $1',
        [keyName],
      )
    ).rows;
    return Number(rows[0]?.n ?? -1);
  } finally {
    await client.end();
  }
}

const env = {
  WORKERS: '2',
  RATE_LIMIT_POINTS: '100000',
  USAGE_FLUSH_MS: '100',
  DATABASE_CONNECT_TIMEOUT_MS: '1000',
};

describe('the key store failing', () => {
  it('survives a PostgreSQL restart: cached keys served, 503 for lookups, usage written once, no worker lost', async () => {
    const target = new URL(DATABASE_URL);
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    cleanups.push(() => proxy.close());
    const proxied = new URL(DATABASE_URL);
    proxied.host = `127.0.0.1:${proxy.port}`;
    const sim = await simulator();
    const keyName = uniqueName('pg-restart');
    const gateway = await start(sim.url, { env: { ...env, DATABASE_URL: proxied.toString() }, keyName });
    // Created on the database directly (the proxy runs in this process: a synchronous CLI run would stall it).
    const late = await createKey(DATABASE_URL, uniqueName('pg-late'));
    const workers = workerPids(gateway.child.pid!).sort();
    expect(workers).toHaveLength(2);
    // Both workers verify (and cache) the key; usage reaches the database.
    for (let i = 0; i < 8; i++) expect((await chat(gateway.url, gateway.key, body)).status).toBe(200);
    expect(
      await eventually(
        () => usageRequests(keyName),
        (n) => n === 8,
      ),
    ).toBe(8);

    proxy.cut(); // every pooled connection reset, new ones refused
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 8; i++) expect((await chat(gateway.url, gateway.key, body)).status).toBe(200);
    const refused = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${late}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(refused.status).toBe(503);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('key_store_unavailable');
    proxy.restore();
    // Usage served during the outage is written once the database is back: 16, never more.
    expect(
      await eventually(
        () => usageRequests(keyName),
        (n) => n >= 16,
      ),
    ).toBe(16);
    await new Promise((r) => setTimeout(r, 500));
    expect(await usageRequests(keyName)).toBe(16);

    // A second outage: a worker that dies meanwhile is replaced, and its replacement starts without the database.
    proxy.cut();
    // A worker replaced during the outage starts too (the schema was migrated by the primary at start).
    process.kill(workers[0]!, 'SIGKILL');
    await eventually(
      async () => workerPids(gateway.child.pid!),
      (pids) => pids.length === 2 && !pids.includes(workers[0]!),
    );
    await eventually(
      async () => gateway.output(),
      (out) => /starting a new one/.test(out),
    );
    expect(workerPids(gateway.child.pid!)).toContain(workers[1]);
    expect(workerPids(gateway.child.pid!)).toHaveLength(2);

    proxy.restore();
    // The pool reconnected by itself: an uncached key is verified again.
    const status = await eventually(
      async () => (await chat(gateway.url, late, body)).status,
      (s) => s === 200,
    );
    expect(status).toBe(200);
    for (let i = 0; i < 6; i++) expect((await chat(gateway.url, late, body)).status).toBe(200);
    expect(workerPids(gateway.child.pid!)).toContain(workers[1]);
    const out = gateway.output();
    expect(out).not.toMatch(/Unhandled|processID|secretKey|uncaught/i);
    expect(out).not.toMatch(new RegExp(`worker ${workers[1]} exited`));
  }, 90_000);

  it('names DATABASE_URL when the database never answers, or refuses, instead of hanging', async () => {
    const held = new Set<import('node:net').Socket>();
    const blackHole = createServer((socket) => held.add(socket)); // accepts, never answers
    await new Promise<void>((done) => blackHole.listen(0, '127.0.0.1', done));
    cleanups.push(async () => {
      for (const socket of held) socket.destroy();
      await new Promise((done) => blackHole.close(done));
    });
    const silentPort = (blackHole.address() as { port: number }).port;
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, '127.0.0.1', done));
    const closedPort = (closed.address() as { port: number }).port;
    await new Promise((done) => closed.close(done));
    const run = async (databaseUrl: string) => {
      const started = Date.now();
      const child = spawn(process.execPath, ['--import', 'tsx', 'examples/gateway/main.ts'], {
        cwd: root,
        env: { ...process.env, ...env, VLLM_BASE_URL: 'http://127.0.0.1:9', DATABASE_URL: databaseUrl },
      });
      let out = '';
      child.stdout.on('data', (c) => (out += c));
      child.stderr.on('data', (c) => (out += c));
      const code = await new Promise((done) => child.once('exit', done));
      return { code, out, ms: Date.now() - started };
    };
    const silent = await run(`postgres://postgres:s3cret@127.0.0.1:${silentPort}/test`);
    expect(silent.code).toBe(2);
    expect(silent.out).toMatch(
      /DATABASE_URL \(postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/test\): cannot connect: no answer within 1000 ms/,
    );
    expect(silent.out).not.toContain('s3cret');
    expect(silent.ms).toBeLessThan(15_000);
    const refused = await run(`postgres://postgres@127.0.0.1:${closedPort}/test`);
    expect(refused.code).toBe(2);
    expect(refused.out).toMatch(
      /DATABASE_URL \(postgres:\/\/postgres@127\.0\.0\.1:\d+\/test\): cannot connect: .*ECONNREFUSED/,
    );
  }, 60_000);

  it('serves cached keys and keeps usage while SQLite is locked by another process, then writes it once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-kit-sqlite-lock-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'keys.db');
    const sim = await simulator();
    const gateway = await start(sim.url, { env: { ...env, DATABASE_URL: `sqlite:${file}` } });
    const late = gateway.keys('create', '--name', 'late').stdout.trim().split('\n').at(-1)!;
    for (let i = 0; i < 6; i++) expect((await chat(gateway.url, gateway.key, body)).status).toBe(200);
    const usage = () => {
      const db = new Database(file, { readonly: true });
      db.pragma('busy_timeout = 2000');
      try {
        return Number(
          (
            db
              .prepare(
                "SELECT COALESCE(u.requests, 0) AS n FROM api_keys k LEFT JOIN key_usage u ON u.key_id = k.id WHERE k.name = 'test'",
              )
              .get() as { n: number }
          ).n,
        );
      } finally {
        db.close();
      }
    };
    expect(
      await eventually(
        async () => usage(),
        (n) => n === 6,
      ),
    ).toBe(6);
    // Another process holds the write lock: every usage write gets SQLITE_BUSY (readers go on: WAL).
    const lock = new Database(file);
    lock.exec('BEGIN IMMEDIATE');
    let locked = true;
    cleanups.push(async () => {
      if (locked) lock.exec('COMMIT');
      lock.close();
    });
    for (let i = 0; i < 6; i++) expect((await chat(gateway.url, gateway.key, body)).status).toBe(200);
    // A key not yet cached is still verified: SQLite readers are not blocked by a writer in WAL mode.
    expect((await chat(gateway.url, late, body)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 1000)); // usage writes fail (busy) meanwhile
    expect(usage()).toBe(6);
    lock.exec('COMMIT');
    lock.close();
    locked = false;
    cleanups.pop();
    expect(
      await eventually(
        async () => usage(),
        (n) => n >= 12,
      ),
    ).toBe(12);
    await new Promise((r) => setTimeout(r, 300));
    expect(usage()).toBe(12);
    expect(gateway.output()).not.toMatch(/exited|Unhandled/);
  }, 60_000);
});
