// createConcurrencyLimiter: bounded in-flight work on p-limit, a bounded queue with timeouts and aborts, per-key caps,
// and an adaptive limit (Envoy's gradient controller) that finds the upstream's capacity instead of trusting a
// hand-set number.
import pLimit, { type LimitFunction } from 'p-limit';
import {
  ClosedError,
  isQueueFullError,
  isQueueTimeoutError,
  QueueFullError,
  QueueTimeoutError,
  RequestAbortedError,
} from '../errors/index.js';
import { type AbortSignalLike, toAbortSignal } from '../internal/abort.js';
import { numberOption } from '../internal/validate.js';
import { type GiveUp, Waiter } from '../internal/waiter.js';
import { FairQueue } from './fair-queue.js';
import { type ConcurrencyLimiterOptions, type ResolvedAdaptiveOptions, resolveOptions } from './options.js';

export type { AdaptiveOptions, ConcurrencyLimiterOptions } from './options.js';
// The overload errors live in the error family (one base with a status and a Retry-After); re-exported here, where
// they are thrown.
export { isQueueFullError, isQueueTimeoutError, QueueFullError, QueueTimeoutError };

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

/** A task waiting for a slot. */
class QueuedTask extends Waiter {
  cancelled = false;
  /** Fair policy: how it starts when its turn comes. */
  start: (() => void) | undefined = undefined;

  constructor(
    enqueuedAt: number,
    readonly reject: (error: unknown) => void,
    /** Fair policy: its flow and band. */
    readonly key: string,
    readonly priority: number,
  ) {
    super(enqueuedAt);
  }
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
  private readonly fairShareHeadroom: number;
  private readonly keyLimits = new Map<string, LimitFunction>();
  private readonly adaptive: ResolvedAdaptiveOptions | undefined;
  private readonly now: () => number;
  /** Fair policy: the waiting room, the limit, each key's running tasks and its queue cap. */
  private readonly fair: FairQueue<QueuedTask> | undefined;
  private fairConcurrency = 0;
  private readonly runningByKey = new Map<string, number>();
  private readonly maxQueuePerKey: number;
  private waiting = 0;
  /** Tasks inside `fn` now (p-limit's own count lags a microtask behind completions). */
  private running = 0;
  private readonly waiters = new Set<QueuedTask>();
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
    const options = resolveOptions(input);
    this.maxQueue = options.maxQueue;
    this.queueTimeoutMs = options.queueTimeoutMs;
    this.perKeyConcurrency = options.perKeyConcurrency;
    this.fairShareHeadroom = options.fairShareHeadroom;
    this.now = options.now;
    this.adaptive = options.adaptive;
    this.limit = pLimit(options.initial);
    this.maxQueuePerKey = options.maxQueuePerKey;
    if (options.queuePolicy === 'fair') {
      this.fair = new FairQueue<QueuedTask>();
      this.fairConcurrency = options.initial;
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
      const waiter: QueuedTask | undefined = immediate ? undefined : this.enqueue(reject, signal);
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
      if (this.belowFairShare(key)) return start();
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

  /**
   * Every slot is taken (or others wait): a key below its fair share (`concurrency` ÷ keys running, itself included)
   * with nothing of its own waiting starts at once in the headroom, if any is left.
   */
  private belowFairShare(key: string): boolean {
    if (this.fairShareHeadroom === 0 || this.running >= this.fairConcurrency + this.fairShareHeadroom)
      return false;
    if (this.fair!.countOf(key) > 0 || !this.keyMayStart(key)) return false;
    const running = this.runningByKey.get(key) ?? 0;
    const keys = this.runningByKey.size + (running === 0 ? 1 : 0);
    return running < this.fairConcurrency / keys;
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
  ): QueuedTask {
    this.waiting++;
    const waiter = new QueuedTask(this.now(), reject, key, priority);
    this.waiters.add(waiter);
    waiter.watch(this.queueTimeoutMs, signal, this.giveUp);
    return waiter;
  }

  /** A queued task gives up: its queue timeout, or its caller's signal. */
  private readonly giveUp = (waiter: QueuedTask, why: GiveUp): void => {
    if (why === 'timeout') {
      this.counts.rejectedQueueTimeout++;
      this.cancel(waiter, new QueueTimeoutError(this.now() - waiter.enqueuedAt, this.retryAfterSec()));
    } else {
      this.counts.abortedWhileQueued++;
      this.cancel(waiter, new RequestAbortedError({ cause: waiter.abortReason }));
    }
  };

  /** Takes a waiter out of the count at once and answers its caller; its placeholder is skipped when reached. */
  private cancel(waiter: QueuedTask, error: unknown): void {
    if (waiter.cancelled) return;
    waiter.cancelled = true;
    this.fair?.remove(waiter);
    this.release(waiter);
    waiter.reject(error);
  }

  private dequeue(waiter: QueuedTask): void {
    this.release(waiter);
    const waited = this.now() - waiter.enqueuedAt;
    this.counts.queueWaitTotalMs += waited;
    this.counts.queueWaitCount++;
  }

  private release(waiter: QueuedTask): void {
    this.waiting--;
    this.waiters.delete(waiter);
    waiter.stopWatching();
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
