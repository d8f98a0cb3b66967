// One gateway worker: builds every piece from the configuration and serves HTTP. Used by main.ts in each worker (or
// alone in development), and by the tests.
import cluster from 'node:cluster';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import client from 'prom-client';
import {
  clusterRoutingSync,
  createConcurrencyLimiter,
  createIpRateLimiter,
  createKeyBudgets,
  createPermitPool,
  createTokenCache,
  createVllmClient,
  redisRoutingSync,
} from 'vllm-kit';
import type { GatewayConfig } from './config.js';
import { createCors } from './cors.js';
import { createGateway } from './gateway.js';
import { startHealthProbe } from './health.js';
import {
  type ApiKey,
  describeDatabaseError,
  hashKey,
  type KeyStore,
  openKeyStore,
  REVOCATION_CHANNEL,
} from './key-store.js';
import { createMetrics } from './metrics.js';
import { clusterSingleFlight } from './single-flight.js';
import { startTelemetry } from './telemetry.js';
import { UsageRecorder } from './usage-recorder.js';

export interface GatewayWorker {
  server: Server;
  url: string;
  /** The METRICS_PORT listener's URL, when there is one. */
  metricsUrl: string | undefined;
  keyStore: KeyStore;
  /** Requests in flight now (their responses not yet closed). */
  openRequests(): number;
  /** Stops accepting, lets in-flight requests finish (up to `graceMs`), then closes every resource. */
  close(graceMs?: number): Promise<void>;
}

/** How often buffered production log lines are written out, at the latest. */
const LOG_FLUSH_MS = 500;

/** The worker's logger and the timer that flushes it (stopped, with a last flush, by `close`). */
export function createLogger(config: GatewayConfig): { logger: Logger; close(): void } {
  const options = {
    level: config.logLevel,
    base: { pid: process.pid },
    // Never log credentials, wherever they would appear.
    redact: ['req.headers.authorization', 'headers.authorization', 'authorization', 'key'],
  };
  // Development: readable lines on stdout (in-process, no worker thread).
  if (config.env === 'development') {
    return { logger: pino(options, pretty({ colorize: false, sync: true })), close() {} };
  }
  // Production: one JSON object a line, written in 4 KB batches rather than one write(2) per line — and at least
  // every LOG_FLUSH_MS, so a quiet worker's lines still show within a second and a SIGKILL loses at most that much.
  // Every exit path flushes what is left (pino registers a synchronous flush on process exit).
  const destination = pino.destination({ dest: 1, minLength: 4096, sync: false });
  const timer = setInterval(() => destination.flush(), LOG_FLUSH_MS);
  timer.unref();
  return {
    logger: pino(options, destination),
    close() {
      clearInterval(timer);
      try {
        destination.flushSync();
      } catch {
        // A write already in flight finishes by itself; the exit flush catches the rest.
      }
    },
  };
}

export async function startWorker(
  config: GatewayConfig,
  options: { upstreams: string[]; logger?: Logger; port?: number },
): Promise<GatewayWorker> {
  const logging = options.logger ? { logger: options.logger, close() {} } : createLogger(config);
  const logger = logging.logger;
  // A worker of main.ts finds the schema migrated by the primary: it connects on first use, so it starts (and serves
  // keys already cached) while the database is down, and reconnects by itself.
  const keyStore = await openKeyStore(config.databaseUrl, {
    migrate: !cluster.isWorker,
    connectTimeoutMs: config.databaseConnectTimeoutMs,
    onError: (error) =>
      logger.warn(
        { err: { message: describeDatabaseError(error) } },
        'key store connection lost; reconnecting on next use',
      ),
  });
  const redis = config.redisUrl
    ? new Redis(config.redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 })
    : undefined;
  // One line when Redis becomes unreachable and one when it is back, not one per reconnection attempt.
  let redisUp: boolean | undefined;
  redis?.on('ready', () => {
    if (redisUp !== true) logger.info({ redis: redactRedisUrl(config.redisUrl!) }, 'redis connected');
    redisUp = true;
  });
  redis?.on('error', (error) => {
    if (redisUp === false) return;
    redisUp = false;
    logger.warn(
      { redis: redactRedisUrl(config.redisUrl!), err: { message: error.message } },
      'redis unreachable; shared limits use their fallback until it is back',
    );
  });
  // Several workers share one budget through the primary, several hosts through Redis; a single worker keeps its own
  // (no IPC per request).
  const sharedStore = redis ?? (cluster.isWorker && config.workers > 1 ? 'cluster' : 'memory');
  // While that store is down each process counts its share of every limit, so together they stay within it.
  const processes = config.workers * (redis === undefined ? 1 : config.gatewayInstances);
  // UPSTREAM_CONCURRENCY: at most that many requests in flight to each replica, whatever the number of workers and
  // hosts (LIMIT_CONCURRENCY stays a per-worker bound on top).
  const permits =
    config.upstreamConcurrency === undefined
      ? undefined
      : createPermitPool({
          permits: config.upstreamConcurrency,
          store: sharedStore,
          name: 'gateway',
          processes,
        });
  // OpenTelemetry first: the client's instruments come from the SDK's meter provider.
  const telemetry = config.telemetry
    ? await startTelemetry(process.env, logger, { upstreamSpan: config.telemetryUpstreamSpan })
    : undefined;
  const vllm = createVllmClient({
    baseUrls: options.upstreams,
    connections: config.poolConnections,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs,
    firstByteTimeoutMs: config.upstreamTimeoutMs,
    routing: config.routing,
    routingLoadFactor: config.routingLoadFactor,
    // Replicas may serve different models: each one's /v1/models is read, and requests go where their model is.
    modelDiscovery: true,
    modelRefreshMs: config.modelRefreshMs,
    loadSignalsIntervalMs: config.loadSignalsIntervalMs,
    loraAdapters: config.loraAdapters,
    aliases: config.modelAliases,
    // One load per adapter across the workers: the primary picks the worker that loads it.
    ...(cluster.isWorker && config.workers > 1 ? { singleFlight: clusterSingleFlight() } : {}),
    // Every worker (and host) routes over the same replicas: the load bound holds for the replica, not per worker.
    processes: config.workers * config.gatewayInstances,
    // What each worker sent where, shared (hosts through Redis, workers through the primary): a conversation whose
    // turns reach different workers still finds the replica holding it.
    ...(redis
      ? { routingSync: redisRoutingSync(redis) }
      : cluster.isWorker && config.workers > 1
        ? { routingSync: clusterRoutingSync() }
        : {}),
    ...(config.vllmApiKey ? { apiKey: config.vllmApiKey } : {}),
    ...(permits ? { permits, permitTimeoutMs: config.queueTimeoutMs } : {}),
    // Off unless exporting: the client then loads nothing and spends nothing on it.
    telemetry: telemetry
      ? {
          api: telemetry.api,
          captureContent: config.telemetryCaptureContent,
          chunkTiming: config.telemetryChunkTiming,
        }
      : false,
  });
  const keyCache = createTokenCache<ApiKey>({
    // The database stores SHA-256 of each key (hex); the cache keys by the same digest.
    verify: async (token) => (await keyStore.findActiveByHash(hashKey(token))) ?? null,
    ttlMs: config.tokenCacheTtlSec * 1000,
    // The key store down (a restart, a failover): keys already verified keep working meanwhile.
    staleIfErrorMs: config.tokenCacheStaleIfErrorSec * 1000,
    sweepIntervalMs: config.tokenCacheSweepSec * 1000,
    ...(redis ? { redis: { client: redis, channel: REVOCATION_CHANNEL } } : {}),
  });
  // Serve only once revocations can reach us (a message published before the subscription is lost), but never
  // wait more than 2 s for a Redis that is down: the cache TTL still bounds a revoked key's life then.
  await Promise.race([keyCache.ready(), new Promise((resolve) => setTimeout(resolve, 2000).unref())]);
  const ipRateLimiter = createIpRateLimiter({
    points: config.rateLimitPoints,
    windowSec: config.rateLimitWindowSec,
    name: config.rateLimitName,
    trustProxy: config.trustProxy,
    proxyHeader: config.trustProxyHeader,
    store: sharedStore,
    processes,
  });
  // Keys with rpm/tpm: one budget per key across every worker and host.
  const budgets = createKeyBudgets({ store: sharedStore, name: 'gateway', processes });
  const usage = new UsageRecorder(keyStore, config.usageFlushMs, logger);
  const concurrencyLimiter = createConcurrencyLimiter({
    concurrency: config.limitConcurrency,
    maxQueue: config.maxQueue,
    queueTimeoutMs: config.queueTimeoutMs,
    queuePolicy: config.queuePolicy,
    maxQueuePerKey: config.maxQueuePerKey,
    fairShareHeadroom: config.limitConcurrencyHeadroom,
  });
  const metrics = config.metrics
    ? createMetrics({ client: vllm, keyCache, concurrencyLimiter, permits, perKey: config.metricsPerKey })
    : undefined;
  // The replicas' health, probed on its own schedule: /health and /readyz answer from it. The first probe is awaited
  // (2 s at most), so readiness is known before the first request.
  const health = startHealthProbe(vllm, logger, config.healthIntervalMs);
  await health.ready;
  // prom-client answers the primary's aggregation requests only once an AggregatorRegistry exists in the worker.
  if (config.metrics && cluster.isWorker) new client.AggregatorRegistry();
  const renderMetrics = config.metrics
    ? cluster.isWorker
      ? () => askPrimaryForMetrics()
      : async () => ({ contentType: client.register.contentType, body: await client.register.metrics() })
    : undefined;
  const gateway = createGateway({
    client: vllm,
    keyCache,
    ipRateLimiter,
    concurrencyLimiter,
    logger,
    metrics,
    renderMetrics,
    maxBodyBytes: config.maxBodyBytes,
    maxJsonDepth: config.maxJsonDepth,
    budgets,
    usage,
    continuousUsage: config.streamUsage === 'continuous',
    telemetry,
    cors: config.corsOrigins.length > 0 ? createCors(config.corsOrigins) : undefined,
    health,
    adminKeyHash:
      config.adminKey === undefined ? undefined : createHash('sha256').update(config.adminKey).digest(),
    adminElsewhere: config.metricsPort !== undefined,
    modelAliases: config.modelAliases,
  });
  const server = createServer(
    {
      // Guard against slow clients: headers within HEADERS_TIMEOUT_MS, the whole request within REQUEST_TIMEOUT_MS.
      // Node checks both only every connectionsCheckingInterval (30 s by default, so a 15 s limit fired at ~39 s):
      // check every second, so each fires within a second of its limit.
      headersTimeout: config.headersTimeoutMs,
      requestTimeout: config.requestTimeoutMs,
      connectionsCheckingInterval: 1000,
      keepAliveTimeout: 5_000,
    },
    (req, res) => void gateway.handle(req, res),
  );
  await listen(server, 'HOST:PORT', config.host, options.port ?? config.port);
  // METRICS_PORT: /health (detailed), /metrics and the probes on a listener of their own (an internal interface).
  const adminServer =
    config.metricsPort === undefined
      ? undefined
      : createServer({ keepAliveTimeout: 5_000 }, (req, res) => void gateway.handleAdmin(req, res));
  if (adminServer !== undefined) {
    await listen(adminServer, 'METRICS_HOST:METRICS_PORT', config.metricsHost, config.metricsPort!);
  }
  const address = server.address() as AddressInfo;
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host;
  return {
    server,
    url: `http://${host}:${address.port}`,
    metricsUrl:
      adminServer === undefined
        ? undefined
        : `http://${config.metricsHost === '0.0.0.0' ? '127.0.0.1' : config.metricsHost}:${(adminServer.address() as AddressInfo).port}`,
    keyStore,
    openRequests: gateway.openRequests,
    async close(graceMs = 10_000) {
      health.close();
      adminServer?.close();
      adminServer?.closeAllConnections();
      const closed = new Promise((resolve) => server.close(resolve));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      timer.unref();
      await closed;
      clearTimeout(timer);
      await Promise.all([
        concurrencyLimiter.close(),
        ipRateLimiter.close(),
        keyCache.close(),
        budgets.close(),
      ]);
      await vllm.close();
      await permits?.close();
      // Every span has ended: the last batch (and the last metrics) go out before the worker exits.
      await telemetry?.shutdown();
      // Every response has ended: the last usage batch goes to the store before it closes.
      await usage.close();
      await keyStore.close();
      await redis?.quit().catch(() => undefined);
      logging.close();
    },
  };
}

/** Listens, or fails with one line naming the variables (a port in use, an address this machine does not have). */
function listen(server: Server, names: string, host: string, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new Error(
          `cannot listen on ${names} (${host}:${port}): ${error.code === 'EADDRINUSE' ? 'the port is in use' : error.code === 'EADDRNOTAVAIL' || error.code === 'ENOTFOUND' ? 'no such address on this machine' : error.message}`,
        ),
      ),
    );
    server.listen(port, host, resolve);
  });
}

/** REDIS_URL as it may be logged: without its password. */
function redactRedisUrl(raw: string): string {
  try {
    const url = new URL(raw);
    if (url.password !== '') url.password = '***';
    return url.toString();
  } catch {
    return '(unparseable)';
  }
}

/** Scrapes waiting for the primary's answer, by request id; one IPC listener serves them all. */
const scrapes = new Map<
  number,
  {
    resolve: (answer: { contentType: string; body: string }) => void;
    reject: (error: Error) => void;
    timer: NodeJS.Timeout;
  }
>();
let lastScrape = 0;
/** Longer than prom-client's own 5 s aggregation timeout, so the primary's answer (or error) arrives first. */
const SCRAPE_TIMEOUT_MS = 6000;

function onPrimaryMessage(message: { type?: string; id?: number; body?: string; error?: string }): void {
  if (message?.type !== 'vllm-kit:gateway:metrics' || message.id === undefined) return;
  const scrape = scrapes.get(message.id);
  if (scrape === undefined) return;
  scrapes.delete(message.id);
  clearTimeout(scrape.timer);
  if (message.error !== undefined) scrape.reject(new Error(`metrics: ${message.error}`));
  else scrape.resolve({ contentType: client.register.contentType, body: message.body ?? '' });
}

/** Asks the primary for metrics aggregated over every worker. */
function askPrimaryForMetrics(): Promise<{ contentType: string; body: string }> {
  if (lastScrape === 0) process.on('message', onPrimaryMessage);
  const id = ++lastScrape;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      scrapes.delete(id);
      reject(new Error('metrics: the primary did not answer'));
    }, SCRAPE_TIMEOUT_MS);
    timer.unref();
    scrapes.set(id, { resolve, reject, timer });
    process.send?.({ type: 'vllm-kit:gateway:metrics-request', id });
  });
}
