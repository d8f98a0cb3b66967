// The Express and Fastify adapters, each with the real framework.
import type { AddressInfo } from 'node:net';
import express from 'express';
import Fastify from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { createIpRateLimiter } from '../../src/index.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()));
});

async function statuses(url: string, n: number) {
  const out: { status: number; retryAfter: string | null; ratelimit: string | null; body: string }[] = [];
  for (let i = 0; i < n; i++) {
    const res = await fetch(url);
    out.push({
      status: res.status,
      retryAfter: res.headers.get('retry-after'),
      ratelimit: res.headers.get('ratelimit'),
      body: await res.text(),
    });
  }
  return out;
}

describe('Express', () => {
  it('limits with middleware: 429, Retry-After, RateLimit headers and an OpenAI-style body', async () => {
    const limiter = createIpRateLimiter({ points: 3 });
    const app = express();
    app.use(limiter.express());
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    cleanups.push(
      () => limiter.close(),
      () => new Promise((resolve) => server.close(resolve)),
    );
    const results = await statuses(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, 5);
    expect(results.map((r) => r.status)).toEqual([200, 200, 200, 429, 429]);
    expect(results[0]!.ratelimit).toMatch(/^"default";r=2;t=\d+$/);
    expect(results[0]!.retryAfter).toBeNull();
    expect(Number(results[3]!.retryAfter)).toBeGreaterThan(0);
    expect(JSON.parse(results[3]!.body).error.type).toBe('rate_limit_exceeded');
  });

  it("passes an error that is not the store's to next(error), as the budgets' middleware does", async () => {
    const limiter = createIpRateLimiter({
      keyGenerator: () => {
        throw new Error('keyGenerator bug');
      },
    });
    const app = express();
    app.use(limiter.express());
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    const seen: string[] = [];
    app.use((error: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
      seen.push(error.message);
      res.status(500).send('handled');
    });
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    cleanups.push(
      () => limiter.close(),
      () => new Promise((resolve) => server.close(resolve)),
    );
    const [result] = await statuses(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, 1);
    expect(result).toMatchObject({ status: 500, body: 'handled' });
    expect(seen).toEqual(['keyGenerator bug']);
  });
});

describe('Fastify', () => {
  it('limits with an onRequest hook', async () => {
    const limiter = createIpRateLimiter({ points: 2, legacyHeaders: true });
    const app = Fastify();
    app.addHook('onRequest', limiter.fastify());
    app.get('/', async () => 'ok');
    await app.listen({ port: 0, host: '127.0.0.1' });
    cleanups.push(
      () => limiter.close(),
      () => app.close(),
    );
    const results = await statuses(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/`, 3);
    expect(results.map((r) => r.status)).toEqual([200, 200, 429]);
    expect(results[1]!.ratelimit).toMatch(/^"default";r=0;t=\d+$/);
    expect(Number(results[2]!.retryAfter)).toBeGreaterThan(0);
    expect(JSON.parse(results[2]!.body)).toMatchObject({ error: { code: 'rate_limit_exceeded' } });
  });
});
