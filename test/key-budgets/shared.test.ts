// One budget per key across four node:cluster workers (through the primary) and across processes on Redis: exact
// admission at the boundary, refused requests never counted, and a Redis outage answered by the insurance store.
import { request } from 'node:http';
import { resolve } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type BudgetDecision, createKeyBudgets } from '../../src/index.js';
import { forkTs } from '../helpers/child.js';
import { startClusterApp } from '../helpers/cluster-app.js';
import { REDIS_URL, startPrivateRedis, uniqueName } from '../helpers/services.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * One request to a cluster app on a new connection, so the primary spreads them over the workers. `timeoutMs`: fails
 * when no answer came by then (a connection handed to a worker as it exits is never answered).
 */
function getFrom(port: number, path: string, timeoutMs?: number) {
  return new Promise<{ worker: string; leased: number; body: unknown }>((done, fail) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () =>
        done({
          worker: String(res.headers['x-worker']),
          leased: Number(res.headers['x-leased']),
          body: JSON.parse(body),
        }),
      );
    });
    req.on('timeout', () => req.destroy(new Error(`no answer to ${path} within ${timeoutMs} ms`)));
    req.on('error', fail);
    req.end();
  });
}

describe('store: "cluster" (four workers)', () => {
  let app: Awaited<ReturnType<typeof startClusterApp>>;
  let port: number;
  beforeAll(async () => {
    app = await startClusterApp(resolve(import.meta.dirname, 'cluster-app.ts'));
    port = app.port;
  }, 30_000);
  afterAll(() => app.stop());

  const get = (path: string) => getFrom(port, path);

  it('admits exactly the request limit, whichever worker asks, and never counts a refusal', async () => {
    const replies = [];
    for (let i = 0; i < 25; i++) replies.push(await get('/admit?key=rpm&requests=20'));
    const decisions = replies.map((r) => r.body as BudgetDecision);
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
    expect(decisions.slice(20).every((d) => !d.allowed && d.refusedBy === 'requests')).toBe(true);
    expect(decisions.slice(0, 20).map((d) => d.remainingRequests)).toEqual(
      Array.from({ length: 20 }, (_, i) => 19 - i),
    );
    // Refusals were not counted: remaining stays 0, never negative or beyond the limit.
    expect(decisions.slice(20).every((d) => d.remainingRequests === 0)).toBe(true);
    expect(new Set(replies.map((r) => r.worker)).size).toBeGreaterThanOrEqual(2);
  }, 30_000);

  it('admits exactly 20 of a 50-request burst sent in one batch', async () => {
    const decisions = (await get('/burst?key=burst&requests=20')).body as BudgetDecision[];
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
    expect(decisions.every((d) => !d.degraded)).toBe(true);
  }, 30_000);

  it('admits while the window has tokens left, charged from any worker, and refuses at the boundary', async () => {
    const admit = async () => (await get('/admit?key=tpm&tokens=100')).body as BudgetDecision;
    expect((await admit()).allowed).toBe(true);
    await get('/charge?key=tpm&tokens=99');
    const under = await admit();
    expect(under).toMatchObject({ allowed: true, remainingTokens: 1 });
    await get('/charge?key=tpm&tokens=1');
    // 100 of 100 used: the next is refused by tokens, with the time to wait.
    const refused = await admit();
    expect(refused).toMatchObject({ allowed: false, refusedBy: 'tokens', remainingTokens: 0 });
    expect(refused.retryAfterSec).toBeGreaterThanOrEqual(1);
    expect(refused.retryAfterSec).toBeLessThanOrEqual(60);
  }, 30_000);
});

describe('store: "cluster" leases (four workers)', () => {
  let app: Awaited<ReturnType<typeof startClusterApp>>;
  beforeAll(async () => {
    app = await startClusterApp(resolve(import.meta.dirname, 'cluster-app.ts'));
  }, 30_000);
  afterAll(() => app.stop());

  const get = (path: string) => getFrom(app.port, path);

  /**
   * The leased admissions among `replies`, summed over the workers that answered: each reply carries its worker's
   * running count, so a worker's share is its last count less its first (its first reply's own is not counted).
   */
  const leasedBy = (replies: { worker: string; leased: number }[]) => {
    const first = new Map<string, number>();
    const last = new Map<string, number>();
    for (const r of replies) {
      if (!first.has(r.worker)) first.set(r.worker, r.leased);
      last.set(r.worker, r.leased);
    }
    let sum = 0;
    for (const [worker, count] of last) sum += count - first.get(worker)!;
    return sum;
  };

  it('admits most requests of a key with room to spare from a lease, and exactly the limit: no refusal before it', async () => {
    // 256 per window: slices of 4. Sequential requests over four workers: each refusal at the edge waits for the
    // other workers' slices to come back, so the 256th is admitted and the 257th refused, as one process would.
    const replies = [];
    for (let i = 0; i < 270; i++) replies.push(await get('/admit?key=edge&requests=256'));
    const decisions = replies.map((r) => r.body as BudgetDecision);
    expect(decisions.slice(0, 256).every((d) => d.allowed)).toBe(true);
    expect(decisions.slice(256).every((d) => !d.allowed && d.refusedBy === 'requests')).toBe(true);
    expect(new Set(replies.map((r) => r.worker)).size).toBeGreaterThanOrEqual(2);
    // Most were admitted with no round trip (a slice of 4 saves 3 of every 4 until the edge).
    expect(leasedBy(replies)).toBeGreaterThan(150);
  }, 60_000);

  it('admits exactly the limit of concurrent bursts from every worker while slices are out', async () => {
    const bursts = await Promise.all(Array.from({ length: 8 }, () => get('/burst?key=bursts&requests=256')));
    const decisions = bursts.flatMap((b) => b.body as BudgetDecision[]);
    expect(decisions).toHaveLength(400);
    expect(decisions.filter((d) => d.allowed)).toHaveLength(256);
    expect(decisions.every((d) => !d.degraded)).toBe(true);
  }, 60_000);

  it('settles tokens into the lease and admits exactly what one process would', async () => {
    // 1,280 tokens, each request reserving 10 and using 7: one process admits while 10 more fit.
    const oracle = createKeyBudgets();
    let expected = 0;
    for (;;) {
      const decision = await oracle.admit('t', { tokens: 1280 }, { reserveTokens: 10 });
      if (!decision.allowed) break;
      await oracle.settle(decision.reservation, 't', 7);
      expected++;
    }
    await oracle.close();
    const replies = [];
    for (let i = 0; i < expected + 5; i++)
      replies.push(await get('/use?key=tokens&tokens=1280&reserve=10&used=7'));
    const decisions = replies.map((r) => r.body as BudgetDecision);
    expect(decisions.filter((d) => d.allowed)).toHaveLength(expected);
    expect(decisions.slice(0, expected).every((d) => d.allowed)).toBe(true);
    expect(decisions.slice(expected).every((d) => !d.allowed && d.refusedBy === 'tokens')).toBe(true);
    expect(leasedBy(replies)).toBeGreaterThan(expected / 2);
  }, 60_000);

  it('takes every slice back when a key is reset: the new window admits exactly its limit again', async () => {
    const admit = () => get('/admit?key=reset&requests=256');
    const first = [];
    for (let i = 0; i < 40; i++) first.push(await admit());
    expect(leasedBy(first)).toBeGreaterThan(0);
    await get('/reset?key=reset');
    // Slices of the old window are revoked (their workers hold them no more): 256 again, not 256 + what they held.
    const second = [];
    for (let i = 0; i < 270; i++) second.push(await admit());
    const decisions = second.map((r) => r.body as BudgetDecision);
    expect(decisions.slice(0, 256).every((d) => d.allowed)).toBe(true);
    expect(decisions.slice(256).every((d) => !d.allowed)).toBe(true);
  }, 60_000);

  it('goes on deciding exactly when a worker dies holding a slice: at most its slice is lost, never counted twice', async () => {
    const own = await startClusterApp(resolve(import.meta.dirname, 'cluster-app.ts'));
    try {
      const before = [];
      for (let i = 0; i < 8; i++) before.push(await getFrom(own.port, '/admit?key=gone&requests=256'));
      await getFrom(own.port, '/exit');
      // Until the primary has seen the worker go, a connection may still be handed to it and never answered: probe
      // (another key) until a whole round of the three left answers.
      let answered = 0;
      while (answered < 3) {
        answered = await getFrom(own.port, '/admit?key=probe&requests=1000', 1000).then(
          () => answered + 1,
          () => 0,
        );
      }
      const after = [];
      for (let i = 0; i < 300; i++) after.push(await getFrom(own.port, '/admit?key=gone&requests=256'));
      const decisions = [...before, ...after].map((r) => r.body as BudgetDecision);
      const allowed = decisions.filter((d) => d.allowed).length;
      // Slices of 4: what the dead worker had not used of its slice stays counted, nothing more.
      expect(allowed).toBeLessThanOrEqual(256);
      expect(allowed).toBeGreaterThanOrEqual(256 - 4);
      expect(decisions.every((d) => !d.degraded)).toBe(true);
      expect(new Set(after.map((r) => r.worker)).size).toBe(3);
    } finally {
      await own.stop();
    }
  }, 60_000);

  it('never leases a key whose limits are too small to slice', async () => {
    const replies = [];
    for (let i = 0; i < 30; i++) replies.push(await get('/admit?key=small&requests=100'));
    expect(leasedBy(replies)).toBe(0);
    expect(replies.filter((r) => (r.body as BudgetDecision).allowed)).toHaveLength(30);
  }, 30_000);
});

describe('store: Redis', () => {
  async function connected(url = REDIS_URL): Promise<Redis> {
    const client = new Redis(url, { maxRetriesPerRequest: 1 });
    client.on('error', () => {});
    cleanups.push(async () => client.disconnect());
    await new Promise((ready) => client.once('ready', ready));
    return client;
  }

  it('gives a key one budget across two processes: exact at the request and token boundaries', async () => {
    const name = uniqueName('vk-kb').replaceAll(':', '-');
    const here = createKeyBudgets({ store: await connected(), name });
    cleanups.push(() => here.close());
    const child = forkTs<BudgetDecision & { ready?: boolean; charged?: boolean }>(
      resolve(import.meta.dirname, 'child-budgets.ts'),
      [REDIS_URL, name],
    );
    cleanups.push(() => child.stop());
    expect((await child.ask()).ready).toBe(true);
    const limits = { requests: 20, tokens: 1000 };
    const decisions: BudgetDecision[] = [];
    for (let i = 0; i < 25; i++) {
      decisions.push(
        i % 2 === 0 ? await here.admit('rpm', limits) : await child.ask({ admit: 'rpm', limits }),
      );
    }
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
    expect(decisions.slice(20).every((d) => !d.allowed && d.refusedBy === 'requests')).toBe(true);
    expect(decisions.every((d) => !d.degraded)).toBe(true);

    // Tokens: 999 charged by the other process leaves one; one more, and the key is refused here.
    const tokenLimits = { tokens: 1000 };
    expect((await here.admit('tpm', tokenLimits)).allowed).toBe(true);
    await child.ask({ charge: 'tpm', tokens: 999 });
    expect(await here.admit('tpm', tokenLimits)).toMatchObject({ allowed: true, remainingTokens: 1 });
    await here.charge('tpm', 1);
    expect(await child.ask({ admit: 'tpm', limits: tokenLimits })).toMatchObject({
      allowed: false,
      refusedBy: 'tokens',
    });
  }, 30_000);

  it('answers from the insurance store when Redis dies mid-run, never a throw', async () => {
    const redisServer = await startPrivateRedis();
    cleanups.push(() => redisServer.kill());
    const client = await connected(redisServer.url);
    const budgets = createKeyBudgets({ store: client, name: 'outage' });
    cleanups.push(() => budgets.close());
    expect(await budgets.admit('k', { requests: 3 })).toMatchObject({ allowed: true, degraded: false });
    await redisServer.kill();
    // Down: the insurance store counts in this process (3 per window still holds), no throw.
    const during = [];
    for (let i = 0; i < 4; i++) during.push(await budgets.admit('k', { requests: 3 }));
    expect(during.every((d) => d.degraded)).toBe(true);
    expect(during.filter((d) => d.allowed)).toHaveLength(3);
    await expect(budgets.charge('k', 10)).resolves.toBeUndefined();
  }, 30_000);

  it('fails closed or open when told to, with no insurance', async () => {
    const down = new Redis('redis://127.0.0.1:1', { lazyConnect: true, enableOfflineQueue: false });
    down.on('error', () => {});
    cleanups.push(async () => down.disconnect());
    const closed = createKeyBudgets({ store: down, onStoreError: 'closed' });
    const open = createKeyBudgets({ store: down, onStoreError: 'open' });
    cleanups.push(
      () => closed.close(),
      () => open.close(),
    );
    const refused = await closed.admit('k', { tokens: 10 });
    expect(refused).toMatchObject({ allowed: false, refusedBy: 'tokens', degraded: true, retryAfterSec: 60 });
    expect(JSON.parse(closed.errorBody(refused)).error).toMatchObject({
      type: 'tokens',
      code: 'rate_limit_exceeded',
      param: null,
    });
    expect(await open.admit('k', { tokens: 10 })).toMatchObject({ allowed: true, degraded: true });
  });
});
