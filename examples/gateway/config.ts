// The gateway's configuration, read from the environment and validated at start: a bad value stops start-up with a
// message naming the variable.
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { parseCorsOrigins } from './cors.js';
import { telemetryConfigured } from './telemetry.js';

export interface GatewayConfig {
  env: 'development' | 'production';
  host: string;
  port: number;
  workers: number;
  limitConcurrency: number;
  maxQueue: number;
  queueTimeoutMs: number;
  /** Empty: demo mode against the built-in simulator. */
  vllmBaseUrls: string[];
  vllmApiKey: string | undefined;
  poolConnections: number;
  keepAliveTimeoutMs: number;
  rateLimitPoints: number;
  rateLimitWindowSec: number;
  /** Names the per-IP budget in Redis: gateways sharing a Redis and this name share their clients' budgets. */
  rateLimitName: string;
  trustProxy: false | number | string[];
  /** The one header the trusted proxies write the client's address into; the other is never read. */
  trustProxyHeader: 'x-forwarded-for' | 'forwarded';
  redisUrl: string | undefined;
  tokenCacheTtlSec: number;
  tokenCacheSweepSec: number;
  databaseUrl: string;
  /** PostgreSQL: the longest wait for a connection or a query's answer, ms. */
  databaseConnectTimeoutMs: number;
  /** A cached key keeps working this long past its TTL while the key store is unreachable, s. */
  tokenCacheStaleIfErrorSec: number;
  maxBodyBytes: number;
  /** Request bodies nesting objects/arrays deeper than this are refused (400 json_too_deep). */
  maxJsonDepth: number;
  metrics: boolean;
  /** Longest wait for the upstream's first byte (a non-streamed answer comes whole), ms. */
  upstreamTimeoutMs: number;
  /** Origins browsers may call the gateway from (exact, or `*`); empty: no CORS. */
  corsOrigins: string[];
  /** How requests are spread over several upstream replicas. */
  routing: 'prefix' | 'least-outstanding' | 'round-robin';
  /** Bounded loads for prefix routing: a replica takes keyed requests while under this × the mean load. */
  routingLoadFactor: number;
  /** Slow clients: the longest wait for a request's headers, and for the whole request, ms. */
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  /** Ask the upstream for usage on every stream chunk (vLLM's continuous_usage_stats) or only at the end. */
  streamUsage: 'continuous' | 'final';
  /** Per-key usage is written to the key store at most this long after a response, ms. */
  usageFlushMs: number;
  /** Who gets the next free slot: round robin across API keys by priority band, or arrival order. */
  queuePolicy: 'fair' | 'fifo';
  /** Requests of one key waiting at most (per worker). */
  maxQueuePerKey: number;
  /** QUEUE_POLICY=fair: slots beyond LIMIT_CONCURRENCY for keys below their fair share. */
  limitConcurrencyHeadroom: number;
  /** In-flight requests per upstream replica across every worker (and, with Redis, every host); undefined: no shared limit. */
  upstreamConcurrency: number | undefined;
  /** OpenTelemetry export (OTLP), on when OTEL_EXPORTER_OTLP_ENDPOINT or a per-signal endpoint is set. */
  telemetry: boolean;
  /** Record prompts and completions on the spans (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT). */
  telemetryCaptureContent: boolean;
  /** Stream chunk timing: every gap (the conventions), one mean per stream, or none (OTEL_GENAI_CHUNK_TIMING). */
  telemetryChunkTiming: 'each' | 'mean' | 'off';
  /** The upstream call gets a client span of its own under the server span (OTEL_GENAI_UPSTREAM_SPAN). */
  telemetryUpstreamSpan: boolean;
  /** Bearer key for the detailed /health and /metrics on the public port; undefined: /health shows a summary only. */
  adminKey: string | undefined;
  /** A second listener for /health (detailed), /metrics, /livez, /readyz; the public port then serves only the probes. */
  metricsPort: number | undefined;
  /** Its interface (an internal network, or loopback). */
  metricsHost: string;
  /** Token series by key name (only where metrics are not public: METRICS_PORT or ADMIN_KEY). */
  metricsPerKey: boolean;
  /** How often the replicas' health is probed in the background, ms. */
  healthIntervalMs: number;
  /** Gateway processes (hosts) sharing REDIS_URL: with WORKERS, each process's share of a limit while Redis is down. */
  gatewayInstances: number;
  /** On SIGTERM/SIGINT: the longest wait for in-flight requests and open streams, ms. */
  shutdownGraceMs: number;
  /** LoRA adapters loaded on demand (LORA_ADAPTERS): name → base model and path. */
  loraAdapters: Record<string, { base: string; path: string }>;
  /** Client-facing model names → served names (MODEL_ALIASES). */
  modelAliases: Record<string, string>;
  /** How often each replica's /v1/models is read again, ms (a 404 for a model it was thought to serve reads it at once). */
  modelRefreshMs: number;
  /** How often each replica's /metrics is read for its queue and LoRA state, ms; 0 = never. */
  loadSignalsIntervalMs: number;
  /** pino's level. */
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
/** OTEL_TRACES_SAMPLER values the OpenTelemetry Node SDK knows. */
const SAMPLERS = [
  'always_on',
  'always_off',
  'traceidratio',
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
];
/** vLLM's (uvicorn's) idle keep-alive timeout: a pooled connection must be given up before the server closes it. */
const VLLM_KEEPALIVE_MS = 5000;

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(name, `${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  }
  return value;
}

function url(name: string, raw: string): string {
  try {
    const parsed = new URL(raw);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error();
    return raw;
  } catch {
    throw new ConfigError(name, `${name} must be an http(s) URL, got "${raw}"`);
  }
}

/**
 * A replica's base URL: its origin. `/v1` (as OpenAI clients are configured) is accepted and dropped, since the
 * gateway adds the `/v1/...` paths itself; any other path would be dropped silently, so it is refused.
 */
function replicaUrl(raw: string): string {
  const parsed = new URL(url('VLLM_BASE_URL', raw));
  const path = parsed.pathname.replace(/\/+$/, '');
  if (path !== '' && path !== '/v1') {
    throw new ConfigError(
      'VLLM_BASE_URL',
      `VLLM_BASE_URL must be a server's origin (http://host:port, optionally ending in /v1), got "${raw}": the path "${parsed.pathname}" would be ignored`,
    );
  }
  if (parsed.username !== '' || parsed.password !== '') {
    throw new ConfigError('VLLM_BASE_URL', 'VLLM_BASE_URL must not carry credentials: use VLLM_API_KEY');
  }
  return parsed.origin;
}

/** A JSON object from a variable, or a ConfigError that names it and shows the expected shape. */
function jsonObject(env: Env, name: string, shape: string): Record<string, unknown> {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return {};
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new ConfigError(name, `${name} must be JSON ${shape}, got "${raw}"`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new ConfigError(name, `${name} must be JSON ${shape}, got "${raw}"`);
  return value as Record<string, unknown>;
}

/** LORA_ADAPTERS: `{"name": {"base": "…", "path": "…"}}`. */
function loraAdapters(env: Env): GatewayConfig['loraAdapters'] {
  const shape = '{"adapter": {"base": "base-model", "path": "/path/to/adapter"}}';
  const out: GatewayConfig['loraAdapters'] = {};
  for (const [name, spec] of Object.entries(jsonObject(env, 'LORA_ADAPTERS', shape))) {
    const { base, path } = (spec ?? {}) as { base?: unknown; path?: unknown };
    if (typeof base !== 'string' || base === '' || typeof path !== 'string' || path === '') {
      throw new ConfigError(
        'LORA_ADAPTERS',
        `LORA_ADAPTERS.${name} must be {"base": "…", "path": "…"}, got ${JSON.stringify(spec)}`,
      );
    }
    out[name] = { base, path };
  }
  return out;
}

/** MODEL_ALIASES: `{"alias": "served"}`, one rewrite (an alias may not name another). */
function modelAliases(env: Env): Record<string, string> {
  const aliases = jsonObject(env, 'MODEL_ALIASES', '{"alias": "served-model"}');
  for (const [alias, served] of Object.entries(aliases)) {
    if (typeof served !== 'string' || served === '' || (served !== alias && Object.hasOwn(aliases, served))) {
      throw new ConfigError(
        'MODEL_ALIASES',
        `MODEL_ALIASES.${alias} must name a served model (not another alias), got ${JSON.stringify(served)}`,
      );
    }
  }
  return aliases as Record<string, string>;
}

/**
 * One of `choices` (the first, or `fallback`, when the variable is unset or empty), else a ConfigError naming the
 * variable and showing the value: `X must be "a" or "b"` (or `"a", "b" or "c"`; `one of a, b, …` beyond three).
 */
function oneOf<const C extends string>(
  env: Env,
  name: string,
  choices: readonly C[],
  { fallback = choices[0]!, lowercase = false }: { fallback?: C; lowercase?: boolean } = {},
): C {
  const raw = env[name];
  const value = raw === undefined || raw === '' ? fallback : lowercase ? raw.toLowerCase() : raw;
  if ((choices as readonly string[]).includes(value)) return value as C;
  const quoted = choices.map((choice) => `"${choice}"`);
  const listed =
    choices.length > 3
      ? `one of ${choices.join(', ')}`
      : `${quoted.slice(0, -1).join(', ')} or ${quoted[quoted.length - 1]}`;
  throw new ConfigError(name, `${name} must be ${listed}, got "${raw}"`);
}

/** A host to listen on: an IP address or a host name. */
function hostName(env: Env, name: string, fallback: string): string {
  const host = env[name] || fallback;
  if (isIP(host) === 0 && !/^[A-Za-z0-9.-]{1,253}$/.test(host)) {
    throw new ConfigError(name, `${name} must be an IP address or a host name, got "${host}"`);
  }
  return host;
}

/** The gateway's configuration from the environment: every variable validated, named in any error. */
export function loadConfig(env: Env = process.env): GatewayConfig {
  const mode = env.ENV === undefined ? 'production' : env.ENV;
  if (mode !== 'development' && mode !== 'production') {
    throw new ConfigError('ENV', `ENV must be "development" or "production", got "${mode}"`);
  }
  const limits = limitsConfig(env);
  const admin = adminConfig(env);
  return {
    env: mode,
    host: hostName(env, 'HOST', '0.0.0.0'),
    port: integer(env, 'PORT', 8000, 0, 65535),
    workers: mode === 'development' ? 1 : integer(env, 'WORKERS', availableParallelism(), 1, 256),
    ...limits,
    // One connection per request the limiter may admit, its headroom included.
    ...upstreamConfig(env, limits.limitConcurrency + limits.limitConcurrencyHeadroom),
    ...clientSideConfig(env),
    ...telemetryConfig(env),
    ...admin,
    shutdownGraceMs: integer(env, 'SHUTDOWN_GRACE_MS', 30_000, 0, 3_600_000),
    gatewayInstances: integer(env, 'GATEWAY_INSTANCES', 1, 1, 10_000),
    logLevel: oneOf(env, 'LOG_LEVEL', LOG_LEVELS, { fallback: 'info' }),
  };
}

/** What is admitted: per-IP rate limit, the concurrency limit and its queue, the body. */
function limitsConfig(env: Env) {
  const limitConcurrency = integer(env, 'LIMIT_CONCURRENCY', 200, 1, 100_000);
  const maxQueue = integer(env, 'MAX_QUEUE', 2 * limitConcurrency, 0, 1_000_000);
  const queuePolicy = oneOf(env, 'QUEUE_POLICY', ['fair', 'fifo']);
  const rateLimitName = env.RATE_LIMIT_NAME || 'default';
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(rateLimitName)) {
    throw new ConfigError(
      'RATE_LIMIT_NAME',
      `RATE_LIMIT_NAME must be 1-64 letters, digits, "_", "." or "-", got "${rateLimitName}"`,
    );
  }
  return {
    limitConcurrency,
    maxQueue,
    queueTimeoutMs: integer(env, 'QUEUE_TIMEOUT_MS', 30_000, 0, 3_600_000),
    queuePolicy,
    maxQueuePerKey: integer(env, 'MAX_QUEUE_PER_KEY', Math.max(1, maxQueue), 1, 1_000_000),
    // A light key's request starts at once beside a flood holding every slot (a fifth more; the flood gives them back).
    limitConcurrencyHeadroom:
      queuePolicy === 'fair'
        ? integer(env, 'LIMIT_CONCURRENCY_HEADROOM', Math.ceil(limitConcurrency / 5), 0, 100_000)
        : 0,
    // The limiter's own ceiling (its memory store packs the count into 21 bits).
    rateLimitPoints: integer(env, 'RATE_LIMIT_POINTS', 20, 1, 2_000_000),
    rateLimitWindowSec: integer(env, 'RATE_LIMIT_WINDOW_SEC', 60, 1, 86_400),
    rateLimitName,
    trustProxy: trustProxyOf(env),
    trustProxyHeader: oneOf(env, 'TRUST_PROXY_HEADER', ['x-forwarded-for', 'forwarded'], { lowercase: true }),
    maxBodyBytes: integer(env, 'MAX_BODY_BYTES', 1_048_576, 1, 1_073_741_824),
    maxJsonDepth: integer(env, 'MAX_JSON_DEPTH', 64, 2, 1000),
    ...timeoutsConfig(env),
  };
}

function trustProxyOf(env: Env): GatewayConfig['trustProxy'] {
  const raw = env.TRUST_PROXY;
  if (raw === undefined || raw === '' || raw === 'false') return false;
  if (raw === 'true') {
    throw new ConfigError(
      'TRUST_PROXY',
      'TRUST_PROXY=true would let any client pick its IP: give a hop count or CIDRs',
    );
  }
  return /^\d+$/.test(raw) ? Number(raw) : raw.split(',').map((s) => s.trim());
}

/** Slow clients: headers within HEADERS_TIMEOUT_MS, the whole request within REQUEST_TIMEOUT_MS. */
function timeoutsConfig(env: Env) {
  const headersTimeoutMs = integer(env, 'HEADERS_TIMEOUT_MS', 15_000, 1000, 600_000);
  const requestTimeoutMs = integer(env, 'REQUEST_TIMEOUT_MS', 60_000, 1000, 3_600_000);
  if (requestTimeoutMs < headersTimeoutMs) {
    throw new ConfigError(
      'REQUEST_TIMEOUT_MS',
      `REQUEST_TIMEOUT_MS must be at least HEADERS_TIMEOUT_MS (${headersTimeoutMs}), got "${requestTimeoutMs}"`,
    );
  }
  return { headersTimeoutMs, requestTimeoutMs };
}

/** The model servers: replicas, pool, routing, models and adapters, permits, usage. */
function upstreamConfig(env: Env, admitted: number) {
  const vllm = (env.VLLM_BASE_URL ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const keepAliveTimeoutMs = integer(env, 'KEEPALIVE_TIMEOUT_MS', 4000, 1, 600_000);
  if (keepAliveTimeoutMs >= VLLM_KEEPALIVE_MS) {
    throw new ConfigError(
      'KEEPALIVE_TIMEOUT_MS',
      `KEEPALIVE_TIMEOUT_MS must be under vLLM's own idle keep-alive of ${VLLM_KEEPALIVE_MS} ms (uvicorn's timeout_keep_alive), or requests race the server's close; got "${env.KEEPALIVE_TIMEOUT_MS}"`,
    );
  }
  const rawFactor = env.ROUTING_LOAD_FACTOR;
  const routingLoadFactor = rawFactor === undefined || rawFactor === '' ? 1.25 : Number(rawFactor);
  if (!Number.isFinite(routingLoadFactor) || routingLoadFactor < 1 || routingLoadFactor > 100) {
    throw new ConfigError(
      'ROUTING_LOAD_FACTOR',
      `ROUTING_LOAD_FACTOR must be a number from 1 to 100, got "${rawFactor}"`,
    );
  }
  const adapters = loraAdapters(env);
  return {
    vllmBaseUrls: vllm.map(replicaUrl),
    vllmApiKey: env.VLLM_API_KEY || undefined,
    // One connection per request the limiter admits: vLLM serves one request per connection (HTTP/1.1).
    poolConnections: integer(env, 'POOL_CONNECTIONS', admitted, 1, 65535),
    keepAliveTimeoutMs,
    // A non-streamed answer comes whole at the end: this must cover the longest generation (4096 tokens at 20/s is
    // under 4 minutes); a replica that accepts and never answers is ejected after a few of these.
    upstreamTimeoutMs: integer(env, 'UPSTREAM_TIMEOUT_MS', 300_000, 1, 86_400_000),
    routing: oneOf(env, 'ROUTING', ['prefix', 'least-outstanding', 'round-robin']),
    routingLoadFactor,
    streamUsage: oneOf(env, 'STREAM_USAGE', ['continuous', 'final']),
    upstreamConcurrency:
      env.UPSTREAM_CONCURRENCY === undefined || env.UPSTREAM_CONCURRENCY === ''
        ? undefined
        : integer(env, 'UPSTREAM_CONCURRENCY', 0, 1, 1_000_000),
    healthIntervalMs: integer(env, 'HEALTH_INTERVAL_MS', 5000, 100, 600_000),
    loraAdapters: adapters,
    modelAliases: modelAliases(env),
    modelRefreshMs: integer(env, 'MODEL_REFRESH_MS', 10_000, 0, 3_600_000),
    // Adapter-aware placement reads each replica's vllm:lora_requests_info: on by default when adapters are declared.
    loadSignalsIntervalMs: integer(
      env,
      'LOAD_SIGNALS_INTERVAL_MS',
      Object.keys(adapters).length > 0 ? 1000 : 0,
      0,
      3_600_000,
    ),
  };
}

/** Shared state and the key side: Redis, the key store, the token cache, usage, browsers (CORS). */
function clientSideConfig(env: Env) {
  const redisUrl = env.REDIS_URL === undefined || env.REDIS_URL === '' ? undefined : env.REDIS_URL;
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) {
    throw new ConfigError('REDIS_URL', `REDIS_URL must be a redis:// or rediss:// URL, got "${redisUrl}"`);
  }
  const databaseUrl = env.DATABASE_URL || 'sqlite:./data/keys.db';
  if (!/^(sqlite:|postgres(ql)?:\/\/)/.test(databaseUrl)) {
    throw new ConfigError(
      'DATABASE_URL',
      `DATABASE_URL must be sqlite:PATH or postgres://…, got "${databaseUrl.replace(/:[^:@/]*@/, ':***@')}"`,
    );
  }
  const corsOrigins = parseCorsOrigins(env.CORS_ORIGINS ?? '');
  if (!Array.isArray(corsOrigins)) {
    throw new ConfigError(
      'CORS_ORIGINS',
      `CORS_ORIGINS must be exact origins like https://app.example.com (comma-separated) or *, got "${corsOrigins.invalid}"`,
    );
  }
  return {
    redisUrl,
    databaseUrl,
    databaseConnectTimeoutMs: integer(env, 'DATABASE_CONNECT_TIMEOUT_MS', 5000, 100, 120_000),
    tokenCacheTtlSec: integer(env, 'TOKEN_CACHE_TTL_SEC', 300, 1, 86_400),
    tokenCacheSweepSec: integer(env, 'TOKEN_CACHE_SWEEP_SEC', 60, 0, 86_400),
    tokenCacheStaleIfErrorSec: integer(env, 'TOKEN_CACHE_STALE_IF_ERROR_SEC', 3600, 0, 7 * 86_400),
    usageFlushMs: integer(env, 'USAGE_FLUSH_MS', 1000, 10, 5000),
    corsOrigins,
  };
}

/** OpenTelemetry: the OTLP endpoints, the sampler, what spans carry. */
function telemetryConfig(env: Env) {
  for (const name of [
    'OTEL_EXPORTER_OTLP_ENDPOINT',
    'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
    'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT',
  ]) {
    if ((env[name] ?? '') !== '') url(name, env[name]!);
  }
  const sampler = env.OTEL_TRACES_SAMPLER;
  if (sampler !== undefined && sampler !== '' && !SAMPLERS.includes(sampler)) {
    throw new ConfigError(
      'OTEL_TRACES_SAMPLER',
      `OTEL_TRACES_SAMPLER must be one of ${SAMPLERS.join(', ')}, got "${sampler}"`,
    );
  }
  const ratio = env.OTEL_TRACES_SAMPLER_ARG;
  if (ratio !== undefined && ratio !== '' && !(Number(ratio) >= 0 && Number(ratio) <= 1)) {
    throw new ConfigError(
      'OTEL_TRACES_SAMPLER_ARG',
      `OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, got "${ratio}"`,
    );
  }
  const captureContent = oneOf(env, 'OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT', ['false', 'true'], {
    lowercase: true,
  });
  return {
    telemetry: telemetryConfigured(env),
    telemetryCaptureContent: captureContent === 'true',
    telemetryChunkTiming: oneOf(env, 'OTEL_GENAI_CHUNK_TIMING', ['each', 'mean', 'off']),
    telemetryUpstreamSpan:
      oneOf(env, 'OTEL_GENAI_UPSTREAM_SPAN', ['false', 'true'], { lowercase: true }) === 'true',
  };
}

/** /health and /metrics: who may read them, and where. */
function adminConfig(env: Env) {
  const adminKey = env.ADMIN_KEY || undefined;
  if (adminKey !== undefined && adminKey.length < 16) {
    throw new ConfigError(
      'ADMIN_KEY',
      'ADMIN_KEY must be at least 16 characters (it guards /health and /metrics)',
    );
  }
  const metricsPort =
    env.METRICS_PORT === undefined || env.METRICS_PORT === ''
      ? undefined
      : integer(env, 'METRICS_PORT', 0, 0, 65535);
  const perKey = oneOf(env, 'METRICS_PER_KEY', ['false', 'true'], { lowercase: true }) === 'true';
  if (perKey && adminKey === undefined && metricsPort === undefined) {
    throw new ConfigError(
      'METRICS_PER_KEY',
      'METRICS_PER_KEY=true publishes key names with their usage: set METRICS_PORT (a private listener) or ADMIN_KEY too',
    );
  }
  return {
    adminKey,
    metricsPort,
    metricsHost: hostName(env, 'METRICS_HOST', '127.0.0.1'),
    metricsPerKey: perKey,
    metrics: oneOf(env, 'METRICS', ['true', 'false']) === 'true',
  };
}
