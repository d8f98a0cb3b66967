// The reference gateway in one process for tests: a worker on port 0 with a fresh SQLite key store and a key, closed
// after each test, and small request helpers.
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { afterEach } from 'vitest';
import { type GatewayWorker, startWorker } from '../../examples/gateway/app.js';
import { loadConfig } from '../../examples/gateway/config.js';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';

/** The admin key tests configure (ADMIN_KEY) to read the detailed /health and per-key metrics. */
export const ADMIN_KEY = 'test-admin-key-0123456789';
export const admin = { headers: { authorization: `Bearer ${ADMIN_KEY}` } };

export interface GatewaySetup {
  gateway: GatewayWorker;
  sim: VllmSimulator;
  key: string;
  url: string;
}

/** Registers an afterEach that closes (in reverse order) everything `setup` and `onCleanup` opened. */
export function trackGateways() {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  const onCleanup = (...close: (() => Promise<unknown>)[]) => void cleanups.push(...close);
  return {
    onCleanup,
    async simulator(options: Parameters<typeof startVllmSimulator>[0] = {}): Promise<VllmSimulator> {
      const sim = await startVllmSimulator({ model: 'm', ...options });
      onCleanup(() => sim.close());
      return sim;
    },
    /**
     * A development-mode worker (1 process) in front of `sim` (a fresh simulator when absent; any upstream with a
     * `url` will do, `sim` in the result is then that object).
     */
    async setup(
      env: Record<string, string> = {},
      sim?: VllmSimulator | { url: string },
      moreUpstreams: string[] = [],
      logger: Logger = pino({ level: 'silent' }),
    ): Promise<GatewaySetup> {
      const dir = mkdtempSync(join(tmpdir(), 'vllm-kit-gateway-'));
      onCleanup(async () => rmSync(dir, { recursive: true, force: true }));
      const simulator = sim ?? (await startVllmSimulator({ model: 'm' }));
      if (!sim) onCleanup(() => (simulator as VllmSimulator).close());
      const config = loadConfig({
        ENV: 'development',
        HOST: '127.0.0.1',
        PORT: '0',
        DATABASE_URL: `sqlite:${join(dir, 'keys.db')}`,
        ...env,
      });
      const gateway = await startWorker(config, { upstreams: [simulator.url, ...moreUpstreams], logger });
      onCleanup(() => gateway.close(1000));
      const { key } = await gateway.keyStore.create('alice');
      return { gateway, sim: simulator as VllmSimulator, key, url: gateway.url };
    },
  };
}

export const post = (
  url: string,
  path: string,
  init: { key?: string | undefined; body?: string; type?: string; headers?: Record<string, string> } = {},
) =>
  fetch(`${url}${path}`, {
    method: 'POST',
    headers: {
      ...(init.key ? { authorization: `Bearer ${init.key}` } : {}),
      'content-type': init.type ?? 'application/json',
      ...init.headers,
    },
    body: init.body ?? JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
  });

/**
 * POSTs raw text to /v1/chat/completions on a connection of its own (a cluster's requests then spread over its
 * workers); resolves with status and body, or status 0 when `leaveAtOnce` cuts it.
 */
export function postOwnConnection(
  url: string,
  key: string,
  text: string,
  leaveAtOnce = false,
): Promise<{ status: number; body: string }> {
  return new Promise((done, fail) => {
    const req = request(`${url}/v1/chat/completions`, {
      method: 'POST',
      agent: false,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => done({ status: res.statusCode!, body }));
    });
    req.on('error', (error) => (leaveAtOnce ? done({ status: 0, body: '' }) : fail(error)));
    req.end(text);
    if (leaveAtOnce) setTimeout(() => req.destroy(), 5);
  });
}

export async function errorOf(response: Response) {
  return {
    status: response.status,
    body: (await response.json()) as { error: { type: string; code: unknown; message: string } },
  };
}

export { generations } from './fixtures.js';
