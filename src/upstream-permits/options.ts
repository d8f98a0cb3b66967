// createPermitPool's options: every field documented with unit and default, resolved and validated in one place.
import {
  invalid,
  numberOption,
  objectOption,
  rejectUnknownKeys,
  sharedStoreOptions,
} from '../internal/validate.js';
import type { RedisPermitClient } from './stores.js';

export interface PermitPoolOptions {
  /** Permits per resource (in-flight requests per replica), across every process sharing the store. */
  permits: number;
  /**
   * `'memory'` (this process), `'cluster'` (every worker of the host, through the primary, which must call
   * `serveClusterPermits()`), or an ioredis client (every host). @default 'memory'
   */
  store?: 'memory' | 'cluster' | object;
  /** Names the pool in Redis and the primary. @default 'default' */
  name?: string;
  /** Redis: how long a lease lives unless renewed (renewed every third of it while held). @default 5000 */
  leaseMs?: number;
  /** Cluster and Redis: how often a process with waiting requests asks again for a permit, ms. @default 5 */
  pollMs?: number;
  /**
   * The store failing (Redis down, the primary not answering): `'insurance'` lets each process hold its share of the
   * limit meanwhile (permits ÷ the processes last seen sharing the pool, at least 1); `'open'` grants every request;
   * `'closed'` grants none (requests wait for the store or their timeout). Never a 500. @default 'insurance'
   */
  onStoreError?: 'insurance' | 'open' | 'closed';
  /** Longest wait for the cluster primary, ms. @default 500 */
  storeTimeoutMs?: number;
  /**
   * How many processes share this store (workers × hosts). While the store fails, `'insurance'` lets each count
   * 1/`processes` of each limit itself (at least 1), so together they stay within it. @default 1
   */
  processes?: number;
}

const KEYS = [
  'permits',
  'store',
  'name',
  'leaseMs',
  'pollMs',
  'onStoreError',
  'storeTimeoutMs',
  'processes',
] as const satisfies readonly (keyof PermitPoolOptions)[];

export interface ResolvedPermitPoolOptions {
  permits: number;
  store: 'memory' | 'cluster' | RedisPermitClient;
  name: string;
  onStoreError: 'insurance' | 'open' | 'closed';
  storeTimeoutMs: number;
  processes: number;
  leaseMs: number;
  pollMs: number;
}

export function resolveOptions(input: PermitPoolOptions): ResolvedPermitPoolOptions {
  const options = objectOption('options', input);
  if (options === undefined) throw invalid('options', 'an object with `permits`', input);
  rejectUnknownKeys('', options, KEYS);
  if (options.permits === undefined) throw invalid('permits', 'an integer >= 1', options.permits);
  const permits = numberOption('permits', options.permits, 1, { min: 1, max: 1_000_000, integer: true });
  const shared = sharedStoreOptions<RedisPermitClient>(options, 'zrem');
  return {
    permits,
    ...shared,
    leaseMs: numberOption('leaseMs', options.leaseMs, 5000, { min: 100, max: 3_600_000, integer: true }),
    pollMs: numberOption('pollMs', options.pollMs, 5, { min: 1, max: 10_000 }),
  };
}
