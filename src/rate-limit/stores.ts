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

interface ClusterRequest {
  [TAG]: 'consume' | 'reset';
  id: number;
  name: string;
  windowSec: number;
  key: string;
  cost: number;
}

interface ClusterReply {
  [TAG]: 'result';
  id: number;
  consumed: number;
  resetAt: number;
}

/** A worker's store: asks the primary over IPC, which holds the only counts. */
export class ClusterStore implements Store {
  private nextId = 0;
  private readonly pending = new Map<
    number,
    { resolve: (state: WindowState) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }
  >();
  private readonly onMessage = (message: unknown) => {
    const reply = message as ClusterReply | null;
    if (reply === null || typeof reply !== 'object' || reply[TAG] !== 'result') return;
    const waiter = this.pending.get(reply.id);
    if (waiter === undefined) return;
    this.pending.delete(reply.id);
    clearTimeout(waiter.timer);
    waiter.resolve({ consumed: reply.consumed, resetAt: reply.resetAt });
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

  private ask(kind: 'consume' | 'reset', key: string, cost: number): Promise<WindowState> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`the cluster primary did not answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      timer.unref();
      this.pending.set(id, { resolve, reject, timer });
      const request: ClusterRequest = {
        [TAG]: kind,
        id,
        name: this.name,
        windowSec: this.windowSec,
        key,
        cost,
      };
      process.send!(request, undefined, undefined, (error) => {
        if (error && this.pending.delete(id)) {
          clearTimeout(timer);
          reject(error);
        }
      });
    });
  }

  consume(key: string, cost: number): Promise<WindowState> {
    return this.ask('consume', key, cost);
  }

  async reset(key: string): Promise<void> {
    await this.ask('reset', key, 0);
  }

  async close(): Promise<void> {
    process.off('message', this.onMessage);
    for (const [id, waiter] of this.pending) {
      clearTimeout(waiter.timer);
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
    const request = message as ClusterRequest | null;
    if (
      request === null ||
      typeof request !== 'object' ||
      (request[TAG] !== 'consume' && request[TAG] !== 'reset')
    ) {
      return;
    }
    const storeKey = `${request.name}\u0000${request.windowSec}`;
    let store = stores.get(storeKey);
    if (store === undefined) {
      store = new MemoryStore(request.windowSec, now);
      stores.set(storeKey, store);
    }
    let state: WindowState = { consumed: 0, resetAt: now() };
    if (request[TAG] === 'consume') state = store.consume(request.key, request.cost);
    else store.reset(request.key);
    const reply: ClusterReply = { [TAG]: 'result', id: request.id, ...state };
    if (worker.isConnected()) worker.send(reply);
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
