// The key store on the real PostgreSQL and on SQLite: one schema, migrations, hashes only; and Redis revocation.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { startWorker } from '../../examples/gateway/app.js';
import { loadConfig } from '../../examples/gateway/config.js';
import { hashKey, isWellFormedKey, type KeyStore, openKeyStore } from '../../examples/gateway/key-store.js';
import { startVllmSimulator } from '../../src/testing/index.js';
import { DATABASE_URL, REDIS_URL } from '../helpers/services.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function exercise(store: KeyStore) {
  const name = `k-${Date.now()}-${Math.random().toString(36).slice(2, 7)}`;
  const { key, record } = await store.create(name);
  expect(key).toMatch(/^vk-[A-Za-z0-9_-]{43}$/);
  expect(record).toMatchObject({ name, revokedAt: null, prefix: key.slice(0, 10) });
  expect(await store.findActiveByHash(hashKey(key))).toMatchObject({ id: record.id, name });
  expect((await store.list()).some((k) => k.id === record.id)).toBe(true);
  // Both stores say the same thing for a taken name (not the database's own constraint message).
  await expect(store.create(name)).rejects.toThrow(`a key named "${name}" already exists`);
  expect(isWellFormedKey(key)).toBe(true);
  expect(isWellFormedKey(`${key}x`)).toBe(false);
  const revoked = await store.revoke(name);
  expect(revoked).toMatchObject({ id: record.id, keyHash: hashKey(key) });
  expect(revoked?.revokedAt).toBeTypeOf('string');
  expect(await store.findActiveByHash(hashKey(key))).toBeUndefined();
  expect(await store.revoke(record.id)).toBeUndefined();
  // A batch written twice under one id (a retry after a commit whose answer was lost) is added once.
  const batch = [{ keyId: record.id, requests: 2, promptTokens: 10, completionTokens: 5 }];
  const id = `batch-${name}`;
  await store.addUsage(batch, id);
  await store.addUsage(batch, id);
  await store.addUsage([{ ...batch[0]!, requests: 1 }], `${id}-next`);
  expect(await store.usage(name)).toEqual([{ name, requests: 3, promptTokens: 20, completionTokens: 10 }]);
  return key;
}

describe('key store', () => {
  it('works on the real PostgreSQL, stores only hashes, and migrates idempotently', async () => {
    const store = await openKeyStore(DATABASE_URL);
    cleanups.push(() => store.close());
    const key = await exercise(store);
    // Opening again re-applies nothing.
    const again = await openKeyStore(DATABASE_URL);
    cleanups.push(() => again.close());
    const client = new pg.Client({ connectionString: DATABASE_URL });
    await client.connect();
    cleanups.push(() => client.end());
    const rows = (await client.query('SELECT * FROM api_keys')).rows;
    expect(JSON.stringify(rows)).not.toContain(key);
    expect((await client.query('SELECT version FROM schema_migrations ORDER BY version')).rows).toEqual(
      [1, 2, 3, 4, 5, 6, 7].map((version) => ({ version })),
    );
  });

  it('works on SQLite', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-kit-keys-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const store = await openKeyStore(`sqlite:${join(dir, 'nested', 'keys.db')}`);
    cleanups.push(() => store.close());
    await exercise(store);
  });
});

describe('revocation through Redis', () => {
  it('reaches a running gateway within a second, long before the cache TTL', async () => {
    const sim = await startVllmSimulator();
    cleanups.push(() => sim.close());
    const config = loadConfig({
      ENV: 'development',
      HOST: '127.0.0.1',
      PORT: '0',
      DATABASE_URL,
      REDIS_URL,
      TOKEN_CACHE_TTL_SEC: '300',
      RATE_LIMIT_POINTS: '100000',
    });
    const gateway = await startWorker(config, { upstreams: [sim.url], logger: pino({ level: 'silent' }) });
    cleanups.push(() => gateway.close(1000));
    const name = `revoke-${Date.now()}`;
    const { key } = await gateway.keyStore.create(name);
    const verify = () => fetch(`${gateway.url}/auth/verify`, { headers: { authorization: `Bearer ${key}` } });
    expect((await verify()).status).toBe(200);
    // What `npm run keys -- revoke NAME` does: revoke in the database, announce on Redis.
    const { spawnSync } = await import('node:child_process');
    const cli = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'examples/gateway/keys-cli.ts', 'revoke', name],
      {
        env: { ...process.env, DATABASE_URL, REDIS_URL },
        encoding: 'utf8',
      },
    );
    expect(cli.status).toBe(0);
    expect(cli.stdout).toContain(`Revoked`);
    await expect.poll(async () => (await verify()).status, { timeout: 1000, interval: 50 }).toBe(401);
  });
});
