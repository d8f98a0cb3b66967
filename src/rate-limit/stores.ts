// Where rate-limit counts live: this process (memory), the cluster primary (one budget for all workers), or Redis
// (one budget for all hosts, through rate-limiter-flexible).
import cluster, { type Worker } from 'node:cluster';
import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { InvalidOptionError } from '../errors/index.js';
import { MemoryStore, type WindowState } from './memory-store.js';

export interface Store {
  consume(key: string, cost: number): Promise<WindowState> | WindowState;
  reset(key: string): Promise<void> | void;
  close(): Promise<void>;
}

export class LocalStore implements Store {
  readonly memory: MemoryStore;
  constructor(windowSec: number, now: () => number) {
    this.memory = new MemoryStore(windowSec, now);
  }
  consume(key: string, cost: number): WindowState {
    return this.memory.consume(key, cost);
  }
  reset(key: string): void {
    this.memory.reset(key);
  }
  async close(): Promise<void> {
    this.memory.clear();
  }
}

// ── cluster ─────────────────────────────────────────────────────────────────────────────────────────────────────

const TAG = 'vllm-kit:rate-limit';

/** One check: `[id, kind, key, cost]`, kind 0 = consume, 1 = reset. */
type ClusterItem = [id: number, kind: 0 | 1, key: string, cost: number];

/** Every check a worker made in one event-loop turn, in one IPC message. */
interface ClusterBatch {
  [TAG]: 'batch';
  name: string;
  windowSec: number;
  items: ClusterItem[];
}

/** `[id, consumed, resetAt]` for each item of a batch. */
interface ClusterResults {
  [TAG]: 'results';
  results: [id: number, consumed: number, resetAt: number][];
}

interface ClusterWaiter {
  resolve: (state: WindowState) => void;
  reject: (error: Error) => void;
  /** Set when the item's batch is sent: the batch's one timeout, and how many of its items are unanswered. */
  batch?: { timer: NodeJS.Timeout; left: number };
}

/**
 * A worker's store: asks the primary over IPC, which holds the only counts. The checks of one event-loop turn travel
 * as one message and come back as one (under load, many requests arrive per turn: one round trip serves them all).
 */
export class ClusterStore implements Store {
  private nextId = 0;
  private queue: ClusterItem[] = [];
  private flushing: NodeJS.Immediate | undefined;
  private readonly pending = new Map<number, ClusterWaiter>();
  private readonly onMessage = (message: unknown) => {
    const reply = message as ClusterResults | null;
    if (reply === null || typeof reply !== 'object' || reply[TAG] !== 'results') return;
    for (const [id, consumed, resetAt] of reply.results) {
      const waiter = this.pending.get(id);
      if (waiter === undefined) continue;
      this.pending.delete(id);
      if (waiter.batch !== undefined && --waiter.batch.left === 0) clearTimeout(waiter.batch.timer);
      waiter.resolve({ consumed, resetAt });
    }
  };

  constructor(
    private readonly name: string,
    private readonly windowSec: number,
    private readonly timeoutMs: number,
  ) {
    if (!cluster.isWorker) {
      throw new InvalidOptionError(
        'store',
        'Expected `store: "cluster"` in a node:cluster worker (the primary runs serveClusterRateLimits())',
      );
    }
    process.on('message', this.onMessage);
  }

  private ask(kind: 0 | 1, key: string, cost: number): Promise<WindowState> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.queue.push([id, kind, key, cost]);
      this.pending.set(id, { resolve, reject });
      this.flushing ??= setImmediate(this.flush);
    });
  }

  private readonly flush = (): void => {
    this.flushing = undefined;
    const items = this.queue;
    this.queue = [];
    // Rejects the batch's items that are still unanswered.
    const fail = (error: Error) => {
      for (const [id] of items) {
        const waiter = this.pending.get(id);
        if (waiter === undefined) continue;
        this.pending.delete(id);
        waiter.reject(error);
      }
    };
    const timer = setTimeout(
      () => fail(new Error(`the cluster primary did not answer within ${this.timeoutMs} ms`)),
      this.timeoutMs,
    );
    timer.unref();
    const batch = { timer, left: items.length };
    for (const [id] of items) this.pending.get(id)!.batch = batch;
    const message: ClusterBatch = { [TAG]: 'batch', name: this.name, windowSec: this.windowSec, items };
    process.send!(message, undefined, undefined, (error) => {
      if (error) {
        clearTimeout(timer);
        fail(error);
      }
    });
  };

  consume(key: string, cost: number): Promise<WindowState> {
    return this.ask(0, key, cost);
  }

  async reset(key: string): Promise<void> {
    await this.ask(1, key, 0);
  }

  async close(): Promise<void> {
    process.off('message', this.onMessage);
    if (this.flushing !== undefined) clearImmediate(this.flushing);
    this.flushing = undefined;
    this.queue = [];
    for (const [id, waiter] of this.pending) {
      if (waiter.batch !== undefined) clearTimeout(waiter.batch.timer);
      waiter.reject(new Error('the rate limiter was closed'));
      this.pending.delete(id);
    }
  }
}

/**
 * Runs in the cluster primary: holds the counts of every `store: 'cluster'` rate limiter of every worker, so all
 * workers share one budget. Call it once in the primary, before or after forking.
 */
export function serveClusterRateLimits(options: { now?: () => number } = {}): { close(): void } {
  if (!cluster.isPrimary) throw new Error('serveClusterRateLimits() runs in the cluster primary');
  const now = options.now ?? Date.now;
  const stores = new Map<string, MemoryStore>();
  const onMessage = (worker: Worker, message: unknown) => {
    const batch = message as ClusterBatch | null;
    if (batch === null || typeof batch !== 'object' || batch[TAG] !== 'batch') return;
    const storeKey = `${batch.name}\u0000${batch.windowSec}`;
    let store = stores.get(storeKey);
    if (store === undefined) {
      store = new MemoryStore(batch.windowSec, now);
      stores.set(storeKey, store);
    }
    const results: ClusterResults['results'] = [];
    for (const [id, kind, key, cost] of batch.items) {
      if (kind === 0) {
        const state = store.consume(key, cost);
        results.push([id, state.consumed, state.resetAt]);
      } else {
        store.reset(key);
        results.push([id, 0, now()]);
      }
    }
    if (worker.isConnected()) worker.send({ [TAG]: 'results', results } satisfies ClusterResults);
  };
  cluster.on('message', onMessage);
  return {
    close() {
      cluster.off('message', onMessage);
      stores.clear();
    },
  };
}

// ── Redis ───────────────────────────────────────────────────────────────────────────────────────────────────────

export class RedisStore implements Store {
  private readonly limiter: RateLimiterRedis;

  constructor(
    client: unknown,
    name: string,
    points: number,
    windowSec: number,
    private readonly now: () => number,
  ) {
    this.limiter = new RateLimiterRedis({
      storeClient: client,
      keyPrefix: `vllm-kit:rl:${name}`,
      points,
      duration: windowSec,
      // Fail fast while Redis is down, so the insurance (or the fail-open/closed policy) answers at once.
      rejectIfRedisNotReady: true,
    });
  }

  async consume(key: string, cost: number): Promise<WindowState> {
    try {
      const res = await this.limiter.consume(key, cost);
      return { consumed: res.consumedPoints, resetAt: this.now() + res.msBeforeNext };
    } catch (outcome) {
      // Over the limit is an answer, not a failure.
      if (outcome instanceof RateLimiterRes) {
        return { consumed: outcome.consumedPoints, resetAt: this.now() + outcome.msBeforeNext };
      }
      throw outcome;
    }
  }

  async reset(key: string): Promise<void> {
    await this.limiter.delete(key);
  }

  async close(): Promise<void> {}
}
