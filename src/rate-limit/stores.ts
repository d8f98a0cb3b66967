// Where rate-limit counts live: this process (memory), the cluster primary (one budget for all workers), or Redis
// (one budget for all hosts, through rate-limiter-flexible).
import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import type { ClusterCaller } from '../internal/cluster-rpc.js';
import { clusterCaller, serveClusterStates } from '../internal/shared-store.js';
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

const CHANNEL = 'vllm-kit:rate-limit';

/** One check: `[name, windowSec, kind, key, cost]`, kind 0 = consume, 1 = reset. */
type ClusterCall = [name: string, windowSec: number, kind: 0 | 1, key: string, cost: number];

/** A worker's store: asks the primary over IPC, which holds the only counts. */
export class ClusterStore implements Store {
  private readonly caller: ClusterCaller<ClusterCall, [consumed: number, resetAt: number]>;

  constructor(
    private readonly name: string,
    private readonly windowSec: number,
    timeoutMs: number,
  ) {
    this.caller = clusterCaller(CHANNEL, timeoutMs);
  }

  async consume(key: string, cost: number): Promise<WindowState> {
    const [consumed, resetAt] = await this.caller.call([this.name, this.windowSec, 0, key, cost]);
    return { consumed, resetAt };
  }

  async reset(key: string): Promise<void> {
    await this.caller.call([this.name, this.windowSec, 1, key, 0]);
  }

  async close(): Promise<void> {
    this.caller.close('rate limiter');
  }
}

/**
 * Runs in the cluster primary: holds the counts of every `store: 'cluster'` rate limiter of every worker, so all
 * workers share one budget. `serveCluster()` starts it with the other pieces' servers.
 * @deprecated Call `serveCluster()` once in the primary; this name stays for one release.
 */
export function serveClusterRateLimits(options: { now?: () => number } = {}): { close(): void } {
  const now = options.now ?? Date.now;
  return serveClusterStates<ClusterCall, [number, number], MemoryStore>({
    fn: 'serveClusterRateLimits',
    channel: CHANNEL,
    stateKey: ([name, windowSec]) => `${name}\u0000${windowSec}`,
    make: ([, windowSec]) => new MemoryStore(windowSec, now),
    handle(store, [, , kind, key, cost]) {
      if (kind === 1) {
        store.reset(key);
        return [0, now()];
      }
      const state = store.consume(key, cost);
      return [state.consumed, state.resetAt];
    },
  });
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
