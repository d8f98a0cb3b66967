// The shared-store layer of the pieces that count across processes (the rate limiter, the key budgets, the permit
// pool): one way to pick where counts live (this process, the cluster primary, Redis), one worker-side caller and one
// primary-side server for the cluster, one outage policy, and one two-generation window map for in-memory counts.
import cluster, { type Worker } from 'node:cluster';
import { InvalidOptionError, NotClusterPrimaryError } from '../errors/index.js';
import { ClusterCaller, serveClusterChannel } from './cluster-rpc.js';

/** Where a piece keeps its counts: `'memory'` (this process), `'cluster'` (the primary), or a Redis client. */
export type SharedStoreChoice<R> = 'memory' | 'cluster' | R;

/** Builds the store a piece's `store` option names: one of three makers, the same choice for every piece. */
export function chooseStore<R, S>(
  store: SharedStoreChoice<R>,
  makers: { memory(): S; cluster(): S; redis(client: R): S },
): S {
  if (store === 'memory') return makers.memory();
  if (store === 'cluster') return makers.cluster();
  return makers.redis(store as R);
}

/**
 * A worker's caller to the primary on `channel`. Refuses (at construction, naming the option) outside a node:cluster
 * worker: there `'cluster'` has no primary to ask.
 */
export function clusterCaller<P, R>(channel: string, timeoutMs: number): ClusterCaller<P, R> {
  if (!cluster.isWorker) {
    throw new InvalidOptionError(
      'store',
      'Expected `store: "cluster"` in a node:cluster worker (the primary runs serveCluster())',
    );
  }
  return new ClusterCaller<P, R>(channel, timeoutMs);
}

/**
 * The primary's side of a piece's cluster store: one state per `stateKey` (a piece's name and window, say), made on
 * first use, every worker's calls answered in arrival order. `fn` names the public function (for the error outside
 * the primary); `onWorkerExit` frees what a dead worker held.
 */
export function serveClusterStates<P, R, S>(options: {
  fn: string;
  channel: string;
  stateKey(payload: P): string;
  make(payload: P): S;
  handle(state: S, payload: P, worker: Worker): R | Promise<R>;
  onWorkerExit?(states: ReadonlyMap<string, S>, worker: Worker): void;
}): { close(): void } {
  if (!cluster.isPrimary) throw new NotClusterPrimaryError(options.fn);
  const states = new Map<string, S>();
  const channel = serveClusterChannel<P, R>(options.channel, (payload, worker) => {
    const key = options.stateKey(payload);
    let state = states.get(key);
    if (state === undefined) {
      state = options.make(payload);
      states.set(key, state);
    }
    return options.handle(state, payload, worker);
  });
  const onExit =
    options.onWorkerExit === undefined
      ? undefined
      : (worker: Worker) => options.onWorkerExit!(states, worker);
  if (onExit !== undefined) cluster.on('exit', onExit);
  return {
    close() {
      channel.close();
      if (onExit !== undefined) cluster.off('exit', onExit);
      states.clear();
    },
  };
}

/**
 * The outage policy every shared store follows: while the store fails, each process counts its share of a limit
 * (`share`) in an insurance store of its own; once the store answers again, what was counted meanwhile is handed to it
 * (`reconcile`, once, however many calls wait for it) before any new decision there, so a store restarted empty does
 * not admit the whole limit again.
 */
export class StoreOutage {
  /** The store failed since its last success. */
  degraded = false;
  private reconciling: Promise<void> | undefined;

  constructor(
    /** Processes sharing the limit (each may use its share while the store is down). */
    private readonly processes: number,
    /** Hands what was counted during the outage to the store; rejects (keeping the rest) when it fails again. */
    private readonly handOver: () => Promise<void>,
  ) {}

  /** This process's share of `limit` while the store is down: ÷ processes, at least 1. */
  share(limit: number): number {
    return Math.max(1, Math.floor(limit / this.processes));
  }

  failed(): void {
    this.degraded = true;
  }

  /** Before asking the store after an outage: the hand-over, once. Rejects when the store is still failing. */
  recover(): Promise<void> {
    this.reconciling ??= this.handOver().then(
      () => {
        this.degraded = false;
        this.reconciling = undefined;
      },
      (error: unknown) => {
        this.reconciling = undefined;
        throw error;
      },
    );
    return this.reconciling;
  }
}

/**
 * Counts by key that expire a window after they start, without a timer per key or a sweep: two Maps, the current
 * generation and the previous one; a key created in one generation has expired before the next-but-one begins, so
 * a rotation drops the previous generation whole. A generation lasts a window plus a second (resets rounded up to
 * the second stay inside it). The stores read and write `current` and `previous` directly: this is their hot path.
 */
export class GenerationMap<V> {
  current = new Map<string, V>();
  previous = new Map<string, V>();
  private endsAt: number;
  private readonly generationMs: number;

  constructor(windowMs: number, now: number) {
    this.generationMs = windowMs + 1000;
    this.endsAt = now + this.generationMs;
  }

  /** Rotates when a generation has ended (several at once after a quiet spell). Call before each lookup. */
  tick(now: number): void {
    if (now < this.endsAt) return;
    const generations = Math.floor((now - this.endsAt) / this.generationMs) + 1;
    this.previous = generations === 1 ? this.current : new Map();
    this.current = new Map();
    this.endsAt += generations * this.generationMs;
  }

  get(key: string): V | undefined {
    return this.current.get(key) ?? this.previous.get(key);
  }

  delete(key: string): void {
    this.current.delete(key);
    this.previous.delete(key);
  }

  get size(): number {
    return this.current.size + this.previous.size;
  }

  clear(): void {
    this.current.clear();
    this.previous.clear();
  }
}
