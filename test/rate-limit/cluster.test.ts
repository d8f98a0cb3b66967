// Four real node:cluster workers share one budget through the primary: exactly 20 of 25 pass.
import { request } from 'node:http';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startClusterApp } from '../helpers/cluster-app.js';

const apps: { stop(): Promise<void> }[] = [];
let port: number;

async function startApp(env: Record<string, string> = {}): Promise<number> {
  const app = await startClusterApp(resolve(import.meta.dirname, 'cluster-app.ts'), env);
  apps.push(app);
  return app.port;
}

beforeAll(async () => {
  port = await startApp();
});

afterAll(async () => {
  for (const app of apps) await app.stop();
});

/** One request on a new connection, so the primary spreads them over the workers. */
function get(path = '/', onPort = port): Promise<{ status: number; worker: string; body: string }> {
  return new Promise((resolveReply, reject) => {
    const req = request({ host: '127.0.0.1', port: onPort, path, agent: false }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () =>
        resolveReply({ status: res.statusCode!, worker: String(res.headers['x-worker']), body }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

type Decision = { allowed: boolean; remaining: number; degraded: boolean };

describe('store: "cluster"', () => {
  it('gives one IP one budget across four workers', async () => {
    const replies = [];
    for (let i = 0; i < 25; i++) replies.push(await get());
    expect(replies.filter((r) => r.status === 200)).toHaveLength(20);
    expect(replies.filter((r) => r.status === 429)).toHaveLength(5);
    expect(replies.slice(20).every((r) => r.status === 429)).toBe(true);
    // The requests really were spread over several workers.
    expect(new Set(replies.map((r) => r.worker)).size).toBeGreaterThanOrEqual(2);
  }, 30_000);

  it('answers every check of a burst sent as one batch, exactly: 20 of 50 pass, remaining 19 … 0', async () => {
    const decisions = JSON.parse((await get('/burst')).body) as Decision[];
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
    expect(decisions.filter((d) => d.allowed).map((d) => d.remaining)).toEqual(
      Array.from({ length: 20 }, (_, i) => 19 - i),
    );
    expect(decisions.every((d) => !d.degraded)).toBe(true);
  }, 30_000);

  it('falls back to the worker insurance store when the primary does not answer within storeTimeoutMs', async () => {
    const silentPort = await startApp({ SERVE_RATE_LIMITS: '0' });
    const decisions = JSON.parse((await get('/burst', silentPort)).body) as Decision[];
    // The insurance store counts in the worker meanwhile: the same budget, marked degraded.
    expect(decisions.every((d) => d.degraded)).toBe(true);
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
  }, 30_000);
});
