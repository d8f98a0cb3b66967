// createVllmClient's options: every field documented with unit and default, resolved and validated in one place.
import type { Dispatcher } from 'undici';
import { InvalidOptionError } from '../errors/index.js';
import {
  booleanOption,
  functionOption,
  invalid,
  numberOption,
  objectOption,
  oneOfOption,
  optionalNumberOption,
  optionalStringOption,
  rejectUnknownKeys,
} from '../internal/validate.js';
import type { PermitPool } from '../upstream-permits/index.js';
import type { RoutingSync } from './replica-pool.js';
import type { RoutingPolicy } from './routing-policy.js';
import type { ResolvedTelemetryOptions, TelemetryOptions } from './telemetry.js';

function permitsOption(value: unknown): PermitPool | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || typeof (value as PermitPool).acquire !== 'function') {
    throw invalid('permits', 'a permit pool (createPermitPool)', value);
  }
  return value as PermitPool;
}

export interface VllmClientOptions {
  /** Base URL of the server, without `/v1`, e.g. `http://127.0.0.1:8000`. Give this or `baseUrls`. */
  baseUrl?: string;
  /** Several replicas of the same model; `routing` says which one each request goes to. */
  baseUrls?: string[];
  /**
   * How requests are spread over replicas. `'prefix'`: cache-aware with bounded loads — the client keeps, per
   * replica, the prompt blocks it sent there (an LRU the size of the replica's cache), sends a request to the replica
   * holding the longest leading run of its prompt when that is at least half of it, and places a new conversation (or
   * a prefix every replica holds alike) on the replica holding the least; an affinity key (`routingKey`,
   * `prompt_cache_key`, `user`) stands for the conversation. A replica over `routingLoadFactor` × the mean load, or
   * ejected, is passed over. Several processes share what they sent where through `routingSync`. `'least-outstanding'`: the
   * replica with the fewest requests in flight. `'round-robin'`: each in turn (a baseline). A function: your own
   * policy.
   * @default 'prefix' with two or more replicas
   */
  routing?: RoutingPolicy;
  /**
   * Bounded loads: a replica takes a keyed request only while its load (requests in flight from this client, plus
   * its own queue when load signals are on) stays within ⌈factor × mean⌉ + `routingLoadSlack`. ≥ 1. @default 1.25
   */
  routingLoadFactor?: number;
  /**
   * Requests a replica may carry beyond ⌈factor × mean⌉ before keys move off it: at low load the mean is tiny and
   * leaving a warm cache to balance 2 requests against 1 costs more than it saves. `0` = the strict bound. @default 8
   */
  routingLoadSlack?: number;
  /**
   * Requests of one routing key (an `X-Session-Id`, `prompt_cache_key`, `user`, or a prompt prefix) that may be in
   * flight from this process on the key's replica; more go to the least loaded replica. A conversation is sequential,
   * so a key with many requests at once is a client pinning a replica (or one hot prompt), not a cache worth keeping.
   * `0` = no cap. @default 4
   */
  routingKeyMaxInFlight?: number;
  /**
   * Processes routing over the same replicas with their own clients (workers × hosts): the bound's slack and
   * `routingKeyMaxInFlight` are shared among them, so the bound holds for the replica, not per process. @default 1
   */
  processes?: number;
  /**
   * How many leading characters of the prompt are matched against the replicas' caches (in blocks of 128), for
   * `'prefix'`; the routing key a custom policy gets is the first 256 of them. @default 16384
   */
  routingPrefixChars?: number;
  /**
   * A replica's prefix cache, in tokens, for `'prefix'`: the index keeps that much of what it sent to each replica
   * (four characters a token). Unset: read from each replica's `vllm:cache_config_info` when load signals are on,
   * else 2M tokens.
   */
  routingCacheTokens?: number;
  /**
   * Shares, between processes routing over the same replicas (workers, gateway hosts), which prompt blocks each sent
   * where, so that a conversation whose turns reach different processes still finds its replica. `clusterRoutingSync()`
   * (node:cluster workers, through the primary) or `redisRoutingSync(redis)` (hosts). Without it, each process routes
   * on what it sent itself.
   */
  routingSync?: RoutingSync;
  /**
   * Scrape each replica's `/metrics` this often, ms, for `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc`
   * (older: `vllm:gpu_cache_usage_perc`): a replica's queue then counts in its load. `0` = off. @default 0
   */
  loadSignalsIntervalMs?: number;
  /**
   * A permit per in-flight request to each replica (`createPermitPool`): taken for the chosen replica before a POST
   * (a generation, an embedding) is sent, returned when its body ends, fails or is aborted; GETs (health, models)
   * take none. A call keeps its replica for its retries. Shared by workers and hosts, it makes
   * "at most N in flight to this vLLM" hold however many gateways call it.
   */
  permits?: PermitPool;
  /** Longest wait for a permit, ms (then PermitTimeoutError); the call's own signal and total timeout apply too. @default 0 (no limit of its own) */
  permitTimeoutMs?: number;
  /** Sent as `Authorization: Bearer <apiKey>` by the typed methods and `request()` (not added to `fetch`). */
  apiKey?: string;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /**
   * An undici dispatcher to send through instead of the client's own pools (for tests, proxies, mocks). Pool options,
   * replica choice and stats of pools then do not apply.
   */
  dispatcher?: Dispatcher;
  /** Maximum connections per upstream (vLLM serves one request per connection). @default 100 */
  connections?: number;
  /**
   * Idle time after which a pooled connection is closed, in ms. Must stay under the server's own idle timeout
   * (vLLM: 5 s) or reused sockets race the server's close. @default 4000
   */
  keepAliveTimeoutMs?: number;
  /** Requests in flight per connection. vLLM (uvicorn) answers one at a time. @default 1 */
  pipelining?: number;
  /** Negotiate HTTP/2 over TLS. vLLM speaks HTTP/1.1 only; only TLS upstreams that speak h2 benefit. @default false */
  allowH2?: boolean;
  /** TCP (and TLS) connect timeout, ms. @default 10000 */
  connectTimeoutMs?: number;
  /**
   * Time to the response headers, and for streams to the first event (the first token), ms. A non-streamed generation
   * only answers when it is done, so this is long. `0` disables it. @default 600000 (10 min)
   */
  firstByteTimeoutMs?: number;
  /** Longest gap between two chunks of a response body, ms. `0` disables it. @default 120000 */
  idleTimeoutMs?: number;
  /** Longest time for a whole request, retries included, ms; per call `timeoutMs` overrides it. `0` disables it. @default 1800000 */
  totalTimeoutMs?: number;
  /** Retries after a retryable failure (connection errors, 408, 409, 429, 5xx but 501). @default 2 */
  maxRetries?: number;
  /** First backoff step, ms (doubles each retry, with jitter). @default 500 */
  retryBaseDelayMs?: number;
  /** Longest backoff step, ms. @default 8000 */
  retryMaxDelayMs?: number;
  /** Cap on a server's `Retry-After`, ms. @default 30000 */
  retryAfterCapMs?: number;
  /** Retries allowed per request over a sliding 10 s window, plus a floor per second. @default { ratio: 0.1, minPerSec: 1 } */
  retryBudget?: { ratio?: number; minPerSec?: number };
  /**
   * Consecutive failures before any response (connection errors, and first-byte timeouts: a replica that accepts and
   * never answers) after which a replica is taken out of rotation. @default 3
   */
  ejectAfterFailures?: number;
  /**
   * Consecutive 5xx answers after which a replica is taken out of rotation (Envoy's `consecutive_5xx`): a replica
   * failing fast otherwise looks the least loaded and draws the traffic. `0` = never for statuses. @default 5
   */
  ejectAfter5xx?: number;
  /**
   * An ejected replica stays out at least `probeIntervalMs` × the times it was ejected in a row (a success resets the
   * count), at most this long, ms; then it is probed (`/health`) until it answers. @default 60000
   */
  maxEjectionMs?: number;
  /** How often an ejected replica's `/health` is probed for re-admission, ms. @default 2000 */
  probeIntervalMs?: number;
  /** Probe every replica's `/health` this often, ms, ejecting failures (active checks); `0` = passive only. @default 0 */
  healthCheckIntervalMs?: number;
  /**
   * Model discovery: each replica's `GET /v1/models` is read at start, every `modelRefreshMs`, and at once when it
   * answers 404 for a model it was thought to serve; requests then go only to replicas serving their `model` (typed
   * calls, `request({ routingBody })`, `fetch`), and a model no replica serves rejects with `ModelNotFoundError` before
   * anything is sent. @default true with several replicas, false with one
   */
  modelDiscovery?: boolean;
  /** How often the replicas' models are read again, ms; `0` = only at start and on a 404. @default 10000 */
  modelRefreshMs?: number;
  /**
   * Which replicas serve which model, for servers without `/v1/models`: `{ "model-a": ["http://a:8000"], … }`.
   * Given, it replaces discovery.
   */
  models?: Record<string, readonly string[]>;
  /**
   * LoRA adapters loaded on demand, name → base model and path: when a request names one that no replica serves, it
   * is loaded with `POST /v1/load_lora_adapter` on a replica of its base (one with a free adapter slot first, then the
   * least loaded; the next one if the load fails), and the request waits for it within its timeout. Needs vLLM started
   * with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Turns model discovery on.
   */
  loraAdapters?: Record<string, { base: string; path: string }>;
  /**
   * Client-facing model names → served names, e.g. `{ "gpt-4o-mini": "meta-llama/Llama-3.1-8B-Instruct" }`: the
   * body's `model` is rewritten on the way up, and responses name the alias.
   */
  aliases?: Record<string, string>;
  /**
   * Runs an adapter load in one process at a time across several (a gateway's workers): `run` is called in one
   * process, and every caller with the same `key` gets the URL of the replica it returns. Without it, one load per
   * adapter at a time in this process.
   */
  singleFlight?: (key: string, run: () => Promise<string>) => Promise<string>;
  /**
   * OpenTelemetry: a span per inference call (chat, completion, embeddings) following the GenAI semantic
   * conventions, the `gen_ai.client.*` metrics, and `traceparent` sent upstream. On when `@opentelemetry/api` is
   * installed (an optional peer dependency); spans and metrics go where its SDK sends them. `false` turns it off
   * (nothing is loaded). Prompts and completions are never recorded unless `captureContent` says so.
   * @default true
   */
  telemetry?: boolean | TelemetryOptions;
  /** Clock for the retry budget (tests). @default Date.now */
  now?: () => number;
}

export interface ResolvedClientOptions {
  origins: string[];
  apiKey: string | undefined;
  headers: Record<string, string>;
  dispatcher: Dispatcher | undefined;
  connections: number;
  keepAliveTimeoutMs: number;
  pipelining: number;
  allowH2: boolean;
  connectTimeoutMs: number;
  firstByteTimeoutMs: number;
  idleTimeoutMs: number;
  totalTimeoutMs: number;
  maxRetries: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  retryAfterCapMs: number;
  retryBudget: { ratio: number; minPerSec: number };
  ejectAfterFailures: number;
  ejectAfter5xx: number;
  maxEjectionMs: number;
  probeIntervalMs: number;
  healthCheckIntervalMs: number;
  modelDiscovery: boolean;
  modelRefreshMs: number;
  models: Record<string, readonly string[]> | undefined;
  loraAdapters: Record<string, { base: string; path: string }>;
  aliases: Record<string, string>;
  singleFlight: ((key: string, run: () => Promise<string>) => Promise<string>) | undefined;
  routing: RoutingPolicy;
  routingLoadFactor: number;
  routingLoadSlack: number;
  routingKeyMaxInFlight: number;
  processes: number;
  routingPrefixChars: number;
  routingCacheTokens: number | undefined;
  routingSync: RoutingSync | undefined;
  loadSignalsIntervalMs: number;
  permits: PermitPool | undefined;
  permitTimeoutMs: number;
  telemetry: ResolvedTelemetryOptions | undefined;
  now: () => number;
}

const KEYS = [
  'baseUrl',
  'baseUrls',
  'apiKey',
  'headers',
  'dispatcher',
  'connections',
  'keepAliveTimeoutMs',
  'pipelining',
  'allowH2',
  'connectTimeoutMs',
  'firstByteTimeoutMs',
  'idleTimeoutMs',
  'totalTimeoutMs',
  'maxRetries',
  'retryBaseDelayMs',
  'retryMaxDelayMs',
  'retryAfterCapMs',
  'retryBudget',
  'ejectAfterFailures',
  'probeIntervalMs',
  'ejectAfter5xx',
  'maxEjectionMs',
  'healthCheckIntervalMs',
  'modelDiscovery',
  'modelRefreshMs',
  'models',
  'loraAdapters',
  'aliases',
  'singleFlight',
  'routing',
  'routingLoadFactor',
  'routingLoadSlack',
  'routingKeyMaxInFlight',
  'processes',
  'routingPrefixChars',
  'routingCacheTokens',
  'routingSync',
  'loadSignalsIntervalMs',
  'permits',
  'permitTimeoutMs',
  'telemetry',
  'now',
] as const satisfies readonly (keyof VllmClientOptions)[];

const MAX_MS = 2_147_483_647; // setTimeout's limit
const ms = (min: number) => ({ min, max: MAX_MS });

/** Validates one base URL and returns its origin plus path prefix (without a trailing slash, without `/v1`). */
function baseUrlOption(option: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw invalid(option, 'an http(s) URL', value);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw invalid(option, 'an http(s) URL', value);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw invalid(option, 'an http(s) URL', value);
  if (url.username !== '' || url.password !== '') {
    throw new InvalidOptionError(
      option,
      `Expected \`${option}\` without credentials; use \`apiKey\` instead`,
    );
  }
  if (url.search !== '' || url.hash !== '') throw invalid(option, 'a URL without query or fragment', value);
  const path = url.pathname.replace(/\/+$/, '').replace(/\/v1$/, '');
  if (path !== '') {
    throw new InvalidOptionError(
      option,
      `Expected \`${option}\` to be the server's origin (e.g. http://host:8000), got a path: ${JSON.stringify(url.pathname)}`,
    );
  }
  return url.origin;
}

const TELEMETRY_KEYS = [
  'api',
  'tracerProvider',
  'meterProvider',
  'providerName',
  'captureContent',
  'chunkTiming',
] as const;

function telemetryOption(value: unknown): ResolvedTelemetryOptions | undefined {
  if (value === false) return undefined;
  if (
    value !== undefined &&
    value !== true &&
    (typeof value !== 'object' || value === null || Array.isArray(value))
  )
    throw invalid('telemetry', 'a boolean or an object', value);
  const options = (value === undefined || value === true ? {} : value) as Record<string, unknown>;
  rejectUnknownKeys('telemetry', options, TELEMETRY_KEYS);
  const provider = (name: string, method: string): object | undefined => {
    const provided = options[name];
    if (provided === undefined) return undefined;
    if (
      typeof provided !== 'object' ||
      provided === null ||
      typeof (provided as Record<string, unknown>)[method] !== 'function'
    )
      throw invalid(`telemetry.${name}`, `an OpenTelemetry ${name} (with ${method}())`, provided);
    return provided;
  };
  const api = options.api;
  if (
    api !== undefined &&
    (typeof api !== 'object' || api === null || !('trace' in api) || !('metrics' in api))
  )
    throw invalid('telemetry.api', 'the @opentelemetry/api module', api);
  return {
    api: api as object | undefined,
    tracerProvider: provider('tracerProvider', 'getTracer'),
    meterProvider: provider('meterProvider', 'getMeter'),
    providerName: optionalStringOption('telemetry.providerName', options.providerName) ?? 'vllm',
    captureContent: booleanOption('telemetry.captureContent', options.captureContent, false),
    chunkTiming: oneOfOption('telemetry.chunkTiming', options.chunkTiming, ['each', 'mean', 'off'], 'each'),
  };
}

function routingOption(value: unknown, replicas: number): RoutingPolicy {
  if (value === undefined) return replicas > 1 ? 'prefix' : 'least-outstanding';
  if (
    value === 'prefix' ||
    value === 'least-outstanding' ||
    value === 'round-robin' ||
    typeof value === 'function'
  ) {
    return value as RoutingPolicy;
  }
  throw invalid('routing', '"prefix", "least-outstanding", "round-robin" or a function', value);
}

export function resolveClientOptions(input: VllmClientOptions): ResolvedClientOptions {
  const options = objectOption('options', input);
  if (options === undefined) throw invalid('options', 'an object', input);
  rejectUnknownKeys('', options, KEYS);

  let origins: string[];
  if (options.baseUrls !== undefined) {
    if (options.baseUrl !== undefined) {
      throw new InvalidOptionError('baseUrls', 'Give either `baseUrl` or `baseUrls`, not both');
    }
    if (!Array.isArray(options.baseUrls) || options.baseUrls.length === 0) {
      throw invalid('baseUrls', 'a non-empty array of URLs', options.baseUrls);
    }
    origins = options.baseUrls.map((url, i) => baseUrlOption(`baseUrls[${i}]`, url));
    if (new Set(origins).size !== origins.length) {
      throw new InvalidOptionError('baseUrls', 'Expected `baseUrls` to list each replica once');
    }
  } else if (options.baseUrl !== undefined) {
    origins = [baseUrlOption('baseUrl', options.baseUrl)];
  } else {
    throw new InvalidOptionError(
      'baseUrl',
      'Expected `baseUrl` (or `baseUrls`): the upstream server, e.g. http://127.0.0.1:8000',
    );
  }

  const headers = objectOption('headers', options.headers) ?? {};
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value !== 'string') throw invalid(`headers.${name}`, 'a string', value);
  }
  const dispatcher = options.dispatcher;
  if (
    dispatcher !== undefined &&
    (typeof dispatcher !== 'object' || dispatcher === null || !('dispatch' in dispatcher))
  ) {
    throw invalid('dispatcher', 'an undici Dispatcher', dispatcher);
  }
  const budget = objectOption('retryBudget', options.retryBudget) ?? {};
  rejectUnknownKeys('retryBudget', budget, ['ratio', 'minPerSec']);
  if (options.now !== undefined && typeof options.now !== 'function')
    throw invalid('now', 'a function', options.now);
  if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || options.apiKey === '')) {
    // Never echo the value: it may be a secret.
    throw new InvalidOptionError('apiKey', 'Expected `apiKey` to be a non-empty string');
  }

  const retryBaseDelayMs = numberOption('retryBaseDelayMs', options.retryBaseDelayMs, 500, ms(0));
  const retryMaxDelayMs = numberOption('retryMaxDelayMs', options.retryMaxDelayMs, 8000, ms(0));
  if (retryMaxDelayMs < retryBaseDelayMs) {
    throw new InvalidOptionError(
      'retryMaxDelayMs',
      `Expected \`retryMaxDelayMs\` (${retryMaxDelayMs}) to be at least \`retryBaseDelayMs\` (${retryBaseDelayMs})`,
    );
  }
  return {
    origins,
    apiKey: optionalStringOption('apiKey', options.apiKey),
    headers: headers as Record<string, string>,
    dispatcher: dispatcher as Dispatcher | undefined,
    connections: numberOption('connections', options.connections, 100, { min: 1, max: 65535, integer: true }),
    keepAliveTimeoutMs: numberOption('keepAliveTimeoutMs', options.keepAliveTimeoutMs, 4000, {
      min: 1,
      max: MAX_MS,
    }),
    pipelining: numberOption('pipelining', options.pipelining, 1, { min: 1, max: 100, integer: true }),
    allowH2: booleanOption('allowH2', options.allowH2, false),
    connectTimeoutMs: numberOption('connectTimeoutMs', options.connectTimeoutMs, 10_000, {
      min: 1,
      max: MAX_MS,
    }),
    firstByteTimeoutMs: numberOption('firstByteTimeoutMs', options.firstByteTimeoutMs, 600_000, ms(0)),
    idleTimeoutMs: numberOption('idleTimeoutMs', options.idleTimeoutMs, 120_000, ms(0)),
    totalTimeoutMs: numberOption('totalTimeoutMs', options.totalTimeoutMs, 1_800_000, ms(0)),
    maxRetries: numberOption('maxRetries', options.maxRetries, 2, { min: 0, max: 100, integer: true }),
    retryBaseDelayMs,
    retryMaxDelayMs,
    retryAfterCapMs: numberOption('retryAfterCapMs', options.retryAfterCapMs, 30_000, ms(0)),
    retryBudget: {
      ratio: numberOption('retryBudget.ratio', budget.ratio, 0.1, { min: 0, max: 100 }),
      minPerSec: numberOption('retryBudget.minPerSec', budget.minPerSec, 1, { min: 0, max: 1_000_000 }),
    },
    ejectAfterFailures: numberOption('ejectAfterFailures', options.ejectAfterFailures, 3, {
      min: 1,
      max: 1000,
      integer: true,
    }),
    ejectAfter5xx: numberOption('ejectAfter5xx', options.ejectAfter5xx, 5, {
      min: 0,
      max: 1000,
      integer: true,
    }),
    maxEjectionMs: numberOption('maxEjectionMs', options.maxEjectionMs, 60_000, { min: 1, max: MAX_MS }),
    probeIntervalMs: numberOption('probeIntervalMs', options.probeIntervalMs, 2000, { min: 1, max: MAX_MS }),
    healthCheckIntervalMs: numberOption('healthCheckIntervalMs', options.healthCheckIntervalMs, 0, ms(0)),
    modelDiscovery: modelDiscoveryOption(
      options.modelDiscovery,
      origins.length > 1 || (isRecord(options.loraAdapters) && Object.keys(options.loraAdapters).length > 0),
    ),
    modelRefreshMs: numberOption('modelRefreshMs', options.modelRefreshMs, 10_000, ms(0)),
    models: modelMapOption(options.models, origins),
    loraAdapters: adapterMapOption(options.loraAdapters),
    aliases: aliasMapOption(options.aliases),
    singleFlight: functionOption('singleFlight', options.singleFlight),
    routing: routingOption(options.routing, origins.length),
    routingLoadFactor: numberOption('routingLoadFactor', options.routingLoadFactor, 1.25, {
      min: 1,
      max: 100,
    }),
    routingLoadSlack: numberOption('routingLoadSlack', options.routingLoadSlack, 8, {
      min: 0,
      max: 1_000_000,
      integer: true,
    }),
    routingKeyMaxInFlight: numberOption('routingKeyMaxInFlight', options.routingKeyMaxInFlight, 4, {
      min: 0,
      max: 1_000_000,
      integer: true,
    }),
    processes: numberOption('processes', options.processes, 1, { min: 1, max: 1_000_000, integer: true }),
    routingCacheTokens: optionalNumberOption('routingCacheTokens', options.routingCacheTokens, {
      min: 1,
      max: 1e12,
      integer: true,
    }),
    routingSync: routingSyncOption(options.routingSync),
    routingPrefixChars: numberOption('routingPrefixChars', options.routingPrefixChars, 16_384, {
      min: 1,
      max: 1_000_000,
      integer: true,
    }),
    loadSignalsIntervalMs: numberOption('loadSignalsIntervalMs', options.loadSignalsIntervalMs, 0, ms(0)),
    permits: permitsOption(options.permits),
    permitTimeoutMs: numberOption('permitTimeoutMs', options.permitTimeoutMs, 0, ms(0)),
    telemetry: telemetryOption(options.telemetry),
    now: (options.now as (() => number) | undefined) ?? Date.now,
  };
}

function modelDiscoveryOption(value: unknown, byDefault: boolean): boolean {
  if (value === undefined) return byDefault;
  if (typeof value !== 'boolean') throw invalid('modelDiscovery', 'a boolean', value);
  return value;
}

function routingSyncOption(value: unknown): RoutingSync | undefined {
  if (value === undefined) return undefined;
  const sync = value as Partial<RoutingSync> | null;
  if (
    typeof sync !== 'object' ||
    sync === null ||
    typeof sync.publish !== 'function' ||
    typeof sync.subscribe !== 'function'
  )
    throw invalid('routingSync', 'an object with publish() and subscribe()', value);
  return sync as RoutingSync;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `loraAdapters`: name → `{ base, path }`, both non-empty strings. */
function adapterMapOption(value: unknown): Record<string, { base: string; path: string }> {
  if (value === undefined) return {};
  if (!isRecord(value)) throw invalid('loraAdapters', 'an object of adapter name → { base, path }', value);
  const out: Record<string, { base: string; path: string }> = {};
  for (const [name, spec] of Object.entries(value)) {
    if (
      !isRecord(spec) ||
      typeof spec.base !== 'string' ||
      spec.base === '' ||
      typeof spec.path !== 'string' ||
      spec.path === ''
    )
      throw invalid(`loraAdapters.${name}`, '{ base: string, path: string }', spec);
    out[name] = { base: spec.base, path: spec.path };
  }
  return out;
}

/** `aliases`: alias → served name; an alias may not name another alias (one rewrite, no chains). */
function aliasMapOption(value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (!isRecord(value)) throw invalid('aliases', 'an object of alias → served model name', value);
  for (const [alias, served] of Object.entries(value)) {
    if (typeof served !== 'string' || served === '')
      throw invalid(`aliases.${alias}`, 'a model name', served);
    if (Object.hasOwn(value, served) && served !== alias)
      throw invalid(`aliases.${alias}`, 'a served model name, not another alias', served);
  }
  return { ...(value as Record<string, string>) };
}

/** `models`: model → replica URLs, each one of the client's baseUrls. */
function modelMapOption(
  value: unknown,
  origins: readonly string[],
): Record<string, readonly string[]> | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw invalid('models', 'an object of model → replica URLs', value);
  const out: Record<string, readonly string[]> = {};
  for (const [model, urls] of Object.entries(value as Record<string, unknown>)) {
    if (!Array.isArray(urls) || urls.length === 0)
      throw invalid(`models.${model}`, 'a non-empty array of baseUrls', urls);
    out[model] = urls.map((url) => {
      const origin = typeof url === 'string' ? url.replace(/\/+$/, '') : '';
      if (!origins.includes(origin))
        throw invalid(`models.${model}`, `URLs among baseUrls (${origins.join(', ')})`, url);
      return origin;
    });
  }
  return out;
}
