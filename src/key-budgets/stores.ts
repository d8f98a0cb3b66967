// Where key budgets live: this process (memory), the cluster primary (one budget for all workers), or Redis (one
// budget for all hosts, one Lua script per decision). Every store decides admission and records a charge atomically,
// so N processes admit exactly what one would.
import type { ClusterCaller } from '../internal/cluster-rpc.js';
import { RedisScript, type RedisScriptClient } from '../internal/redis-script.js';
import { clusterCaller, GenerationMap, serveClusterStates } from '../internal/shared-store.js';

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
  | { op: 'reset' };

/** The wire form of an operation (cluster IPC, the Redis script's ARGV): `[op, a, b, c]`, op 0–3 as listed above. */
type WireOperation = [op: 0 | 1 | 2 | 3, a: number, b: number, c: number];

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
  }
}

function fromWire([op, a, b, c]: WireOperation): BudgetOperation {
  if (op === 0) return { op: 'admit', requestLimit: a, tokenLimit: b, reserve: c };
  if (op === 1) return { op: 'charge', used: a, reserved: b, window: c };
  if (op === 2) return { op: 'refund', reserved: b, window: c };
  return { op: 'reset' };
}

/** Where windows live. Every store decides an admission and records a charge atomically. */
export interface BudgetStore {
  apply(key: string, operation: BudgetOperation): Promise<BudgetState> | BudgetState;
  close(): Promise<void>;
}

interface Window {
  requests: number;
  tokens: number;
  resetAt: number;
  start: number;
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

type ClusterCall = [name: string, windowMs: number, key: string, operation: WireOperation];
type ClusterResult = [
  admitted: 0 | 1,
  requests: number,
  tokens: number,
  resetAt: number,
  window: number,
  reserved: number,
];

/** A worker's store: asks the primary, which holds the only windows (`serveClusterBudgets()`). */
export class ClusterBudgetStore implements BudgetStore {
  private readonly caller: ClusterCaller<ClusterCall, ClusterResult>;

  constructor(
    private readonly name: string,
    private readonly windowMs: number,
    timeoutMs: number,
  ) {
    this.caller = clusterCaller(CHANNEL, timeoutMs);
  }

  async apply(key: string, operation: BudgetOperation): Promise<BudgetState> {
    const [admitted, requests, tokens, resetAt, window, reserved] = await this.caller.call([
      this.name,
      this.windowMs,
      key,
      toWire(operation),
    ]);
    return { admitted: admitted === 1, requests, tokens, resetAt, window, reserved };
  }

  async close(): Promise<void> {
    this.caller.close('key budgets');
  }
}

/**
 * Runs in the cluster primary: holds the windows of every `store: 'cluster'` key-budget instance of every worker, so
 * all workers share one budget per key. `serveCluster()` starts it with the other pieces' servers.
 * @deprecated Call `serveCluster()` once in the primary; this name stays for one release.
 */
export function serveClusterBudgets(options: { now?: () => number } = {}): { close(): void } {
  const now = options.now ?? Date.now;
  return serveClusterStates<ClusterCall, ClusterResult, MemoryBudgetStore>({
    fn: 'serveClusterBudgets',
    channel: CHANNEL,
    stateKey: ([name, windowMs]) => `${name}\u0000${windowMs}`,
    make: ([, windowMs]) => new MemoryBudgetStore(windowMs, now),
    handle(store, [, , key, operation]) {
      const state = store.apply(key, fromWire(operation));
      return [
        state.admitted ? 1 : 0,
        state.requests,
        state.tokens,
        state.resetAt,
        state.window,
        state.reserved,
      ];
    },
  });
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
