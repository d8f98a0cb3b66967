// createPermitPool: one limit on in-flight upstream requests per resource (a vLLM replica), shared by every worker of
// a host (the cluster primary) and every host (Redis). Permits are leases: renewed while held, returned on release,
// and — should a process die holding them — expired by Redis within the lease time (the primary returns a dead
// worker's at once). A store outage falls back to a local share of the limit instead of failing requests.
import {
  ClosedError,
  isPermitTimeoutError,
  PermitTimeoutError,
  RequestAbortedError,
} from '../errors/index.js';
import type { AbortSignalLike } from '../internal/abort.js';
import { chooseStore } from '../internal/shared-store.js';
import { type GiveUp, Waiter } from '../internal/waiter.js';
import { type PermitPoolOptions, resolveOptions } from './options.js';
import {
  ClusterPermitStore,
  MemoryPermitStore,
  type PermitStore,
  type RedisPermitClient,
  RedisPermitStore,
} from './stores.js';

export type { PermitPoolOptions } from './options.js';
export { serveClusterPermits } from './stores.js';
// In the error family (one overload base with a status and a Retry-After); re-exported where it is thrown.
export { isPermitTimeoutError, PermitTimeoutError };

export interface AcquireOptions {
  /** Gives up waiting (RequestAbortedError). */
  signal?: AbortSignalLike;
  /** Longest wait, ms (PermitTimeoutError). @default no limit */
  timeoutMs?: number;
}

/** A held permit: call `release()` once the upstream request is over (calling it again does nothing). */
export interface Permit {
  readonly resource: string;
  release(): void;
}

export interface PermitPoolStats {
  permits: number;
  /** Held by this process, all resources. */
  held: number;
  /** Waiting in this process, all resources. */
  waiting: number;
  /** Every resource this process has asked for (at 0 when idle). */
  byResource: Record<string, { held: number; waiting: number }>;
  /** The store is failing: the `onStoreError` policy is in force. */
  degraded: boolean;
  /** Processes last seen sharing the pool (Redis; 1 otherwise). */
  members: number;
  /** Permits per resource this process may hold while degraded. */
  share: number;
  acquired: number;
  /** Granted by the fallback policy while the store was failing. */
  fallbackAcquired: number;
  timedOut: number;
  aborted: number;
}

export interface PermitPool {
  acquire(resource: string, options?: AcquireOptions): Promise<Permit>;
  stats(): PermitPoolStats;
  /** Rejects every waiting acquire; permits held stay valid until released. */
  close(): Promise<void>;
}

/**
 * Creates a pool of permits for in-flight upstream requests, one limit per resource.
 *
 * @example
 * const pool = createPermitPool({ permits: 64, store: redis });
 * const permit = await pool.acquire('http://vllm-1:8000', { signal, timeoutMs: 30_000 });
 * try { await callUpstream(); } finally { permit.release(); }
 */
export function createPermitPool(options: PermitPoolOptions): PermitPool {
  return new Pool(options);
}

class PermitWaiter extends Waiter {
  constructor(
    readonly resource: string,
    readonly resolve: (permit: Permit) => void,
    readonly reject: (error: unknown) => void,
  ) {
    super(performance.now());
  }
}

interface Resource {
  waiters: PermitWaiter[];
  /** Leases held by this process (`local:` ones were granted by the fallback policy). */
  leases: Set<string>;
  /** An acquire is on its way to the store (one at a time per resource). */
  asking: boolean;
  poll: NodeJS.Timeout | undefined;
  /** At the store's last answer: permits held by every process, and by this one (for the outage cap). */
  seenGlobal: number | undefined;
  seenHeld: number;
}

let localSeq = 0;
/** Answered instead of a lease while the store settles after an outage. */
const SETTLING = '\u0000settling';
/** Leases granted while the store failed: unique across processes, so the store can take them in once it is back. */
const LOCAL_PREFIX = `local:${process.pid}.${Math.random().toString(36).slice(2, 8)}.`;

class Pool implements PermitPool {
  private readonly permits: number;
  private readonly store: PermitStore;
  private readonly shared: boolean;
  private readonly pollMs: number;
  private readonly onStoreError: 'insurance' | 'open' | 'closed';
  private readonly resources = new Map<string, Resource>();
  private readonly renewTimer: NodeJS.Timeout | undefined;
  private degraded = false;
  /**
   * Back from an outage (maybe restarted empty), the store learns every process's leases at its renewal (each renews
   * every `renewEveryMs`): until it counts as many members as before, this process keeps to its outage cap instead of
   * asking the store for new permits.
   */
  private settleUntil = 0;
  /** The members the store must count again (every process renewed) before settling ends. */
  private settleMembers = 0;
  private readonly renewEveryMs: number;
  private readonly leaseMs: number;
  private members = 1;
  /** The processes the caller says share the pool (a floor for `members`, which Redis counts). */
  private readonly processes: number;
  /** Leases released while a renewal is in flight (it may have added them back). */
  private releasedWhileRenewing: [string, string][] | undefined;
  private closed = false;
  private readonly counts = { acquired: 0, fallbackAcquired: 0, timedOut: 0, aborted: 0 };

  constructor(input: PermitPoolOptions) {
    const { permits, store, name, onStoreError, storeTimeoutMs, leaseMs, pollMs, processes } =
      resolveOptions(input);
    this.permits = permits;
    this.processes = processes;
    this.onStoreError = onStoreError;
    this.pollMs = pollMs;
    this.store = chooseStore<RedisPermitClient, PermitStore>(store, {
      memory: () => new MemoryPermitStore(),
      cluster: () => new ClusterPermitStore(name, storeTimeoutMs),
      redis: (client) => new RedisPermitStore(client, name, leaseMs),
    });
    this.shared = store !== 'memory';
    this.renewEveryMs = Math.max(50, Math.floor(leaseMs / 3));
    this.leaseMs = leaseMs;
    if (this.store.renew !== undefined) {
      this.renewTimer = setInterval(() => void this.renew(), this.renewEveryMs);
      this.renewTimer.unref();
      void this.renew();
    }
  }

  private resource(name: string): Resource {
    let resource = this.resources.get(name);
    if (resource === undefined) {
      resource = {
        waiters: [],
        leases: new Set(),
        asking: false,
        poll: undefined,
        seenGlobal: undefined,
        seenHeld: 0,
      };
      this.resources.set(name, resource);
    }
    return resource;
  }

  /** Permits per resource this process may hold while the store fails. */
  private get share(): number {
    return Math.max(1, Math.floor(this.permits / Math.max(1, this.members, this.processes)));
  }

  acquire(name: string, options?: AcquireOptions): Promise<Permit> {
    if (this.closed) return Promise.reject(new ClosedError('permit pool'));
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(new RequestAbortedError({ cause: signal.reason }));
    const resource = this.resource(name);
    return new Promise<Permit>((resolve, reject) => {
      const waiter = new PermitWaiter(name, resolve, reject);
      waiter.watch(options?.timeoutMs ?? 0, signal, this.giveUp);
      resource.waiters.push(waiter);
      this.pump(name, resource);
    });
  }

  /** A waiter gives up (its timeout, its signal): out of the line, answered. */
  private readonly giveUp = (waiter: PermitWaiter, why: GiveUp): void => {
    const resource = this.resources.get(waiter.resource);
    const at = resource === undefined ? -1 : resource.waiters.indexOf(waiter);
    if (at === -1) return;
    resource!.waiters.splice(at, 1);
    const reason = waiter.abortReason;
    waiter.stopWatching();
    if (why === 'timeout') {
      this.counts.timedOut++;
      waiter.reject(new PermitTimeoutError(performance.now() - waiter.enqueuedAt, waiter.resource));
    } else {
      this.counts.aborted++;
      waiter.reject(new RequestAbortedError({ cause: reason }));
    }
  };

  /**
   * What this process may hold of a resource while the store fails. When the store's last answer said how many every
   * process held: what this one held then, plus its part of what was free (free ÷ processes) — the others held the
   * rest, so together they stay within the limit however unevenly the permits were spread when the store failed.
   * Otherwise its share (permits ÷ processes).
   */
  private outageCap(resource: Resource): number {
    if (resource.seenGlobal === undefined) return this.share;
    const processes = Math.max(1, this.members, this.processes);
    return resource.seenHeld + Math.floor(Math.max(0, this.permits - resource.seenGlobal) / processes);
  }

  /** Asks the store for permits for the resource's waiters, first come first served, while it grants them. */
  private pump(name: string, resource: Resource): void {
    if (resource.asking || resource.waiters.length === 0 || this.closed) return;
    if (resource.poll !== undefined) {
      clearTimeout(resource.poll);
      resource.poll = undefined;
    }
    resource.asking = true;
    let pending: Promise<string | undefined> | string | undefined;
    try {
      // Back from an outage: the leases held meanwhile are registered again before anything new is granted (a
      // store that restarted empty would otherwise grant the whole limit again on top of them).
      if (this.degraded && this.store.renew !== undefined) {
        const expected = Math.max(this.members, this.processes);
        pending = this.renew(true).then(() => {
          this.degraded = false;
          // Until every process sharing the pool has renewed (registering its leases), at most two leases long.
          if (this.members < expected) {
            this.settleUntil = performance.now() + 2 * this.leaseMs;
            this.settleMembers = expected;
          }
          return this.settleUntil > performance.now() ? SETTLING : this.store.tryAcquire(name, this.permits);
        });
      } else if (this.settleUntil > performance.now()) pending = SETTLING;
      else pending = this.store.tryAcquire(name, this.permits);
    } catch (error) {
      pending = Promise.reject(error);
    }
    const answered = (lease: string | undefined) => {
      if (lease === SETTLING) return local(false);
      resource.asking = false;
      this.degraded = false;
      resource.seenGlobal = this.store.lastCount?.(name);
      resource.seenHeld = resource.leases.size + (lease === undefined ? 0 : 1);
      if (lease === undefined) return this.wait(name, resource);
      this.grant(name, resource, lease);
    };
    /** The store failed (or is settling after an outage): this process's cap, held locally. */
    const local = (failing: boolean) => {
      resource.asking = false;
      if (failing) this.degraded = true;
      // Every lease this process holds counts against its share (those granted before the outage are still in
      // flight): the processes together stay within the limit.
      const fallback =
        this.onStoreError === 'open' ||
        (this.onStoreError === 'insurance' && resource.leases.size < this.outageCap(resource));
      if (!fallback) return this.wait(name, resource);
      this.counts.fallbackAcquired++;
      const lease = `${LOCAL_PREFIX}${localSeq++}`;
      // Settling (the store answers again): the lease is registered there at once, so processes that no longer
      // settle count it.
      if (!failing) void this.store.renew?.([[name, lease]]).catch(() => {});
      this.grant(name, resource, lease);
    };
    const failed = () => local(true);
    if (pending instanceof Promise) pending.then(answered, failed);
    else answered(pending);
  }

  /** Hands a lease to the first waiter (or gives it back when nobody waits any more), then asks again. */
  private grant(name: string, resource: Resource, lease: string): void {
    const waiter = resource.waiters.shift();
    if (waiter === undefined) {
      this.releaseToStore(name, lease);
      return;
    }
    waiter.stopWatching();
    resource.leases.add(lease);
    this.counts.acquired++;
    let released = false;
    waiter.resolve({
      resource: name,
      release: () => {
        if (released) return;
        released = true;
        resource.leases.delete(lease);
        this.releasedWhileRenewing?.push([name, lease]);
        // A local lease may have been registered since (the store came back): it is removed there too.
        if (lease.startsWith('local:')) {
          this.releaseToStore(name, lease);
          return this.pump(name, resource);
        }
        // Waiters here ask again once the permit is back in the store (a local hand-off first, in effect).
        const done = () => this.pump(name, resource);
        let back: Promise<void> | void;
        try {
          back = this.store.release(name, lease);
        } catch {
          back = undefined;
        }
        if (back instanceof Promise) back.then(done, done);
        else done();
      },
    });
    this.pump(name, resource);
  }

  /** No permit free: a shared store is asked again after `pollMs` (± half); memory is woken by a release. */
  private wait(name: string, resource: Resource): void {
    if (resource.waiters.length === 0 || (!this.shared && !this.degraded)) return;
    const delay = this.pollMs * (0.5 + Math.random());
    resource.poll = setTimeout(() => {
      resource.poll = undefined;
      this.pump(name, resource);
    }, delay);
    resource.poll.unref();
  }

  private releaseToStore(name: string, lease: string): void {
    try {
      void Promise.resolve(this.store.release(name, lease)).catch(() => {});
    } catch {
      // The store is down: the lease expires there by itself.
    }
  }

  /**
   * Renews every lease this process holds (granted locally during an outage too), registering again those the store
   * lost. With `rethrow`, a failure rejects (the caller falls back); otherwise it is left for the next renewal.
   */
  private async renew(rethrow = false): Promise<void> {
    const held: [string, string][] = [];
    for (const [name, resource] of this.resources)
      for (const lease of resource.leases) held.push([name, lease]);
    // A lease released while the renewal runs would be added back by it: removed again once it is done.
    const released: [string, string][] = [];
    this.releasedWhileRenewing = released;
    try {
      this.members = await this.store.renew!(held);
      if (this.settleUntil > 0 && this.members >= this.settleMembers) this.settleUntil = 0;
    } catch (error) {
      // The store is down: acquisitions notice and fall back; leases are renewed again once it is back.
      if (rethrow) throw error;
    } finally {
      if (this.releasedWhileRenewing === released) this.releasedWhileRenewing = undefined;
      for (const [name, lease] of released) this.releaseToStore(name, lease);
    }
  }

  stats(): PermitPoolStats {
    const byResource: PermitPoolStats['byResource'] = {};
    let held = 0;
    let waiting = 0;
    for (const [name, resource] of this.resources) {
      byResource[name] = { held: resource.leases.size, waiting: resource.waiters.length };
      held += resource.leases.size;
      waiting += resource.waiters.length;
    }
    return {
      permits: this.permits,
      held,
      waiting,
      byResource,
      degraded: this.degraded,
      members: this.members,
      share: this.share,
      ...this.counts,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.renewTimer !== undefined) clearInterval(this.renewTimer);
    for (const resource of this.resources.values()) {
      if (resource.poll !== undefined) clearTimeout(resource.poll);
      for (const waiter of resource.waiters.splice(0)) {
        waiter.stopWatching();
        waiter.reject(new ClosedError('permit pool'));
      }
    }
    await this.store.close();
  }
}
