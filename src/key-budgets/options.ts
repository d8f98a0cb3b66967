// createKeyBudgets' options: every field documented with unit and default, resolved and validated in one place.
import {
  booleanOption,
  clockOption,
  numberOption,
  objectOption,
  rejectUnknownKeys,
  sharedStoreOptions,
} from '../internal/validate.js';
import type { RedisScriptClient } from './stores.js';

export interface KeyBudgetsOptions {
  /**
   * Where windows live: `'memory'` (this process), `'cluster'` (one budget per key for all workers, held by the
   * primary, which must call `serveClusterBudgets()`), or an ioredis client (one budget per key for all hosts).
   * @default 'memory'
   */
  store?: 'memory' | 'cluster' | object;
  /** Names these budgets in Redis and the primary (two instances with one name share their windows). @default 'default' */
  name?: string;
  /** Window length, seconds: limits are per window. @default 60 (per minute, as OpenAI's RPM and TPM) */
  windowSec?: number;
  /**
   * When the cluster primary or Redis fails: `'insurance'` counts in this process meanwhile, `'open'` admits,
   * `'closed'` refuses. Never a 500. @default 'insurance'
   */
  onStoreError?: 'insurance' | 'open' | 'closed';
  /** Longest wait for the cluster primary, ms, before `onStoreError` applies. @default 500 */
  storeTimeoutMs?: number;
  /**
   * How many processes share this store (workers × hosts). While the store fails, `'insurance'` lets each count
   * 1/`processes` of each limit itself (at least 1), so together they stay within it. @default 1
   */
  processes?: number;
  /**
   * `store: 'cluster'`: a worker admitting a request for a key with room to spare takes a slice of the key's window
   * (1/64 of each limit, counted as used at the primary) and admits, charges and refunds that key's next requests
   * against it with no round trip; what it did not use goes back when the slice runs out or the primary recalls it.
   * At the window's edge the primary recalls the slices before refusing anyone, so a key is admitted exactly what its
   * limits allow. Keys whose limits are under 128 requests (or 128 requests' reservations) are never leased. While a
   * worker holds a slice, its decisions' `remaining*` count the other workers' slices as spent (an under-estimate).
   * `false`: every decision is a round trip to the primary. Ignored by the other stores.
   * @default true
   */
  leases?: boolean;
  /** Clock, epoch ms. @default Date.now */
  now?: () => number;
}

const KEYS = [
  'store',
  'name',
  'windowSec',
  'onStoreError',
  'storeTimeoutMs',
  'processes',
  'leases',
  'now',
] as const satisfies readonly (keyof KeyBudgetsOptions)[];

export interface ResolvedKeyBudgetsOptions {
  store: 'memory' | 'cluster' | RedisScriptClient;
  name: string;
  onStoreError: 'insurance' | 'open' | 'closed';
  storeTimeoutMs: number;
  processes: number;
  windowSec: number;
  leases: boolean;
  now: () => number;
}

export function resolveOptions(input: KeyBudgetsOptions | undefined): ResolvedKeyBudgetsOptions {
  const options = objectOption('options', input) ?? {};
  rejectUnknownKeys('', options, KEYS);
  const shared = sharedStoreOptions<RedisScriptClient>(options, 'evalsha');
  return {
    ...shared,
    windowSec: numberOption('windowSec', options.windowSec, 60, { min: 1, max: 86_400, integer: true }),
    leases: booleanOption('leases', options.leases, true),
    now: clockOption(options.now),
  };
}
