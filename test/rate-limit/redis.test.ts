// store: an ioredis client — one budget across processes through the real Redis, and what happens when Redis dies.
import { spawn } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { resolve } from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { createIpRateLimiter, type RateLimitDecision } from '../../src/index.js';
import { forkTs } from '../helpers/child.js';
import { REDIS_URL, uniqueName } from '../helpers/services.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function redisClient(url: string, options: RedisOptions = {}): Redis {
  const client = new Redis(url, options);
  client.on('error', () => {});
  cleanups.push(async () => client.disconnect());
  return client;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as AddressInfo;
  await new Promise((done) => server.close(done));
  return port;
}

describe('store: Redis', () => {
  it('gives one IP one budget across two processes', async () => {
    const name = uniqueName('vk-test').replaceAll(':', '-');
    const connection = redisClient(REDIS_URL);
    // Until a client is connected, checks fall back to the insurance limiter (tested below): wait for it here.
    await new Promise((ready) => connection.once('ready', ready));
    const here = createIpRateLimiter({ store: connection, name, points: 20, windowSec: 60 });
    cleanups.push(() => here.close());
    const child = forkTs<RateLimitDecision & { ready?: boolean }>(
      resolve(import.meta.dirname, 'child-limiter.ts'),
      [REDIS_URL, name],
    );
    cleanups.push(() => child.stop());
    const ask = child.ask;
    expect((await ask()).ready).toBe(true);
    const decisions: RateLimitDecision[] = [];
    for (let i = 0; i < 25; i++) {
      decisions.push(i % 2 === 0 ? await here.check('198.51.100.77') : await ask({ check: '198.51.100.77' }));
    }
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
    expect(decisions.slice(20).every((d) => !d.allowed)).toBe(true);
    expect(decisions.every((d) => !d.degraded)).toBe(true);
  }, 30_000);

  it('falls back to the insurance limiter when Redis stops mid-test, never a 500', async () => {
    const port = await freePort();
    const server = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      {
        stdio: 'ignore',
      },
    );
    cleanups.push(async () => {
      if (server.exitCode === null) server.kill('SIGKILL');
    });
    const client = redisClient(`redis://127.0.0.1:${port}`, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => 100,
    });
    await new Promise<void>((ready, fail) => {
      const deadline = setTimeout(() => fail(new Error('private redis-server did not start')), 10_000);
      client.once('ready', () => {
        clearTimeout(deadline);
        ready();
      });
    });
    const name = uniqueName('vk-test').replaceAll(':', '-');
    const insured = createIpRateLimiter({ store: client, name, points: 5 });
    const closed = createIpRateLimiter({
      store: client,
      name: `${name}-c`,
      points: 5,
      onStoreError: 'closed',
    });
    const open = createIpRateLimiter({ store: client, name: `${name}-o`, points: 5, onStoreError: 'open' });
    cleanups.push(
      () => insured.close(),
      () => closed.close(),
      () => open.close(),
    );
    const http = createHttpServer(async (req, res) => {
      if (await insured.handle(req, res)) res.end('ok');
    });
    await new Promise<void>((done) => http.listen(0, '127.0.0.1', done));
    cleanups.push(() => new Promise((done) => http.close(done)));
    const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/`;

    for (let i = 0; i < 3; i++) expect((await insured.check('203.0.113.50')).degraded).toBe(false);

    const exited = new Promise((done) => server.once('exit', done));
    server.kill('SIGKILL');
    await exited;
    await new Promise((done) => setTimeout(done, 50));

    // Insurance: counted in this process from here on, with the full budget.
    const during = [];
    for (let i = 0; i < 7; i++) during.push(await insured.check('203.0.113.50'));
    expect(during.every((d) => d.degraded)).toBe(true);
    expect(during.filter((d) => d.allowed)).toHaveLength(5);
    expect((await closed.check('203.0.113.51')).allowed).toBe(false);
    expect((await open.check('203.0.113.52')).allowed).toBe(true);
    // Through HTTP: only 200s and 429s, never a 500.
    const statuses = [];
    for (let i = 0; i < 7; i++) statuses.push((await fetch(url)).status);
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    expect(statuses.filter((s) => s === 200)).toHaveLength(5);
  }, 30_000);
});
