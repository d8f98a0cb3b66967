// One gateway worker: builds every piece from the configuration and serves HTTP. Used by main.ts in each worker (or
// alone in development), and by the tests.
import cluster from 'node:cluster';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import client from 'prom-client';
import { createConcurrencyLimiter, createIpRateLimiter, createTokenCache, createVllmClient } from 'vllm-kit';
import type { GatewayConfig } from './config.js';
import { createGateway } from './gateway.js';
import { type ApiKey, hashKey, type KeyStore, openKeyStore, REVOCATION_CHANNEL } from './key-store.js';
import { createMetrics } from './metrics.js';

export interface GatewayWorker {
  server: Server;
  url: string;
  keyStore: KeyStore;
  /** Stops accepting, lets in-flight requests finish (up to `graceMs`), then closes every resource. */
  close(graceMs?: number): Promise<void>;
}

export function createLogger(config: GatewayConfig): Logger {
  const options = {
    level: process.env.LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    // Never log credentials, wherever they would appear.
    redact: ['req.headers.authorization', 'headers.authorization', 'authorization', 'key'],
  };
  // Development: readable lines on stdout (in-process, no worker thread). Production: one JSON object a line,
  // written in 4 KB batches rather than one write(2) per line (pino flushes what is left when the process exits).
  return config.env === 'development'
    ? pino(options, pretty({ colorize: false, sync: true }))
    : pino(options, pino.destination({ dest: 1, minLength: 4096, sync: false }));
}

export async function startWorker(
  config: GatewayConfig,
  options: { upstreams: string[]; logger?: Logger; port?: number },
): Promise<GatewayWorker> {
  const logger = options.logger ?? createLogger(config);
  const keyStore = await openKeyStore(config.databaseUrl);
  const redis = config.redisUrl
    ? new Redis(config.redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 })
    : undefined;
  redis?.on('error', (error) => logger.warn({ err: { message: error.message } }, 'redis error'));
  const vllm = createVllmClient({
    baseUrls: options.upstreams,
    connections: config.poolConnections,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs,
    firstByteTimeoutMs: config.upstreamTimeoutMs,
    ...(config.vllmApiKey ? { apiKey: config.vllmApiKey } : {}),
  });
  const tokens = createTokenCache<ApiKey>({
    // The database stores SHA-256 of each key (hex); the cache keys by the same digest.
    verify: async (token) => (await keyStore.findActiveByHash(hashKey(token))) ?? null,
    ttlMs: config.tokenCacheTtlSec * 1000,
    sweepIntervalMs: config.tokenCacheSweepSec * 1000,
    ...(redis ? { redis: { client: redis, channel: REVOCATION_CHANNEL } } : {}),
  });
  // Serve only once revocations can reach us (a message published before the subscription is lost), but never
  // wait more than 2 s for a Redis that is down: the cache TTL still bounds a revoked key's life then.
  await Promise.race([tokens.ready(), new Promise((resolve) => setTimeout(resolve, 2000).unref())]);
  const rateLimiter = createIpRateLimiter({
    points: config.rateLimitPoints,
    windowSec: config.rateLimitWindowSec,
    trustProxy: config.trustProxy,
    proxyHeader: config.trustProxyHeader,
    // Several workers share one budget through the primary; a single worker keeps its own (no IPC per request).
    store: redis ?? (cluster.isWorker && config.workers > 1 ? 'cluster' : 'memory'),
  });
  const limiter = createConcurrencyLimiter({
    concurrency: config.limitConcurrency,
    maxQueue: config.maxQueue,
    queueTimeoutMs: config.queueTimeoutMs,
  });
  const metrics = config.metrics
    ? createMetrics({ client: vllm, tokens: tokens as never, limiter })
    : undefined;
  // prom-client answers the primary's aggregation requests only once an AggregatorRegistry exists in the worker.
  if (config.metrics && cluster.isWorker) new client.AggregatorRegistry();
  const renderMetrics = config.metrics
    ? cluster.isWorker
      ? () => askPrimaryForMetrics()
      : async () => ({ contentType: client.register.contentType, body: await client.register.metrics() })
    : undefined;
  const gateway = createGateway({
    client: vllm,
    tokens,
    rateLimiter,
    limiter,
    logger,
    metrics,
    renderMetrics,
    maxBodyBytes: config.maxBodyBytes,
  });
  const server = createServer((req, res) => void gateway.handle(req, res));
  // Guard against slow clients: headers within 15 s, the whole request within 60 s, idle keep-alive 5 s.
  server.headersTimeout = 15_000;
  server.requestTimeout = 60_000;
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(options.port ?? config.port, config.host, resolve));
  const address = server.address() as AddressInfo;
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host;
  return {
    server,
    url: `http://${host}:${address.port}`,
    keyStore,
    async close(graceMs = 10_000) {
      const closed = new Promise((resolve) => server.close(resolve));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      timer.unref();
      await closed;
      clearTimeout(timer);
      await Promise.all([limiter.close(), rateLimiter.close(), tokens.close()]);
      await vllm.close();
      await keyStore.close();
      await redis?.quit().catch(() => undefined);
    },
  };
}

let metricsRequest = 0;
/** Asks the primary for metrics aggregated over every worker. */
function askPrimaryForMetrics(): Promise<{ contentType: string; body: string }> {
  const id = ++metricsRequest;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('metrics: the primary did not answer')), 5000);
    const onMessage = (message: { type?: string; id?: number; body?: string; contentType?: string }) => {
      if (message?.type !== 'vllm-kit:gateway:metrics' || message.id !== id) return;
      clearTimeout(timer);
      process.off('message', onMessage);
      resolve({ contentType: message.contentType ?? 'text/plain', body: message.body ?? '' });
    };
    process.on('message', onMessage);
    process.send?.({ type: 'vllm-kit:gateway:metrics-request', id });
  });
}
