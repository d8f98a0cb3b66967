// Calls from cluster workers to the primary over IPC, batched: every call a worker makes in one event-loop turn
// travels as one message and comes back as one (under load many requests arrive per turn, so one round trip serves
// them all). The rate limiter's and the key budgets' `store: 'cluster'` both use it; each names its own channel.

import cluster, { type Worker } from 'node:cluster';
import { ClosedError, StoreUnavailableError } from '../errors/index.js';

/** One batch: `[id, payload]` per call. */
interface Batch<P> {
  tag: string;
  kind: 'batch';
  items: [id: number, payload: P][];
}

/** `[id, result]` for each call of a batch. */
interface Results<R> {
  tag: string;
  kind: 'results';
  results: [id: number, result: R][];
}

interface Waiter<R> {
  resolve: (result: R) => void;
  reject: (error: Error) => void;
  /** Set when the call's batch is sent: the batch's one timeout, and how many of its calls are unanswered. */
  batch?: { timer: NodeJS.Timeout; left: number };
}

const ignore = () => {};

export function isMessage(message: unknown, tag: string, kind: string): boolean {
  const m = message as { tag?: unknown; kind?: unknown } | null;
  return typeof m === 'object' && m !== null && m.tag === tag && m.kind === kind;
}

/** The worker's side of a channel: `call()` resolves with the primary's answer, or rejects after `timeoutMs`. */
export class ClusterCaller<P, R> {
  private nextId = 0;
  private queue: [number, P][] = [];
  private flushing: NodeJS.Immediate | undefined;
  private readonly pending = new Map<number, Waiter<R>>();
  private readonly onMessage = (message: unknown) => {
    if (!isMessage(message, this.tag, 'results')) return;
    for (const [id, result] of (message as Results<R>).results) {
      const waiter = this.pending.get(id);
      if (waiter === undefined) continue;
      this.pending.delete(id);
      if (waiter.batch !== undefined && --waiter.batch.left === 0) clearTimeout(waiter.batch.timer);
      waiter.resolve(result);
    }
  };

  constructor(
    private readonly tag: string,
    private readonly timeoutMs: number,
  ) {
    process.on('message', this.onMessage);
  }

  call(payload: P): Promise<R> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.queue.push([id, payload]);
      this.pending.set(id, { resolve, reject });
      this.flushing ??= setImmediate(this.flush);
    });
  }

  private readonly flush = (): void => {
    this.flushing = undefined;
    const items = this.queue;
    this.queue = [];
    // Rejects the batch's calls that are still unanswered.
    const fail = (error: Error) => {
      for (const [id] of items) {
        const waiter = this.pending.get(id);
        if (waiter === undefined) continue;
        this.pending.delete(id);
        waiter.reject(error);
      }
    };
    const timer = setTimeout(
      () => fail(new StoreUnavailableError(`The cluster primary did not answer within ${this.timeoutMs} ms`)),
      this.timeoutMs,
    );
    timer.unref();
    const batch = { timer, left: items.length };
    for (const [id] of items) this.pending.get(id)!.batch = batch;
    const message: Batch<P> = { tag: this.tag, kind: 'batch', items };
    process.send!(message, undefined, undefined, (error) => {
      if (error) {
        clearTimeout(timer);
        fail(new StoreUnavailableError('The cluster primary could not be reached', { cause: error }));
      }
    });
  };

  /** Rejects every call still waiting with a ClosedError naming `piece`. */
  close(piece: string): void {
    process.off('message', this.onMessage);
    if (this.flushing !== undefined) clearImmediate(this.flushing);
    this.flushing = undefined;
    this.queue = [];
    for (const [id, waiter] of this.pending) {
      if (waiter.batch !== undefined) clearTimeout(waiter.batch.timer);
      waiter.reject(new ClosedError(piece));
      this.pending.delete(id);
    }
  }
}

/**
 * The primary's side of a channel: answers every worker's batches with `handle`, called once per call in arrival
 * order (so a sequence of checks is decided exactly as one process would decide it). A call `handle` answers with a
 * promise (one that must wait for other workers, say) is answered on its own when it settles; the rest of its batch
 * at once.
 */
export function serveClusterChannel<P, R>(
  tag: string,
  handle: (payload: P, worker: Worker) => R | Promise<R>,
): { close(): void } {
  const send = (worker: Worker, results: [number, R][]) => {
    if (worker.isConnected()) worker.send({ tag, kind: 'results', results } satisfies Results<R>);
  };
  const onMessage = (worker: Worker, message: unknown) => {
    if (!isMessage(message, tag, 'batch')) return;
    const results: [number, R][] = [];
    for (const [id, payload] of (message as Batch<P>).items) {
      const result = handle(payload, worker);
      // A deferred answer that fails is left to the worker's timeout (its store's outage policy answers).
      if (result instanceof Promise) result.then((late) => send(worker, [[id, late]]), ignore);
      else results.push([id, result]);
    }
    if (results.length > 0) send(worker, results);
  };
  cluster.on('message', onMessage);
  return {
    close() {
      cluster.off('message', onMessage);
    },
  };
}
