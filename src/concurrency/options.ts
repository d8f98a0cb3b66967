// createConcurrencyLimiter's options: every field documented with unit and default, resolved and validated in one
// place.
import { InvalidOptionError, isVllmKitError } from '../errors/index.js';
import {
  clockOption,
  invalid,
  numberOption,
  objectOption,
  oneOfOption,
  rejectUnknownKeys,
} from '../internal/validate.js';

export interface AdaptiveOptions {
  /** Lowest limit. @default 1 */
  min?: number;
  /** Highest limit. @default 1000 */
  max?: number;
  /** Starting limit. @default `concurrency` */
  initial?: number;
  /** Multiplicative decrease on an overload error (429/503), 0–1. @default 0.9 */
  backoffRatio?: number;
  /** Latency allowed above the no-load minimum before the limit shrinks, as a fraction. @default 0.1 */
  buffer?: number;
  /** Samples per window; the limit moves once per window, on the window's p90 latency. @default 32 */
  window?: number;
  /** Samples taken at the minimum concurrency to measure the no-load latency (minRTT). @default 32 */
  minRttSamples?: number;
  /** Samples between two minRTT measurements (the upstream may change). @default 2000 */
  minRttInterval?: number;
  /** Which failures mean "the upstream is overloaded". @default upstream 429/503 errors */
  isOverload?: (error: unknown) => boolean;
}

export interface ConcurrencyLimiterOptions {
  /** Tasks running at once (fixed mode), or the adaptive mode's starting point. @default 200 */
  concurrency?: number;
  /** Tasks waiting at most; beyond it `run` rejects with QueueFullError. 0 = no queue. @default 2 × concurrency */
  maxQueue?: number;
  /** Longest wait in the queue, ms; then QueueTimeoutError. 0 = no limit. @default 0 */
  queueTimeoutMs?: number;
  /** Tasks of one key (e.g. one API key) running at once, inside the global limit. @default Infinity */
  perKeyConcurrency?: number;
  /**
   * Who starts next when a slot frees: `'fifo'`, the longest waiting; `'fair'`, round robin across the tasks' `key`s
   * (deficit round robin by `weight`), higher `priority` bands first — one key flooding the queue no longer delays
   * everyone else's work behind its own. @default 'fifo'
   */
  queuePolicy?: 'fifo' | 'fair';
  /**
   * Fair policy: tasks of one key waiting at most; beyond it that key's `run` rejects with QueueFullError while other
   * keys still queue. And when the whole queue is full, a key with fewer waiting takes the place of the newest task
   * of the key with the most. @default Infinity
   */
  maxQueuePerKey?: number;
  /**
   * Fair policy: slots beyond `concurrency` for keys below their fair share (`concurrency` ÷ keys with work). When a
   * flood holds every slot, a light key's task then starts at once instead of waiting for one to free; queued tasks
   * start only below `concurrency`, so the flood gives those slots back as its tasks end. At most
   * `concurrency + fairShareHeadroom` tasks run. @default 0
   */
  fairShareHeadroom?: number;
  /**
   * Find the limit from latency and overload signals between `min` and `max`, with Envoy's adaptive-concurrency
   * gradient controller: limit ← limit × clamp(minRTT × (1 + buffer) / p90 latency, 0.5, 2) + √limit.
   */
  adaptive?: AdaptiveOptions | boolean;
  /** Clock for latency samples, ms. @default performance.now */
  now?: () => number;
}

/** Every option, tied to the type: an option added to one and not the other fails to compile. */
const KEYS = [
  'concurrency',
  'maxQueue',
  'queueTimeoutMs',
  'perKeyConcurrency',
  'queuePolicy',
  'maxQueuePerKey',
  'fairShareHeadroom',
  'adaptive',
  'now',
] as const satisfies readonly (keyof ConcurrencyLimiterOptions)[];

const ADAPTIVE_KEYS = [
  'min',
  'max',
  'initial',
  'backoffRatio',
  'buffer',
  'window',
  'minRttSamples',
  'minRttInterval',
  'isOverload',
] as const satisfies readonly (keyof AdaptiveOptions)[];

export type ResolvedAdaptiveOptions = Required<Omit<AdaptiveOptions, 'initial'>>;

export interface ResolvedConcurrencyOptions {
  /** The limit to start with: `concurrency`, or the adaptive mode's `initial`. */
  initial: number;
  maxQueue: number;
  queueTimeoutMs: number;
  perKeyConcurrency: number;
  queuePolicy: 'fifo' | 'fair';
  maxQueuePerKey: number;
  fairShareHeadroom: number;
  adaptive: ResolvedAdaptiveOptions | undefined;
  now: () => number;
}

function defaultIsOverload(error: unknown): boolean {
  if (!isVllmKitError(error)) return false;
  return error.code === 'ERR_VK_UPSTREAM_OVERLOADED' || error.code === 'ERR_VK_UPSTREAM_RATE_LIMITED';
}

export function resolveOptions(input: ConcurrencyLimiterOptions | undefined): ResolvedConcurrencyOptions {
  const options = objectOption('options', input) ?? {};
  rejectUnknownKeys('', options, KEYS);
  const concurrency = numberOption('concurrency', options.concurrency, 200, {
    min: 1,
    max: 1_000_000,
    integer: true,
  });
  const maxQueue = numberOption('maxQueue', options.maxQueue, 2 * concurrency, {
    min: 0,
    integer: true,
    allowInfinity: true,
  });
  let initial = concurrency;
  let adaptive: ResolvedAdaptiveOptions | undefined;
  if (options.adaptive !== undefined && options.adaptive !== false) {
    const given = options.adaptive === true ? {} : objectOption('adaptive', options.adaptive);
    if (given === undefined) throw invalid('adaptive', 'a boolean or an object', options.adaptive);
    rejectUnknownKeys('adaptive', given, ADAPTIVE_KEYS);
    const min = numberOption('adaptive.min', given.min, 1, { min: 1, integer: true });
    const max = numberOption('adaptive.max', given.max, 1000, { min: 1, integer: true });
    if (max < min)
      throw new InvalidOptionError(
        'adaptive.max',
        `Expected \`adaptive.max\` (${max}) >= \`adaptive.min\` (${min})`,
      );
    initial = numberOption('adaptive.initial', given.initial, Math.min(Math.max(concurrency, min), max), {
      min,
      max,
      integer: true,
    });
    if (given.isOverload !== undefined && typeof given.isOverload !== 'function') {
      throw invalid('adaptive.isOverload', 'a function', given.isOverload);
    }
    adaptive = {
      min,
      max,
      backoffRatio: numberOption('adaptive.backoffRatio', given.backoffRatio, 0.9, { min: 0.01, max: 0.99 }),
      buffer: numberOption('adaptive.buffer', given.buffer, 0.1, { min: 0, max: 10 }),
      window: numberOption('adaptive.window', given.window, 32, { min: 1, max: 100_000, integer: true }),
      minRttSamples: numberOption('adaptive.minRttSamples', given.minRttSamples, 32, {
        min: 1,
        max: 100_000,
        integer: true,
      }),
      minRttInterval: numberOption('adaptive.minRttInterval', given.minRttInterval, 2000, {
        min: 1,
        max: 100_000_000,
        integer: true,
      }),
      isOverload: (given.isOverload as AdaptiveOptions['isOverload']) ?? defaultIsOverload,
    };
  }
  const queuePolicy = oneOfOption('queuePolicy', options.queuePolicy, ['fifo', 'fair'], 'fifo');
  if (options.fairShareHeadroom !== undefined && options.fairShareHeadroom !== 0 && queuePolicy !== 'fair') {
    throw new InvalidOptionError(
      'fairShareHeadroom',
      `Expected \`fairShareHeadroom\` only with \`queuePolicy: 'fair'\` (fair shares are per key), got ${String(options.fairShareHeadroom)} with '${queuePolicy}'`,
    );
  }
  return {
    initial,
    maxQueue,
    queueTimeoutMs: numberOption('queueTimeoutMs', options.queueTimeoutMs, 0, { min: 0, max: 2_147_483_647 }),
    perKeyConcurrency: numberOption(
      'perKeyConcurrency',
      options.perKeyConcurrency,
      Number.POSITIVE_INFINITY,
      {
        min: 1,
        integer: true,
        allowInfinity: true,
      },
    ),
    queuePolicy,
    maxQueuePerKey: numberOption('maxQueuePerKey', options.maxQueuePerKey, Number.POSITIVE_INFINITY, {
      min: 1,
      integer: true,
      allowInfinity: true,
    }),
    fairShareHeadroom: numberOption('fairShareHeadroom', options.fairShareHeadroom, 0, {
      min: 0,
      max: 1_000_000,
      integer: true,
    }),
    adaptive,
    now: clockOption(options.now, () => performance.now()),
  };
}
