// Where key budgets live: this process (memory), the cluster primary (one budget for all workers), or Redis (one
// budget for all hosts, one Lua script per decision). Every store decides admission and records a charge atomically,
// so N processes admit exactly what one would.
import { type ClusterCaller, isMessage } from '../internal/cluster-rpc.js';
import { RedisScript, type RedisScriptClient } from '../internal/redis-script.js';
import { clusterCaller, GenerationMap, serveClusterStates } from '../internal/shared-store.js';
import { type Lease, type LeaseGrant, LeaseLedger, leasedState, leaseFor, leaseOf } from './leases.js';

export type { RedisScriptClient } from '../internal/redis-script.js';

/** A key's window after an operation. */
export interface BudgetState {
  /** False when an admission was refused (nothing was counted then). */
  admitted: boolean;
  /** Requests admitted in the window, this one included. */
  requests: number;
  /** Tokens charged in the window. */
  tokens: number;
  /** When the window ends, epoch ms. */
  resetAt: number;
  /** Identifies the window (its start): a reservation is released only in the window that holds it. */
  window: number;
  /** Tokens this admission reserved. */
  reserved: number;
}

/** `reserve` of an admission that reserves whatever the window has left (a request with no bound of its own). */
export const RESERVE_REST = -2;

/** Limits travel as numbers; -1 means "no limit" (JSON and Lua have no Infinity). */
export const NO_LIMIT = -1;

/** No reservation's window (a charge without a reservation). */
export const NO_WINDOW = -1;

/** What a store is asked to do to one key's window. */
export type BudgetOperation =
  /** Count a request if both limits allow it, reserving `reserve` tokens (0: none; RESERVE_REST: what is left). */
  | { op: 'admit'; requestLimit: number; tokenLimit: number; reserve: number }
  /** Add `used` tokens; `reserved` tokens held since admission in `window` are released there (a later window: not). */
  | { op: 'charge'; used: number; reserved: number; window: number }
  /** Take back an admitted request, and release `reserved` tokens held in `window`. */
  | { op: 'refund'; reserved: number; window: number }
  | { op: 'reset' }
  /** A worker gives back what it did not use of a lease of `window` (cluster only). */
  | { op: 'release'; requests: number; tokens: number; window: number };

/** The wire form of an operation (cluster IPC, the Redis script's ARGV): `[op, a, b, c]`, op 0–4 as listed above. */
type WireOperation = [op: 0 | 1 | 2 | 3 | 4, a: number, b: number, c: number];

function toWire(operation: BudgetOperation): WireOperation {
  switch (operation.op) {
    case 'admit':
      return [0, operation.requestLimit, operation.tokenLimit, operation.reserve];
    case 'charge':
      return [1, operation.used, operation.reserved, operation.window];
    case 'refund':
      return [2, 0, operation.reserved, operation.window];
    case 'reset':
      return [3, 0, 0, 0];
    case 'release':
      return [4, operation.requests, operation.tokens, operation.window];
  }
}

function fromWire([op, a, b, c]: WireOperation): BudgetOperation {
  if (op === 0) return { op: 'admit', requestLimit: a, tokenLimit: b, reserve: c };
  if (op === 1) return { op: 'charge', used: a, reserved: b, window: c };
  if (op === 2) return { op: 'refund', reserved: b, window: c };
  if (op === 4) return { op: 'release', requests: a, tokens: b, window: c };
  return { op: 'reset' };
}

/** Where windows live. Every store decides an admission and records a charge atomically. */
export interface BudgetStore {
  apply(key: string, operation: BudgetOperation): Promise<BudgetState> | BudgetState;
  /** Admissions answered from a lease held here, with no round trip (cluster workers). */
  readonly leased?: number;
  close(): Promise<void>;
}

interface Window {
  requests: number;
  tokens: number;
  resetAt: number;
  start: number;
  /** Leases were recalled from this window: no more are granted until it ends. */
  exact?: boolean;
}

/**
 * Fixed windows per key, starting at a key's first request. Expired keys are dropped a generation at a time (the
 * shared two-generation map the IP limiter's memory store uses too): no timer per key, no sweep.
 */
export class MemoryBudgetStore implements BudgetStore {
  private readonly windows: GenerationMap<Window>;

  constructor(
    private readonly windowMs: number,
    private readonly now: () => number,
  ) {
    this.windows = new GenerationMap(windowMs, now());
  }

  apply(key: string, operation: BudgetOperation): BudgetState {
    const now = this.now();
    const windows = this.windows;
    windows.tick(now);
    let window = windows.get(key);
    if (window === undefined || window.resetAt <= now) {
      windows.previous.delete(key);
      if (operation.op === 'reset') {
        windows.current.delete(key);
        return this.emptyWindow(now);
      }
      window = { requests: 0, tokens: 0, resetAt: now + this.windowMs, start: now };
      // Kept in the current generation: it ends before the next-but-one generation begins.
      windows.current.set(key, window);
    }
    let admitted = true;
    let reserved = 0;
    switch (operation.op) {
      case 'admit': {
        const { requestLimit, tokenLimit, reserve } = operation;
        admitted =
          (requestLimit === NO_LIMIT || window.requests < requestLimit) &&
          (tokenLimit === NO_LIMIT ||
            (reserve > 0 ? window.tokens + reserve <= tokenLimit : window.tokens < tokenLimit));
        if (admitted) {
          window.requests++;
          reserved =
            tokenLimit === NO_LIMIT
              ? 0
              : reserve === RESERVE_REST
                ? tokenLimit - window.tokens
                : Math.max(0, reserve);
          window.tokens += reserved;
        }
        break;
      }
      case 'charge':
        window.tokens = Math.max(
          0,
          window.tokens + operation.used - (operation.window === window.start ? operation.reserved : 0),
        );
        break;
      case 'refund':
        if (window.requests > 0) window.requests--;
        if (operation.window === window.start)
          window.tokens = Math.max(0, window.tokens - operation.reserved);
        break;
      case 'reset':
        windows.delete(key);
        return this.emptyWindow(now);
      case 'release':
        if (operation.window === window.start) {
          window.requests = Math.max(0, window.requests - operation.requests);
          window.tokens = Math.max(0, window.tokens - operation.tokens);
        }
        break;
    }
    return {
      admitted,
      requests: window.requests,
      tokens: window.tokens,
      resetAt: window.resetAt,
      window: window.start,
      reserved,
    };
  }

  /**
   * A lease of the key's window for a worker, just after it admitted a request reserving `reserve` (cluster primary):
   * counted in the window as used. Undefined when the limits are too small for one, too little is left, or leases of
   * this window were recalled.
   */
  lease(key: string, requestLimit: number, tokenLimit: number, reserve: number): LeaseGrant | undefined {
    const window = this.windows.get(key);
    if (window === undefined || window.exact === true) return undefined;
    const grant = leaseFor(requestLimit, tokenLimit, window.requests, window.tokens, reserve);
    if (grant === undefined) return undefined;
    window.requests += grant.requests;
    if (grant.tokens !== NO_LIMIT) window.tokens += grant.tokens;
    return grant;
  }

  /** No more leases of the key's current window (they were recalled at its edge). */
  exact(key: string): void {
    const window = this.windows.get(key);
    if (window !== undefined) window.exact = true;
  }

  /** A key's state after a reset: a fresh window from now. */
  private emptyWindow(now: number): BudgetState {
    return { admitted: true, requests: 0, tokens: 0, resetAt: now + this.windowMs, window: now, reserved: 0 };
  }

  get size(): number {
    return this.windows.size;
  }

  /** Every window still open (requests and tokens by key), and forgets them all. */
  drain(): Map<string, { requests: number; tokens: number }> {
    const now = this.now();
    const open = new Map<string, { requests: number; tokens: number }>();
    for (const generation of [this.windows.previous, this.windows.current]) {
      for (const [key, window] of generation) {
        if (window.resetAt > now) open.set(key, { requests: window.requests, tokens: window.tokens });
      }
    }
    this.windows.clear();
    return open;
  }

  async close(): Promise<void> {
    this.windows.clear();
  }
}

// ── cluster ─────────────────────────────────────────────────────────────────────────────────────────────────────

const CHANNEL = 'vllm-kit:key-budgets';

/** `holder`: the asking instance, when it asks for a lease with an admission or gives one back; 0 otherwise. */
type ClusterCall = [name: string, windowMs: number, key: string, operation: WireOperation, holder: number];
type ClusterResult = [
  admitted: 0 | 1,
  requests: number,
  tokens: number,
  resetAt: number,
  window: number,
  reserved: number,
  leaseRequests: number,
  leaseTokens: number,
];

/** The primary asks a holder to give back what it has not used of its lease of `key`. */
interface Recall {
  tag: typeof CHANNEL;
  kind: 'recall';
  holder: number;
  key: string;
}

/** Distinguishes this worker's budgets instances (the primary tells workers apart itself): a lease is held by one. */
let holders = 0;

/**
 * A worker's store: asks the primary, which holds the only windows (`serveCluster()`). With `leases`, a key with room
 * to spare is admitted from a slice of its window held here (see leases.ts): no round trip for most requests.
 */
export class ClusterBudgetStore implements BudgetStore {
  leased = 0;
  private readonly caller: ClusterCaller<ClusterCall, ClusterResult>;
  private readonly holder = ++holders;
  private readonly leases = new Map<string, Lease>();
  private sweepAt = 1000;
  /** Keys with an admission asking for a lease on its way: the others sent meanwhile ask for none. */
  private readonly asking = new Set<string>();
  /** Keys recalled while their lease was on its way here: it goes back as soon as it arrives. */
  private readonly recalled = new Set<string>();
  private readonly onRecall = (message: unknown) => {
    if (!isMessage(message, CHANNEL, 'recall') || (message as Recall).holder !== this.holder) return;
    const key = (message as Recall).key;
    const lease = this.leases.get(key);
    if (lease !== undefined) this.release(key, lease);
    // A lease may be on its way with an admission's answer: it goes back as soon as it comes.
    else if (this.asking.has(key)) this.recalled.add(key);
    // Not holding it (given back already): say so, so that the primary does not wait for it.
    else
      this.ask(key, { op: 'release', requests: 0, tokens: 0, window: NO_WINDOW }, this.holder).catch(ignore);
  };

  constructor(
    private readonly name: string,
    private readonly windowMs: number,
    timeoutMs: number,
    private readonly now: () => number,
    private readonly useLeases: boolean,
  ) {
    this.caller = clusterCaller(CHANNEL, timeoutMs);
    if (useLeases) process.on('message', this.onRecall);
  }

  apply(key: string, operation: BudgetOperation): Promise<BudgetState> | BudgetState {
    if (!this.useLeases) return this.ask(key, operation, 0);
    let lease = this.leases.get(key);
    if (lease !== undefined && lease.resetAt <= this.now()) {
      // Its window is over, and with it what the lease held.
      this.leases.delete(key);
      lease = undefined;
    }
    if (lease === undefined)
      return operation.op === 'admit' ? this.admit(key, operation) : this.ask(key, operation, 0);
    return this.fromLease(key, lease, operation);
  }

  /** An operation on a key this worker holds a lease of. */
  private fromLease(
    key: string,
    lease: Lease,
    operation: BudgetOperation,
  ): Promise<BudgetState> | BudgetState {
    switch (operation.op) {
      case 'admit': {
        const { requestLimit, tokenLimit, reserve } = operation;
        const reserved = tokenLimit === NO_LIMIT ? 0 : reserve;
        if (
          requestLimit === lease.requestLimit &&
          tokenLimit === lease.tokenLimit &&
          reserve !== RESERVE_REST &&
          lease.requests >= 1 &&
          (reserved > 0 ? lease.tokens >= reserved : lease.tokens > 0)
        ) {
          lease.requests--;
          lease.tokens -= reserved;
          this.leased++;
          return leasedState(lease, true, reserved);
        }
        // Spent, or not enough for this one (or the key's limits changed): back, and a new one asked for.
        this.release(key, lease);
        return this.admit(key, operation);
      }
      case 'charge': {
        // A reservation of the lease's window (made here or by the primary: either way counted there) is released
        // into the lease, which goes back to the primary whole.
        if (operation.window !== lease.window && operation.window !== NO_WINDOW) break;
        lease.tokens += (operation.window === lease.window ? operation.reserved : 0) - operation.used;
        if (lease.tokens >= 0) return leasedState(lease, true, 0);
        const owed = -lease.tokens;
        lease.tokens = 0;
        return this.ask(key, { op: 'charge', used: owed, reserved: 0, window: NO_WINDOW }, 0);
      }
      case 'refund':
        if (operation.window !== lease.window && operation.window !== NO_WINDOW) break;
        lease.requests++;
        if (operation.window === lease.window) lease.tokens += operation.reserved;
        return leasedState(lease, true, 0);
      case 'reset':
        // The window starts over at the primary, and the lease's slice with it.
        this.leases.delete(key);
        break;
    }
    return this.ask(key, operation, 0);
  }

  /** An admission at the primary, asking for a lease of the key's window with it. */
  private async admit(
    key: string,
    operation: Extract<BudgetOperation, { op: 'admit' }>,
  ): Promise<BudgetState> {
    // One lease asked for at a time per key: a burst's other admissions are decided one by one meanwhile.
    if (this.asking.has(key)) return this.ask(key, operation, 0);
    this.asking.add(key);
    let result: ClusterResult;
    let recalled = false;
    try {
      result = await this.caller.call([this.name, this.windowMs, key, toWire(operation), this.holder]);
    } finally {
      this.asking.delete(key);
      recalled = this.recalled.delete(key);
    }
    const [admitted, requests, tokens, resetAt, window, reserved, leaseRequests, leaseTokens] = result;
    const state: BudgetState = { admitted: admitted === 1, requests, tokens, resetAt, window, reserved };
    if (leaseRequests === 0) return state;
    const lease = leaseOf(
      { requests: leaseRequests, tokens: leaseTokens },
      operation.requestLimit,
      operation.tokenLimit,
      state,
    );
    if (recalled) this.release(key, lease);
    else this.hold(key, lease);
    // The slice is this worker's to use: the decision's remainders count it as left.
    return leasedState(lease, state.admitted, reserved);
  }

  /** Keeps a lease; past a thousand keys held, those whose window has ended are dropped first (no timer, no leak). */
  private hold(key: string, lease: Lease): void {
    if (this.leases.size >= this.sweepAt) {
      const now = this.now();
      for (const [held, { resetAt }] of this.leases) if (resetAt <= now) this.leases.delete(held);
      this.sweepAt = Math.max(1000, this.leases.size * 2);
    }
    this.leases.set(key, lease);
  }

  /** Gives back what is left of a lease (answered by the primary; nothing waits for it). */
  private release(key: string, lease: Lease): void {
    this.leases.delete(key);
    const tokens = Number.isFinite(lease.tokens) ? lease.tokens : 0;
    const operation: BudgetOperation = {
      op: 'release',
      requests: lease.requests,
      tokens,
      window: lease.window,
    };
    // The primary gone or slow: what was leased stays counted there (never more than the limit).
    this.ask(key, operation, this.holder).catch(ignore);
  }

  private async ask(key: string, operation: BudgetOperation, holder: number): Promise<BudgetState> {
    const [admitted, requests, tokens, resetAt, window, reserved] = await this.caller.call([
      this.name,
      this.windowMs,
      key,
      toWire(operation),
      holder,
    ]);
    return { admitted: admitted === 1, requests, tokens, resetAt, window, reserved };
  }

  async close(): Promise<void> {
    process.off('message', this.onRecall);
    const held = [...this.leases];
    for (const [key, lease] of held) this.release(key, lease);
    // The releases go out with the next batch, before the caller stops.
    if (held.length > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    this.caller.close('key budgets');
  }
}

const ignore = () => {};

/**
 * Runs in the cluster primary: holds the windows of every `store: 'cluster'` key-budget instance of every worker, so
 * all workers share one budget per key, and the leases workers hold of them. `serveCluster()` starts it with the other
 * pieces' servers.
 * @deprecated Call `serveCluster()` once in the primary; this name stays for one release.
 */
export function serveClusterBudgets(options: { now?: () => number } = {}): { close(): void } {
  const now = options.now ?? Date.now;
  const ledger = new LeaseLedger(now, ({ worker, holder, key }) => {
    if (worker.isConnected()) worker.send({ tag: CHANNEL, kind: 'recall', holder, key } satisfies Recall);
  });
  const served = serveClusterStates<ClusterCall, ClusterResult, MemoryBudgetStore>({
    fn: 'serveClusterBudgets',
    channel: CHANNEL,
    stateKey: ([name, windowMs]) => `${name}\u0000${windowMs}`,
    make: ([, windowMs]) => new MemoryBudgetStore(windowMs, now),
    handle(store, [name, windowMs, key, wire, holder], worker) {
      const operation = fromWire(wire);
      const ledgerKey = `${name}\u0000${windowMs}\u0000${key}`;
      const state = store.apply(key, operation);
      if (operation.op === 'release') {
        ledger.released(ledgerKey, worker, holder);
        return resultOf(state, undefined);
      }
      if (operation.op === 'reset') {
        // The window starts over: slices of the old one must not go on admitting (what they give back is ignored,
        // being of the old window).
        ledger.revoke(ledgerKey);
        return resultOf(state, undefined);
      }
      if (operation.op !== 'admit') return resultOf(state, undefined);
      if (state.admitted) {
        const grant =
          holder === 0
            ? undefined
            : store.lease(key, operation.requestLimit, operation.tokenLimit, state.reserved);
        if (grant === undefined) return resultOf(state, undefined);
        ledger.granted(ledgerKey, key, worker, holder, state.window, state.resetAt);
        // The window's counts now include the lease.
        return resultOf(
          {
            ...state,
            requests: state.requests + grant.requests,
            tokens: grant.tokens === NO_LIMIT ? state.tokens : state.tokens + grant.tokens,
          },
          grant,
        );
      }
      if (!ledger.has(ledgerKey, state.window)) return resultOf(state, undefined);
      // About to refuse while leases of this window are out: they may hold what this request needs. Recalled, and
      // decided again once they are back — with no more leases for this key until its window ends.
      store.exact(key);
      return ledger.recall(ledgerKey).then(() => resultOf(store.apply(key, operation), undefined));
    },
    onWorkerExit: (_states, worker) => ledger.forget(worker),
  });
  return {
    close() {
      served.close();
      ledger.clear();
    },
  };
}

function resultOf(state: BudgetState, grant: LeaseGrant | undefined): ClusterResult {
  return [
    state.admitted ? 1 : 0,
    state.requests,
    state.tokens,
    state.resetAt,
    state.window,
    state.reserved,
    grant?.requests ?? 0,
    grant?.tokens ?? 0,
  ];
}

// ── Redis ───────────────────────────────────────────────────────────────────────────────────────────────────────

/**
 * One hash per key (`r` requests, `t` tokens) that expires with its window: the window's clock is Redis's own (PTTL),
 * so hosts with skewed clocks still share one window. Returns `{admitted, requests, tokens, msLeft}`.
 */
const SCRIPT = `
local k = KEYS[1]
local op = tonumber(ARGV[1])
local a = tonumber(ARGV[2])
local b = tonumber(ARGV[3])
local windowMs = tonumber(ARGV[4])
local c = tonumber(ARGV[5])
if op == 3 then
  redis.call('DEL', k)
  return {1, 0, 0, windowMs, 0, 0}
end
local ttl = redis.call('PTTL', k)
local r, t, s = 0, 0, 0
local fresh = ttl <= 0
if fresh then
  redis.call('DEL', k)
  ttl = windowMs
  local now = redis.call('TIME')
  s = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
else
  local v = redis.call('HMGET', k, 'r', 't', 's')
  r = tonumber(v[1]) or 0
  t = tonumber(v[2]) or 0
  s = tonumber(v[3]) or 0
end
local admitted = 1
local reserved = 0
if op == 0 then
  local fits
  if b < 0 then fits = true elseif c > 0 then fits = t + c <= b else fits = t < b end
  if (a >= 0 and r >= a) or not fits then
    admitted = 0
  else
    r = r + 1
    if b < 0 then reserved = 0 elseif c == -2 then reserved = b - t elseif c > 0 then reserved = c end
    t = t + reserved
    redis.call('HSET', k, 'r', r, 't', t, 's', s)
  end
elseif op == 1 then
  if c == s then t = t + a - b else t = t + a end
  if t < 0 then t = 0 end
  redis.call('HSET', k, 't', t, 's', s)
elseif op == 2 then
  if r > 0 then r = r - 1 end
  if c == s then t = t - b end
  if t < 0 then t = 0 end
  redis.call('HSET', k, 'r', r, 't', t, 's', s)
end
if fresh and redis.call('EXISTS', k) == 1 then redis.call('PEXPIRE', k, windowMs) end
return {admitted, r, t, ttl, s, reserved}
`;
const BUDGET_SCRIPT = new RedisScript(SCRIPT);

export class RedisBudgetStore implements BudgetStore {
  private readonly prefix: string;

  constructor(
    private readonly client: RedisScriptClient,
    name: string,
    private readonly windowMs: number,
    private readonly now: () => number,
  ) {
    this.prefix = `vllm-kit:kb:${name}:`;
  }

  async apply(key: string, operation: BudgetOperation): Promise<BudgetState> {
    const [op, a, b, c] = toWire(operation);
    const reply = await BUDGET_SCRIPT.run(this.client, [this.prefix + key], [op, a, b, this.windowMs, c]);
    const [admitted, requests, tokens, msLeft, window, reserved] = reply as number[];
    return {
      admitted: admitted === 1,
      requests: requests!,
      tokens: tokens!,
      resetAt: this.now() + msLeft!,
      window: window!,
      reserved: reserved!,
    };
  }

  async close(): Promise<void> {}
}
