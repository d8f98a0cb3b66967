// Local leases of a key's budget, for `store: 'cluster'`: a worker admitting a request for a key with room to spare
// is granted a slice of the key's window (1/64 of each limit) by the primary, counted there as used, and admits,
// charges and refunds that key's next requests against it with no round trip; what it did not use goes back when the
// slice runs out, when the window ends, or when the primary recalls it. At the window's edge the primary, about to
// refuse a request while slices are out, recalls them, waits for them, and decides again — with no more slices for
// that key until its window ends — so a key is admitted exactly as many requests and tokens as without leases.
import type { Worker } from 'node:cluster';
import { type BudgetState, NO_LIMIT } from './stores.js';

/** The share of each limit one lease holds. */
const LEASE_SHARE = 1 / 64;
/** Fewer requests than this in a slice are not worth a lease: the key is admitted request by request. */
const MIN_LEASE_REQUESTS = 2;
/** Requests in one lease for a key with no request limit (counted for the window, never refused). */
const UNLIMITED_LEASE_REQUESTS = 1024;
/** The longest the primary waits for recalled leases before deciding with what came back. */
export const RECALL_TIMEOUT_MS = 200;

/** A slice of a key's window: requests and tokens (NO_LIMIT: the key has no token limit). */
export interface LeaseGrant {
  requests: number;
  tokens: number;
}

/**
 * What the primary grants after admitting a request (whose reservation is `reserve`), given the window's counts
 * (this request included): undefined when the key's limits are too small for slices, or too little is left.
 */
export function leaseFor(
  requestLimit: number,
  tokenLimit: number,
  requests: number,
  tokens: number,
  reserve: number,
): LeaseGrant | undefined {
  const leaseRequests =
    requestLimit === NO_LIMIT
      ? UNLIMITED_LEASE_REQUESTS
      : Math.min(Math.floor(requestLimit * LEASE_SHARE), requestLimit - requests);
  if (leaseRequests < MIN_LEASE_REQUESTS) return undefined;
  if (tokenLimit === NO_LIMIT) return { requests: leaseRequests, tokens: NO_LIMIT };
  const leaseTokens = Math.min(Math.floor(tokenLimit * LEASE_SHARE), tokenLimit - tokens);
  // A slice that holds fewer than two requests like this one saves nothing.
  if (leaseTokens < 2 * Math.max(1, reserve)) return undefined;
  return { requests: leaseRequests, tokens: leaseTokens };
}

/** A worker's lease of one key's window. */
export interface Lease {
  requestLimit: number;
  tokenLimit: number;
  /** Requests and tokens left in the slice (tokens: Infinity without a token limit). */
  requests: number;
  tokens: number;
  window: number;
  resetAt: number;
  /** The window's counts at the primary when granted, the slice included: what the decisions' remainders start from. */
  countedRequests: number;
  countedTokens: number;
}

export function leaseOf(
  grant: LeaseGrant,
  requestLimit: number,
  tokenLimit: number,
  state: BudgetState,
): Lease {
  return {
    requestLimit,
    tokenLimit,
    requests: grant.requests,
    tokens: grant.tokens === NO_LIMIT ? Number.POSITIVE_INFINITY : grant.tokens,
    window: state.window,
    resetAt: state.resetAt,
    countedRequests: state.requests,
    countedTokens: state.tokens,
  };
}

/** The state of a key's window as this worker sees it through its lease: the primary's count less what is left here. */
export function leasedState(lease: Lease, admitted: boolean, reserved: number): BudgetState {
  return {
    admitted,
    requests: lease.countedRequests - lease.requests,
    tokens: Number.isFinite(lease.tokens) ? lease.countedTokens - lease.tokens : lease.countedTokens,
    resetAt: lease.resetAt,
    window: lease.window,
    reserved,
  };
}

interface Holder {
  worker: Worker;
  holder: number;
  /** The budget's key (the ledger's own keys name the budgets instance too). */
  key: string;
  window: number;
  resetAt: number;
}

/**
 * The primary's record of the leases out: by key, the holders (a worker's budgets instance) and their window. An
 * admission about to be refused while leases are out waits for them (`recall`).
 */
export class LeaseLedger {
  private readonly out = new Map<string, Map<string, Holder>>();
  private readonly recalls = new Map<string, { promise: Promise<void>; done: () => void }>();
  private sweepAt = 1024;

  constructor(
    private readonly now: () => number,
    private readonly sendRecall: (holder: Holder) => void,
  ) {}

  granted(
    key: string,
    budgetKey: string,
    worker: Worker,
    holder: number,
    window: number,
    resetAt: number,
  ): void {
    let holders = this.out.get(key);
    if (holders === undefined) {
      if (this.out.size >= this.sweepAt) this.sweep();
      holders = new Map();
      this.out.set(key, holders);
    }
    holders.set(`${worker.id}:${holder}`, { worker, holder, key: budgetKey, window, resetAt });
  }

  released(key: string, worker: Worker, holder: number): void {
    const holders = this.out.get(key);
    if (holders === undefined) return;
    holders.delete(`${worker.id}:${holder}`);
    if (holders.size === 0) this.settle(key);
  }

  /** True when leases of the key's `window` are out. */
  has(key: string, window: number): boolean {
    const holders = this.out.get(key);
    if (holders === undefined) return false;
    for (const holder of holders.values()) if (holder.window === window) return true;
    return false;
  }

  /**
   * Asks every holder of the key's leases to give back what it has not used; resolves once all have (or after
   * RECALL_TIMEOUT_MS: what did not come back then stays counted as used).
   */
  recall(key: string): Promise<void> {
    const pending = this.recalls.get(key);
    if (pending !== undefined) return pending.promise;
    let done!: () => void;
    const promise = new Promise<void>((resolve) => (done = resolve));
    const timer = setTimeout(() => this.settle(key), RECALL_TIMEOUT_MS);
    timer.unref();
    this.recalls.set(key, {
      promise,
      done: () => {
        clearTimeout(timer);
        done();
      },
    });
    for (const holder of this.out.get(key)?.values() ?? []) this.sendRecall(holder);
    return promise;
  }

  /** Takes back every lease of the key at once, waiting for none (its window was reset). */
  revoke(key: string): void {
    for (const holder of this.out.get(key)?.values() ?? []) this.sendRecall(holder);
    this.out.delete(key);
    this.settle(key);
  }

  /** A worker exited: its leases are gone (what it used of them stays counted). */
  forget(worker: Worker): void {
    for (const [key, holders] of this.out) {
      for (const [id, holder] of holders) if (holder.worker === worker) holders.delete(id);
      if (holders.size === 0) this.settle(key);
    }
  }

  clear(): void {
    for (const key of [...this.recalls.keys()]) this.settle(key);
    this.out.clear();
  }

  private settle(key: string): void {
    const holders = this.out.get(key);
    if (holders !== undefined && holders.size === 0) this.out.delete(key);
    const recall = this.recalls.get(key);
    if (recall === undefined) return;
    this.recalls.delete(key);
    this.out.delete(key);
    recall.done();
  }

  /** Drops the leases of windows that have ended (a holder that never came back). */
  private sweep(): void {
    const now = this.now();
    for (const [key, holders] of this.out) {
      for (const [id, holder] of holders) if (holder.resetAt <= now) holders.delete(id);
      if (holders.size === 0) this.out.delete(key);
    }
    this.sweepAt = Math.max(1024, this.out.size * 2);
  }
}
