// The simulator's options: types with units and defaults, resolved and validated in one place.
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
  stringOption,
} from '../internal/validate.js';

/** Output length when a request sets no `max_tokens`: a fixed count, or a heavy-tailed draw around a mean. */
export type OutputTokens =
  | number
  | {
      /** Mean output length in tokens (exponential distribution, as ShareGPT-like traffic). */
      mean: number;
      /** Upper cap in tokens. @default 4 × mean */
      max?: number;
    };

/** Faults to inject. Each rule with `times` hits that many matching requests, then clears itself. */
export interface SimulatorFaults {
  /** Stop listening: new connections get `ECONNREFUSED`. Existing connections stay. */
  refuseConnections?: boolean;
  /** `/health` and `/ping` answer 503, as vLLM does when its engine is dead. */
  unhealthy?: boolean;
  /**
   * Destroy the socket as soon as a generation request arrives, before any response byte (what a client sees when
   * it reuses a keep-alive socket the server just closed). With `onlyReused`, only requests on a connection that has
   * already served one.
   */
  resetBeforeResponse?: { onlyReused?: boolean; times?: number };
  /** Destroy the socket after sending `afterTokens` tokens of a stream (or, not streaming, before the response). */
  resetMidStream?: { afterTokens: number; times?: number };
  /** Answer generation requests with this status (and an OpenAI-style error body unless `body` is given). */
  status?: {
    status: number;
    /** Raw body to send instead of vLLM's error object; `''` sends an empty body (as a dying engine does). */
    body?: string;
    /** Sent as `Retry-After` (seconds). */
    retryAfterSec?: number;
    times?: number;
  };
  /** Inside a 200 stream, after `afterTokens` tokens, send `data: {"error":…}` then `[DONE]`. */
  streamError?: { afterTokens?: number; message?: string; status?: number; times?: number };
  /** Accept the request and never answer it (until the client goes away). Streams get their 200 and headers first. */
  stall?: { times?: number };
  /** Add `delayMs` to the time to first token. */
  slowFirstToken?: { delayMs: number; times?: number };
}

export interface VllmSimulatorOptions {
  /** TCP port; `0` picks a free one. @default 0 */
  port?: number;
  /** Interface to listen on. @default '127.0.0.1' */
  host?: string;
  /** Served model name; requests naming another model get 404. @default 'meta-llama/Llama-3.1-8B-Instruct' */
  model?: string;
  /**
   * LoRA adapters served on top of `model` (loaded at start, as `--lora-modules name=path` does): listed by
   * `/v1/models` with `parent` the base model and `root` their path, and accepted as a request's `model`. @default []
   */
  loraAdapters?: readonly string[];
  /**
   * Accept `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`, as vLLM does with
   * `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` (otherwise those routes are 404, as in vLLM). @default false
   */
  runtimeLoraUpdating?: boolean;
  /** How long loading an adapter at run time takes, ms. @default 0 */
  loraLoadMs?: number;
  /**
   * Distinct adapters in the running batch at once (vLLM's `--max-loras`, default 1): a request for another adapter
   * waits until one of them has no request running (requests behind it may run first, as in vLLM's scheduler), and
   * one whose adapter is not resident swaps it in, evicting the least recently used, and waits `loraSwapMs` more for
   * its first token.
   */
  maxLoras?: number;
  /** The first-token delay of a swap (see `maxLoras`), ms. @default 0 */
  loraSwapMs?: number;
  /**
   * What the instance serves: `generate` (chat and completions; embeddings get vLLM's 400 "The model does not support
   * Embeddings API"), `embed` (embeddings only, like `--task embed`; chat and completions get the 400), or `all` (a
   * simulator convenience: every route). @default 'all'
   */
  task?: 'all' | 'generate' | 'embed';
  /** When set, `/v1*` routes require `Authorization: Bearer <apiKey>` (401 `{"error":"Unauthorized"}`). */
  apiKey?: string;
  /** Running slots, vLLM's `--max-num-seqs`. @default 256 */
  maxNumSeqs?: number;
  /** Waiting-queue cap (vLLM's `--max-num-queued-reqs`); beyond it 503. `Infinity` is vLLM's default. @default Infinity */
  maxQueue?: number;
  /** Time to first token once a request runs, in ms (the queue wait comes on top). @default 0 */
  ttftMs?: number;
  /** Inter-token latency in ms. @default 0 */
  itlMs?: number;
  /**
   * Automatic prefix caching: the KV cache's capacity for cached prompt blocks, in tokens (an LRU of 16-token blocks;
   * only a shared leading run of blocks hits, as in vLLM). `0` turns caching off. @default 1000000
   */
  prefixCacheTokens?: number;
  /** Prefill time per prompt token not found in the prefix cache, ms, added to `ttftMs`. @default 0 */
  prefillMsPerToken?: number;
  /**
   * Report `usage.prompt_tokens_details.cached_tokens`, as vLLM does when started with
   * `--enable-prompt-tokens-details` (otherwise `prompt_tokens_details` is null). @default false
   */
  promptTokensDetails?: boolean;
  /** Random spread of every delay, as a fraction: 0.2 draws each from ±20%. From 0 to 1. @default 0 */
  jitter?: number;
  /** How much slower tokens get as the batch fills: ITL × (1 + batchSlowdown × running / maxNumSeqs). @default 0 */
  batchSlowdown?: number;
  /** Output length of requests without `max_tokens`. Completions default to 16 as in vLLM. @default { mean: 200 } */
  outputTokens?: OutputTokens;
  /** Context length (`max_model_len`); prompt + max_tokens beyond it is a 400. @default 8192 */
  maxModelLen?: number;
  /** Seed of every random draw: the same seed and prompt give the same text. @default 0 */
  seed?: number;
  /** Idle keep-alive timeout in ms, like uvicorn's `timeout_keep_alive`; no `Keep-Alive` hint is sent. @default 5000 */
  keepAliveTimeoutMs?: number;
  /** `nested` is today's `{"error":{…}}`; `legacy` is the flat shape of vLLM ≤ 0.10.0. @default 'nested' */
  errorShape?: 'nested' | 'legacy';
  /** Length of embedding vectors. @default 64 */
  embeddingDimensions?: number;
  /** Reported by `/version`. @default '0.11.0' */
  version?: string;
  /** Faults active from the start; change them later with `setFaults`. */
  faults?: SimulatorFaults;
  /**
   * Called as each request arrives, with its method, path and headers (to check what a client sent upstream: a
   * `traceparent`, a request id). It must not throw.
   */
  onRequest?: (request: SimulatorRequest) => void;
}

/** What `onRequest` is told of a request. */
export interface SimulatorRequest {
  method: string;
  path: string;
  headers: Readonly<Record<string, string | string[] | undefined>>;
}

export interface ResolvedOptions {
  port: number;
  host: string;
  model: string;
  loraAdapters: readonly string[];
  runtimeLoraUpdating: boolean;
  loraLoadMs: number;
  maxLoras: number;
  loraSwapMs: number;
  task: 'all' | 'generate' | 'embed';
  apiKey: string | undefined;
  maxNumSeqs: number;
  maxQueue: number;
  ttftMs: number;
  itlMs: number;
  prefixCacheTokens: number;
  prefillMsPerToken: number;
  promptTokensDetails: boolean;
  jitter: number;
  batchSlowdown: number;
  outputTokens: { mean: number; max: number; fixed: boolean };
  maxModelLen: number;
  seed: number;
  keepAliveTimeoutMs: number;
  errorShape: 'nested' | 'legacy';
  embeddingDimensions: number;
  version: string;
  faults: SimulatorFaults;
  onRequest: ((request: SimulatorRequest) => void) | undefined;
}

const OPTION_KEYS = [
  'port',
  'host',
  'model',
  'apiKey',
  'maxNumSeqs',
  'maxQueue',
  'ttftMs',
  'itlMs',
  'prefixCacheTokens',
  'prefillMsPerToken',
  'promptTokensDetails',
  'jitter',
  'batchSlowdown',
  'outputTokens',
  'maxModelLen',
  'seed',
  'keepAliveTimeoutMs',
  'errorShape',
  'embeddingDimensions',
  'version',
  'faults',
  'onRequest',
  'loraAdapters',
  'runtimeLoraUpdating',
  'loraLoadMs',
  'maxLoras',
  'loraSwapMs',
  'task',
] as const satisfies readonly (keyof VllmSimulatorOptions)[];

const ms = { min: 0, max: 86_400_000 };

export function resolveOptions(input: VllmSimulatorOptions = {}): ResolvedOptions {
  const options = objectOption('options', input) ?? {};
  rejectUnknownKeys('', options, OPTION_KEYS);
  const maxModelLen = numberOption('maxModelLen', options.maxModelLen, 8192, { min: 1, integer: true });
  return {
    port: numberOption('port', options.port, 0, { min: 0, max: 65535, integer: true }),
    host: stringOption('host', options.host, '127.0.0.1'),
    model: stringOption('model', options.model, 'meta-llama/Llama-3.1-8B-Instruct'),
    loraAdapters: adapterNames(options.loraAdapters),
    runtimeLoraUpdating: booleanOption('runtimeLoraUpdating', options.runtimeLoraUpdating, false),
    loraLoadMs: numberOption('loraLoadMs', options.loraLoadMs, 0, ms),
    maxLoras: numberOption('maxLoras', options.maxLoras, 1, { min: 1, max: 1024, integer: true }),
    loraSwapMs: numberOption('loraSwapMs', options.loraSwapMs, 0, ms),
    task: oneOfOption('task', options.task, ['all', 'generate', 'embed'], 'all'),
    apiKey: optionalStringOption('apiKey', options.apiKey),
    maxNumSeqs: numberOption('maxNumSeqs', options.maxNumSeqs, 256, { min: 1, integer: true }),
    maxQueue: numberOption('maxQueue', options.maxQueue, Number.POSITIVE_INFINITY, {
      min: 0,
      integer: true,
      allowInfinity: true,
    }),
    ttftMs: numberOption('ttftMs', options.ttftMs, 0, ms),
    itlMs: numberOption('itlMs', options.itlMs, 0, ms),
    prefixCacheTokens: numberOption('prefixCacheTokens', options.prefixCacheTokens, 1_000_000, {
      min: 0,
      max: 1_000_000_000,
      integer: true,
    }),
    prefillMsPerToken: numberOption('prefillMsPerToken', options.prefillMsPerToken, 0, { min: 0, max: 1000 }),
    promptTokensDetails: booleanOption('promptTokensDetails', options.promptTokensDetails, false),
    jitter: numberOption('jitter', options.jitter, 0, { min: 0, max: 1 }),
    batchSlowdown: numberOption('batchSlowdown', options.batchSlowdown, 0, { min: 0, max: 1000 }),
    outputTokens: resolveOutputTokens(options.outputTokens, maxModelLen),
    maxModelLen,
    seed: numberOption('seed', options.seed, 0, { integer: true }),
    keepAliveTimeoutMs: numberOption('keepAliveTimeoutMs', options.keepAliveTimeoutMs, 5000, {
      min: 1,
      max: ms.max,
    }),
    errorShape: oneOfOption('errorShape', options.errorShape, ['nested', 'legacy'], 'nested'),
    embeddingDimensions: numberOption('embeddingDimensions', options.embeddingDimensions, 64, {
      min: 1,
      max: 65536,
      integer: true,
    }),
    version: stringOption('version', options.version, '0.11.0'),
    faults: resolveFaults(options.faults),
    onRequest: functionOption('onRequest', options.onRequest),
  };
}

function resolveOutputTokens(value: unknown, maxModelLen: number): ResolvedOptions['outputTokens'] {
  if (value === undefined) return { mean: 200, max: Math.min(800, maxModelLen), fixed: false };
  if (typeof value === 'number') {
    const n = numberOption('outputTokens', value, 0, { min: 1, integer: true });
    return { mean: n, max: n, fixed: true };
  }
  const spec = objectOption('outputTokens', value);
  if (spec === undefined) throw invalid('outputTokens', 'a positive integer or { mean, max? }', value);
  rejectUnknownKeys('outputTokens', spec, ['mean', 'max']);
  const mean = numberOption('outputTokens.mean', spec.mean, Number.NaN, { min: 1 });
  if (Number.isNaN(mean)) throw invalid('outputTokens.mean', 'a number >= 1', spec.mean);
  const max = numberOption('outputTokens.max', spec.max, Math.ceil(4 * mean), { min: 1, integer: true });
  return { mean, max, fixed: false };
}

const times = { min: 1, integer: true, allowInfinity: true };

/** Validates a faults object; returns a fresh copy the simulator may mutate (`times` counts down). */
export function resolveFaults(value: unknown): SimulatorFaults {
  const input = objectOption('faults', value);
  if (input === undefined) return {};
  rejectUnknownKeys('faults', input, [
    'refuseConnections',
    'unhealthy',
    'resetBeforeResponse',
    'resetMidStream',
    'status',
    'streamError',
    'stall',
    'slowFirstToken',
  ]);
  const out: SimulatorFaults = {};
  if (booleanOption('faults.refuseConnections', input.refuseConnections, false)) out.refuseConnections = true;
  if (booleanOption('faults.unhealthy', input.unhealthy, false)) out.unhealthy = true;

  const reset = objectOption('faults.resetBeforeResponse', input.resetBeforeResponse);
  if (reset) {
    rejectUnknownKeys('faults.resetBeforeResponse', reset, ['onlyReused', 'times']);
    out.resetBeforeResponse = {
      onlyReused: booleanOption('faults.resetBeforeResponse.onlyReused', reset.onlyReused, false),
      ...timesField('faults.resetBeforeResponse', reset),
    };
  }
  const mid = objectOption('faults.resetMidStream', input.resetMidStream);
  if (mid) {
    rejectUnknownKeys('faults.resetMidStream', mid, ['afterTokens', 'times']);
    out.resetMidStream = {
      afterTokens: numberOption('faults.resetMidStream.afterTokens', mid.afterTokens, 1, {
        min: 0,
        integer: true,
      }),
      ...timesField('faults.resetMidStream', mid),
    };
  }
  const status = objectOption('faults.status', input.status);
  if (status) {
    rejectUnknownKeys('faults.status', status, ['status', 'body', 'retryAfterSec', 'times']);
    if (status.status === undefined)
      throw invalid('faults.status.status', 'an HTTP status from 400 to 599', undefined);
    const rule: NonNullable<SimulatorFaults['status']> = {
      status: numberOption('faults.status.status', status.status, 500, { min: 400, max: 599, integer: true }),
      ...timesField('faults.status', status),
    };
    if (status.body !== undefined) rule.body = stringOption('faults.status.body', status.body, '', false);
    const retryAfterSec = optionalNumberOption('faults.status.retryAfterSec', status.retryAfterSec, {
      min: 0,
    });
    if (retryAfterSec !== undefined) rule.retryAfterSec = retryAfterSec;
    out.status = rule;
  }
  const streamError = objectOption('faults.streamError', input.streamError);
  if (streamError) {
    rejectUnknownKeys('faults.streamError', streamError, ['afterTokens', 'message', 'status', 'times']);
    out.streamError = {
      afterTokens: numberOption('faults.streamError.afterTokens', streamError.afterTokens, 0, {
        min: 0,
        integer: true,
      }),
      message: stringOption('faults.streamError.message', streamError.message, 'Simulated engine failure'),
      status: numberOption('faults.streamError.status', streamError.status, 500, {
        min: 400,
        max: 599,
        integer: true,
      }),
      ...timesField('faults.streamError', streamError),
    };
  }
  const stall = objectOption('faults.stall', input.stall);
  if (stall) {
    rejectUnknownKeys('faults.stall', stall, ['times']);
    out.stall = timesField('faults.stall', stall);
  }
  const slow = objectOption('faults.slowFirstToken', input.slowFirstToken);
  if (slow) {
    rejectUnknownKeys('faults.slowFirstToken', slow, ['delayMs', 'times']);
    if (slow.delayMs === undefined)
      throw invalid('faults.slowFirstToken.delayMs', 'a number >= 0', undefined);
    out.slowFirstToken = {
      delayMs: numberOption('faults.slowFirstToken.delayMs', slow.delayMs, 0, ms),
      ...timesField('faults.slowFirstToken', slow),
    };
  }
  return out;
}

function timesField(option: string, rule: Record<string, unknown>): { times?: number } {
  const n = optionalNumberOption(`${option}.times`, rule.times, times);
  return n === undefined ? {} : { times: n };
}

function adapterNames(value: unknown): readonly string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string' && v !== ''))
    throw invalid('loraAdapters', 'an array of adapter names', value);
  return value as string[];
}
