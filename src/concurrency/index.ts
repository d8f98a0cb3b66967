// createConcurrencyLimiter: bounded in-flight work on p-limit, a bounded queue with timeouts and aborts, per-key caps,
// and an adaptive limit (Envoy's gradient controller) that finds the upstream's capacity instead of trusting a
// hand-set number.
import pLimit, { type LimitFunction } from 'p-limit';
import {
  ClosedError,
  InvalidOptionError,
  isVllmKitError,
  RequestAbortedError,
  VllmKitError,
} from '../errors/index.js';
import { type AbortSignalLike, toAbortSignal } from '../internal/abort.js';
import {
  clockOption,
  invalid,
  numberOption,
  objectOption,
  oneOfOption,
  rejectUnknownKeys,
} from '../internal/validate.js';
import { FairQueue } from './fair-queue.js';

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
  /** Tasks running at once (fixed mode), or the adaptive mode's starting point. @default 200 (the seed's) */
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
   * Find the limit from latency and overload signals between `min` and `max`, with Envoy's adaptive-concurrency
   * gradient controller: limit ← limit × clamp(minRTT × (1 + buffer) / p90 latency, 0.5, 2) + √limit.
   */
  adaptive?: AdaptiveOptions | boolean;
  /** Clock for latency samples, ms. @default performance.now */
  now?: () => number;
}

/** What `fn` receives. */
export interface TaskContext {
  /** Fires when the caller gives up (its own signal; a task-local one, made on first use, when it gave none). */
  readonly signal: AbortSignal;
  /** Call when the first byte (the first token) arrives: the adaptive limit then samples time to first token. */
  markFirstByte(): void;
}

export interface RunOptions {
  /** Cancels the task while it waits (it then never runs) and reaches `fn` as `context.signal`. */
  signal?: AbortSignalLike;
  /** Whose task this is: counts against `perKeyConcurrency`, and is the flow the fair policy serves in turn. */
  key?: string;
  /** Fair policy: the key's share relative to others (2 = twice the turns of a key at 1). @default 1 */
  weight?: number;
  /** Fair policy: the band; tasks of a higher priority always start first, fair within their band. @default 0 */
  priority?: number;
}

export interface ConcurrencyLimiterStats {
  active: number;
  pending: number;
  /** The limit in force (moves in adaptive mode). */
  concurrency: number;
  started: number;
  completed: number;
  failed: number;
  rejectedQueueFull: number;
  rejectedQueueTimeout: number;
  abortedWhileQueued: number;
  /** Sum and count of time spent queued by tasks that started, ms. */
  queueWaitTotalMs: number;
  queueWaitCount: number;
  /** Fair policy: waiting tasks by key (keys with none are left out). */
  pendingByKey: Record<string, number>;
  /** Fair policy: waiting tasks by priority band. */
  pendingByPriority: Record<string, number>;
}

export interface ConcurrencyLimiter {
  run<T>(fn: (context: TaskContext) => Promise<T> | T, options?: RunOptions): Promise<T>;
  readonly activeCount: number;
  readonly pendingCount: number;
  /** Sets the limit (clamped to the adaptive bounds in adaptive mode). Raising it starts queued tasks at once. */
  setConcurrency(concurrency: number): void;
  stats(): ConcurrencyLimiterStats;
  /** Rejects every queued task with a closed error; running tasks finish. */
  close(): Promise<void>;
}

/** Every option, tied to the type: an option added to one and not the other fails to compile. */
const KEYS = [
  'concurrency',
  'maxQueue',
  'queueTimeoutMs',
  'perKeyConcurrency',
  'queuePolicy',
  'maxQueuePerKey',
  'adaptive',
  'now',
] as const satisfies readonly (keyof ConcurrencyLimiterOptions)[];

/** The queue is full: answer 503 with `Retry-After: retryAfterSec`. */
export class QueueFullError extends VllmKitError {
  readonly retryAfterSec: number;
  constructor(retryAfterSec: number) {
    super('Too many requests are waiting: the queue is full', 'ERR_VK_QUEUE_FULL');
    this.retryAfterSec = retryAfterSec;
  }
}

/** The task waited longer than `queueTimeoutMs`: answer 503. */
export class QueueTimeoutError extends VllmKitError {
  readonly retryAfterSec: number;
  constructor(waitedMs: number, retryAfterSec: number) {
    super(`Waited ${Math.round(waitedMs)} ms in the queue without a free slot`, 'ERR_VK_QUEUE_TIMEOUT');
    this.retryAfterSec = retryAfterSec;
  }
}

/** True for {@link QueueFullError}, from any copy of the package. */
export function isQueueFullError(value: unknown): value is QueueFullError {
  return isVllmKitError(value) && value.code === 'ERR_VK_QUEUE_FULL';
}

/** True for {@link QueueTimeoutError}. */
export function isQueueTimeoutError(value: unknown): value is QueueTimeoutError {
  return isVllmKitError(value) && value.code === 'ERR_VK_QUEUE_TIMEOUT';
}

/** What `fn` receives; its `signal` is made only if the task reads it. */
class Context implements TaskContext {
  private made: AbortSignal | undefined;
  firstByteAt: number | undefined;
  constructor(
    private readonly source: AbortSignalLike | undefined,
    private readonly now: () => number,
  ) {}
  get signal(): AbortSignal {
    this.made ??= toAbortSignal(this.source);
    return this.made;
  }
  // A property, not a method: tasks may destructure it (`async ({ markFirstByte }) => …`).
  readonly markFirstByte = (): void => {
    this.firstByteAt ??= this.now();
  };
}

/** The p-th quantile (0–1) of the samples, by sorting a copy. */
function percentileOf(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

function defaultIsOverload(error: unknown): boolean {
  if (!isVllmKitError(error)) return false;
  return error.code === 'ERR_VK_UPSTREAM_OVERLOADED' || error.code === 'ERR_VK_UPSTREAM_RATE_LIMITED';
}

interface Waiter {
  cancelled: boolean;
  enqueuedAt: number;
  reject: (error: unknown) => void;
  timer: NodeJS.Timeout | undefined;
  cleanup: (() => void) | undefined;
  /** Fair policy: its flow and band, and how it starts when its turn comes. */
  key: string;
  priority: number;
  start: (() => void) | undefined;
}

/**
 * Creates a concurrency limiter.
 *
 * @example
 * const limiter = createConcurrencyLimiter({ concurrency: 64, maxQueue: 128, queueTimeoutMs: 10_000 });
 * const reply = await limiter.run(({ signal }) => client.chatCompletion(body, { signal }), { signal: req.signal });
 */
export function createConcurrencyLimiter(options: ConcurrencyLimiterOptions = {}): ConcurrencyLimiter {
  return new Limiter(options);
}

class Limiter implements ConcurrencyLimiter {
  private readonly limit: LimitFunction;
  private readonly maxQueue: number;
  private readonly queueTimeoutMs: number;
  private readonly perKeyConcurrency: number;
  private readonly keyLimits = new Map<string, LimitFunction>();
  private readonly adaptive: Required<Omit<AdaptiveOptions, 'initial'>> | undefined;
  private readonly now: () => number;
  /** Fair policy: the waiting room, the limit, each key's running tasks and its queue cap. */
  private readonly fair: FairQueue<Waiter> | undefined;
  private fairConcurrency = 0;
  private readonly runningByKey = new Map<string, number>();
  private readonly maxQueuePerKey: number;
  private waiting = 0;
  /** Tasks inside `fn` now (p-limit's own count lags a microtask behind completions). */
  private running = 0;
  private readonly waiters = new Set<Waiter>();
  /** Gradient controller state: the no-load latency, the current window's samples, and the minRTT phase. */
  private minRtt = Number.NaN;
  private samples: number[] = [];
  private measuringMinRtt = false;
  private samplesSinceMinRtt = 0;
  private limitBeforeMinRtt = 0;
  /** Average task duration, ms, for Retry-After estimates. */
  private avgDurationMs = 0;
  private closed = false;
  private readonly counts = {
    started: 0,
    completed: 0,
    failed: 0,
    rejectedQueueFull: 0,
    rejectedQueueTimeout: 0,
    abortedWhileQueued: 0,
    queueWaitTotalMs: 0,
    queueWaitCount: 0,
  };

  constructor(input: ConcurrencyLimiterOptions) {
    const options = objectOption('options', input) ?? {};
    rejectUnknownKeys('', options, KEYS);
    const concurrency = numberOption('concurrency', options.concurrency, 200, {
      min: 1,
      max: 1_000_000,
      integer: true,
    });
    this.maxQueue = numberOption('maxQueue', options.maxQueue, 2 * concurrency, {
      min: 0,
      integer: true,
      allowInfinity: true,
    });
    this.queueTimeoutMs = numberOption('queueTimeoutMs', options.queueTimeoutMs, 0, {
      min: 0,
      max: 2_147_483_647,
    });
    this.perKeyConcurrency = numberOption(
      'perKeyConcurrency',
      options.perKeyConcurrency,
      Number.POSITIVE_INFINITY,
      {
        min: 1,
        integer: true,
        allowInfinity: true,
      },
    );
    this.now = clockOption(options.now, () => performance.now());

    let initial = concurrency;
    if (options.adaptive !== undefined && options.adaptive !== false) {
      const adaptive = options.adaptive === true ? {} : objectOption('adaptive', options.adaptive);
      if (adaptive === undefined) throw invalid('adaptive', 'a boolean or an object', options.adaptive);
      rejectUnknownKeys('adaptive', adaptive, [
        'min',
        'max',
        'initial',
        'backoffRatio',
        'buffer',
        'window',
        'minRttSamples',
        'minRttInterval',
        'isOverload',
      ]);
      const min = numberOption('adaptive.min', adaptive.min, 1, { min: 1, integer: true });
      const max = numberOption('adaptive.max', adaptive.max, 1000, { min: 1, integer: true });
      if (max < min)
        throw new InvalidOptionError(
          'adaptive.max',
          `Expected \`adaptive.max\` (${max}) >= \`adaptive.min\` (${min})`,
        );
      initial = numberOption(
        'adaptive.initial',
        adaptive.initial,
        Math.min(Math.max(concurrency, min), max),
        {
          min,
          max,
          integer: true,
        },
      );
      if (adaptive.isOverload !== undefined && typeof adaptive.isOverload !== 'function') {
        throw invalid('adaptive.isOverload', 'a function', adaptive.isOverload);
      }
      this.adaptive = {
        min,
        max,
        backoffRatio: numberOption('adaptive.backoffRatio', adaptive.backoffRatio, 0.9, {
          min: 0.01,
          max: 0.99,
        }),
        buffer: numberOption('adaptive.buffer', adaptive.buffer, 0.1, { min: 0, max: 10 }),
        window: numberOption('adaptive.window', adaptive.window, 32, { min: 1, max: 100_000, integer: true }),
        minRttSamples: numberOption('adaptive.minRttSamples', adaptive.minRttSamples, 32, {
          min: 1,
          max: 100_000,
          integer: true,
        }),
        minRttInterval: numberOption('adaptive.minRttInterval', adaptive.minRttInterval, 2000, {
          min: 1,
          max: 100_000_000,
          integer: true,
        }),
        isOverload: (adaptive.isOverload as AdaptiveOptions['isOverload']) ?? defaultIsOverload,
      };
    }
    this.limit = pLimit(initial);
    const policy = oneOfOption('queuePolicy', options.queuePolicy, ['fifo', 'fair'], 'fifo');
    this.maxQueuePerKey = numberOption('maxQueuePerKey', options.maxQueuePerKey, Number.POSITIVE_INFINITY, {
      min: 1,
      integer: true,
      allowInfinity: true,
    });
    if (policy === 'fair') {
      this.fair = new FairQueue<Waiter>();
      this.fairConcurrency = initial;
    }
  }

  /** The limit in force. */
  private get concurrency(): number {
    return this.fair === undefined ? this.limit.concurrency : this.fairConcurrency;
  }

  get activeCount(): number {
    return this.running;
  }

  get pendingCount(): number {
    return this.waiting;
  }

  setConcurrency(concurrency: number): void {
    let next = numberOption('concurrency', concurrency, 1, { min: 1, max: 1_000_000, integer: true });
    if (this.adaptive) next = Math.min(this.adaptive.max, Math.max(this.adaptive.min, next));
    if (this.fair !== undefined) {
      this.fairConcurrency = next;
      this.pump();
    } else if (next !== this.limit.concurrency) this.limit.concurrency = next;
  }

  stats(): ConcurrencyLimiterStats {
    return {
      ...this.counts,
      active: this.running,
      pending: this.waiting,
      concurrency: this.concurrency,
      pendingByKey: this.fair?.countsByKey() ?? {},
      pendingByPriority: this.fair?.countsByPriority() ?? {},
    };
  }

  private retryAfterSec(): number {
    // The time for the queue ahead to drain through the slots, at the observed task duration.
    const drainMs = ((this.waiting + 1) / this.concurrency) * (this.avgDurationMs || 1000);
    return Math.max(1, Math.ceil(drainMs / 1000));
  }

  run<T>(fn: (context: TaskContext) => Promise<T> | T, options?: RunOptions): Promise<T> {
    if (this.closed) return Promise.reject(new ClosedError('concurrency limiter'));
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(new RequestAbortedError({ cause: signal.reason }));
    if (this.fair !== undefined) return this.runFair(fn, signal, options);
    const key = options?.key;
    const keyLimit =
      key === undefined || this.perKeyConcurrency === Number.POSITIVE_INFINITY
        ? undefined
        : this.keyLimitFor(key);
    const limit = this.limit;
    // Runs at once when a slot is free and nobody waits ahead: no queue bookkeeping on the fast path.
    // (A keyed task always takes the queue path: its key's limiter starts it a microtask later.)
    const immediate =
      keyLimit === undefined &&
      limit.activeCount < limit.concurrency &&
      limit.pendingCount === 0 &&
      this.waiting === 0;
    if (!immediate && this.waiting >= this.maxQueue) {
      this.counts.rejectedQueueFull++;
      return Promise.reject(new QueueFullError(this.retryAfterSec()));
    }
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter | undefined = immediate ? undefined : this.enqueue(reject, signal);
      const task = async () => {
        if (waiter !== undefined) {
          // Cancelled (aborted, timed out, closed) while queued: never runs; its caller was answered already.
          if (waiter.cancelled) return;
          this.dequeue(waiter);
        }
        await this.execute(fn, signal, resolve, reject);
      };
      if (keyLimit === undefined) limit(task);
      else keyLimit(() => limit(task)).finally(() => this.releaseKey(key!, keyLimit));
    });
  }

  /** The fair policy's `run`: starts at once when a slot is free and nobody waits, else waits for its turn. */
  private runFair<T>(
    fn: (context: TaskContext) => Promise<T> | T,
    signal: AbortSignalLike | undefined,
    options: RunOptions | undefined,
  ): Promise<T> {
    const fair = this.fair!;
    const key = options?.key ?? '';
    let weight = 1;
    let priority = 0;
    try {
      if (options?.weight !== undefined)
        weight = numberOption('weight', options.weight, 1, { min: 0.001, max: 1e6 });
      if (options?.priority !== undefined)
        priority = numberOption('priority', options.priority, 0, { min: -1e6, max: 1e6, integer: true });
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.runningByKey.set(key, (this.runningByKey.get(key) ?? 0) + 1);
        void this.execute(fn, signal, resolve, reject).finally(() => {
          const left = this.runningByKey.get(key)! - 1;
          if (left === 0) this.runningByKey.delete(key);
          else this.runningByKey.set(key, left);
          this.pump();
        });
      };
      if (fair.length === 0 && this.running < this.fairConcurrency && this.keyMayStart(key)) return start();
      if (fair.countOf(key) >= this.maxQueuePerKey) {
        this.counts.rejectedQueueFull++;
        return reject(new QueueFullError(this.retryAfterSec()));
      }
      if (this.waiting >= this.maxQueue) {
        // Full: a lighter key takes the place of the newest task of the key with the most waiting.
        const victim = fair.newestOfLargest();
        if (victim === undefined || fair.countOf(victim.key) <= fair.countOf(key) + 1) {
          this.counts.rejectedQueueFull++;
          return reject(new QueueFullError(this.retryAfterSec()));
        }
        this.counts.rejectedQueueFull++;
        this.cancel(victim, new QueueFullError(this.retryAfterSec()));
      }
      const waiter = this.enqueue(reject, signal, key, priority);
      waiter.start = start;
      fair.push(waiter, weight);
    });
  }

  private keyMayStart(key: string): boolean {
    return (this.runningByKey.get(key) ?? 0) < this.perKeyConcurrency;
  }

  /** Fair policy: starts waiting tasks, in their turn, while slots are free. */
  private pump(): void {
    const fair = this.fair!;
    while (this.running < this.fairConcurrency && fair.length > 0) {
      const waiter = fair.shift((key) => this.keyMayStart(key));
      if (waiter === undefined) return;
      this.dequeue(waiter);
      waiter.start!();
    }
  }

  private enqueue(
    reject: (error: unknown) => void,
    signal: AbortSignalLike | undefined,
    key = '',
    priority = 0,
  ): Waiter {
    this.waiting++;
    const waiter: Waiter = {
      cancelled: false,
      enqueuedAt: this.now(),
      reject,
      timer: undefined,
      cleanup: undefined,
      key,
      priority,
      start: undefined,
    };
    this.waiters.add(waiter);
    if (this.queueTimeoutMs > 0) {
      waiter.timer = setTimeout(() => {
        this.counts.rejectedQueueTimeout++;
        this.cancel(waiter, new QueueTimeoutError(this.now() - waiter.enqueuedAt, this.retryAfterSec()));
      }, this.queueTimeoutMs);
      waiter.timer.unref();
    }
    if (signal !== undefined) {
      const onAbort = () => {
        this.counts.abortedWhileQueued++;
        this.cancel(waiter, new RequestAbortedError({ cause: signal.reason }));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      waiter.cleanup = () => signal.removeEventListener('abort', onAbort);
    }
    return waiter;
  }

  /** Takes a waiter out of the count at once and answers its caller; its placeholder is skipped when reached. */
  private cancel(waiter: Waiter, error: unknown): void {
    if (waiter.cancelled) return;
    waiter.cancelled = true;
    this.fair?.remove(waiter);
    this.release(waiter);
    waiter.reject(error);
  }

  private dequeue(waiter: Waiter): void {
    this.release(waiter);
    const waited = this.now() - waiter.enqueuedAt;
    this.counts.queueWaitTotalMs += waited;
    this.counts.queueWaitCount++;
  }

  private release(waiter: Waiter): void {
    this.waiting--;
    this.waiters.delete(waiter);
    if (waiter.timer) clearTimeout(waiter.timer);
    waiter.cleanup?.();
  }

  private async execute<T>(
    fn: (context: TaskContext) => Promise<T> | T,
    signal: AbortSignalLike | undefined,
    resolve: (value: T) => void,
    reject: (error: unknown) => void,
  ): Promise<void> {
    this.counts.started++;
    this.running++;
    const started = this.now();
    // Only tasks that started at the minimum concurrency measure the no-load latency.
    const lowLoad = this.measuringMinRtt && this.running <= (this.adaptive?.min ?? 0);
    const context = new Context(signal, this.now);
    try {
      const value = await fn(context);
      this.running--;
      this.counts.completed++;
      this.learn(started, context.firstByteAt, undefined, lowLoad);
      resolve(value);
    } catch (error) {
      this.running--;
      this.counts.failed++;
      this.learn(started, context.firstByteAt, error, lowLoad);
      reject(error);
    }
  }

  /**
   * Envoy's gradient controller. First (and every `minRttInterval` samples) the limit is pinned to `min` for
   * `minRttSamples` samples, whose median is the no-load latency (minRTT). Then, once per `window` samples:
   * limit ← limit × clamp(minRTT × (1 + buffer) / p90, 0.5, 2) + √limit. Overload errors cut the limit at once.
   */
  private learn(started: number, firstByteAt: number | undefined, error: unknown, lowLoad: boolean): void {
    const end = this.now();
    const duration = end - started;
    this.avgDurationMs = this.avgDurationMs === 0 ? duration : this.avgDurationMs * 0.9 + duration * 0.1;
    const adaptive = this.adaptive;
    if (adaptive === undefined) return;
    if (error !== undefined) {
      if (adaptive.isOverload(error)) {
        this.setConcurrency(Math.floor(this.concurrency * adaptive.backoffRatio));
        this.samples = [];
      }
      return;
    }
    const sample = (firstByteAt ?? end) - started;
    this.samplesSinceMinRtt++;
    if (this.measuringMinRtt) {
      if (!lowLoad) return;
      this.samples.push(sample);
      if (this.samples.length < adaptive.minRttSamples) return;
      this.minRtt = percentileOf(this.samples, 0.5);
      this.samples = [];
      this.measuringMinRtt = false;
      this.samplesSinceMinRtt = 0;
      this.setConcurrency(this.limitBeforeMinRtt);
      return;
    }
    if (Number.isNaN(this.minRtt) || this.samplesSinceMinRtt >= adaptive.minRttInterval) {
      this.startMinRtt();
      return;
    }
    this.samples.push(sample);
    if (this.samples.length < adaptive.window) return;
    const p90 = percentileOf(this.samples, 0.9);
    this.samples = [];
    const gradient = Math.min(2, Math.max(0.5, (this.minRtt * (1 + adaptive.buffer)) / Math.max(p90, 1e-6)));
    const limit = this.concurrency;
    this.setConcurrency(Math.ceil(limit * gradient + Math.sqrt(limit)));
  }

  private startMinRtt(): void {
    this.measuringMinRtt = true;
    this.samples = [];
    this.limitBeforeMinRtt = this.concurrency;
    this.setConcurrency(this.adaptive!.min);
  }

  private keyLimitFor(key: string): LimitFunction {
    let keyLimit = this.keyLimits.get(key);
    if (keyLimit === undefined) {
      keyLimit = pLimit(this.perKeyConcurrency);
      this.keyLimits.set(key, keyLimit);
    }
    return keyLimit;
  }

  /** Forgets an idle key's limiter, so the map holds only keys with work. */
  private releaseKey(key: string, keyLimit: LimitFunction): void {
    if (keyLimit.activeCount === 0 && keyLimit.pendingCount === 0 && this.keyLimits.get(key) === keyLimit) {
      this.keyLimits.delete(key);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const waiter of [...this.waiters]) {
      this.cancel(waiter, new ClosedError('concurrency limiter'));
    }
  }
}
