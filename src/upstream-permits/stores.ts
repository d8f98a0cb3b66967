// Where permits are counted: this process (memory), the cluster primary (every worker of a host), or Redis (every
// host: one sorted set of leases per resource, scored by expiry on Redis's own clock).
import { randomBytes } from 'node:crypto';
import type { ClusterCaller } from '../internal/cluster-rpc.js';
import { RedisScript, type RedisScriptClient } from '../internal/redis-script.js';
import { clusterCaller, serveClusterStates } from '../internal/shared-store.js';

export interface PermitStore {
  /** A lease id when a permit was free (and is now held), undefined when none is. Throws when the store fails. */
  tryAcquire(resource: string, limit: number): Promise<string | undefined> | string | undefined;
  /** The permits held by every process, as the store last said in answer to `tryAcquire` (undefined: not known). */
  lastCount?(resource: string): number | undefined;
  release(resource: string, lease: string): Promise<void> | void;
  /**
   * Keeps held leases alive, registering again any the store lost (a restart, leases granted locally during an
   * outage); resolves with the number of processes sharing the pool (for the outage share).
   */
  renew?(held: [resource: string, lease: string][]): Promise<number>;
  close(): Promise<void>;
}

let leaseSeq = 0;
const newLease = () => `${process.pid}.${(leaseSeq++).toString(36)}`;

export class MemoryPermitStore implements PermitStore {
  private readonly held = new Map<string, number>();

  tryAcquire(resource: string, limit: number): string | undefined {
    const held = this.held.get(resource) ?? 0;
    if (held >= limit) return undefined;
    this.held.set(resource, held + 1);
    return newLease();
  }

  release(resource: string): void {
    const held = (this.held.get(resource) ?? 1) - 1;
    if (held <= 0) this.held.delete(resource);
    else this.held.set(resource, held);
  }

  async close(): Promise<void> {
    this.held.clear();
  }
}

// ── cluster ─────────────────────────────────────────────────────────────────────────────────────────────────────

const CHANNEL = 'vllm-kit:permits';

/** `[name, op, resource, limit or lease]`: op 0 acquire, 1 release. */
type ClusterCall = [name: string, op: 0 | 1, resource: string, arg: number | string];

/** A worker's store: the primary (`serveClusterPermits()`) holds the counts and frees a dead worker's at once. */
export class ClusterPermitStore implements PermitStore {
  private readonly caller: ClusterCaller<ClusterCall, string | null>;

  constructor(
    private readonly name: string,
    timeoutMs: number,
  ) {
    this.caller = clusterCaller(CHANNEL, timeoutMs);
  }

  async tryAcquire(resource: string, limit: number): Promise<string | undefined> {
    return (await this.caller.call([this.name, 0, resource, limit])) ?? undefined;
  }

  async release(resource: string, lease: string): Promise<void> {
    await this.caller.call([this.name, 1, resource, lease]);
  }

  async close(): Promise<void> {
    this.caller.close('permit pool');
  }
}

/**
 * Runs in the cluster primary: counts the permits of every `store: 'cluster'` pool of every worker, so all workers of
 * the host share one limit per resource. A worker that exits (crash, SIGKILL) has its permits returned at once.
 * `serveCluster()` starts it with the other pieces' servers.
 * @deprecated Call `serveCluster()` once in the primary; this name stays for one release.
 */
export function serveClusterPermits(): { close(): void } {
  /** Per pool and resource, the leases held: lease → worker id. */
  return serveClusterStates<ClusterCall, string | null, Map<string, number>>({
    fn: 'serveClusterPermits',
    channel: CHANNEL,
    stateKey: ([name, , resource]) => `${name}\u0000${resource}`,
    make: () => new Map(),
    handle(leases, [, op, , arg], worker) {
      if (op === 1) {
        leases.delete(String(arg));
        return null;
      }
      if (leases.size >= Number(arg)) return null;
      const lease = `${worker.id}.${newLease()}`;
      leases.set(lease, worker.id);
      return lease;
    },
    onWorkerExit(pools, worker) {
      for (const leases of pools.values())
        for (const [lease, owner] of leases) if (owner === worker.id) leases.delete(lease);
    },
  });
}

// ── Redis ───────────────────────────────────────────────────────────────────────────────────────────────────────

/** Drops expired leases, then takes one if fewer than the limit remain. Time is Redis's own. */
const ACQUIRE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return {0, held} end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {1, held + 1}
`;

/**
 * Pushes back the expiry of this process's leases (KEYS[2..], ARGV[3..]) and of its membership (KEYS[1]); returns how
 * many processes are members (for the share each may use while Redis is down). A lease Redis no longer has (it
 * restarted empty, or the lease was granted locally while it was down) is added back: the leases in flight are
 * counted again before any new grant.
 */
const RENEW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], lease * 2)
return redis.call('ZCARD', KEYS[1])
`;

const SCRIPTS = { acquire: new RedisScript(ACQUIRE), renew: new RedisScript(RENEW) };

/** The part of an ioredis client the store uses. */
export interface RedisPermitClient extends RedisScriptClient {
  zrem(key: string, member: string): Promise<unknown>;
}

export class RedisPermitStore implements PermitStore {
  /** One hash tag for every key of a pool, so a Redis Cluster keeps them in one slot (one script touches several). */
  private readonly prefix: string;
  private readonly member = `${process.pid}.${randomBytes(4).toString('hex')}`;

  constructor(
    private readonly client: RedisPermitClient,
    name: string,
    private readonly leaseMs: number,
  ) {
    this.prefix = `{vllm-kit:permits:${name}}:`;
  }

  private readonly counts = new Map<string, number>();

  async tryAcquire(resource: string, limit: number): Promise<string | undefined> {
    const lease = `${this.member}.${newLease()}`;
    const [granted, held] = (await SCRIPTS.acquire.run(
      this.client,
      [this.prefix + resource],
      [limit, this.leaseMs, lease],
    )) as [number, number];
    this.counts.set(resource, held);
    return granted === 1 ? lease : undefined;
  }

  lastCount(resource: string): number | undefined {
    return this.counts.get(resource);
  }

  async release(resource: string, lease: string): Promise<void> {
    await this.client.zrem(this.prefix + resource, lease);
  }

  async renew(held: [string, string][]): Promise<number> {
    const keys = [`${this.prefix}members`, ...held.map(([resource]) => this.prefix + resource)];
    const args = [this.leaseMs, this.member, ...held.map(([, lease]) => lease)];
    return Number(await SCRIPTS.renew.run(this.client, keys, args));
  }

  async close(): Promise<void> {}
}
