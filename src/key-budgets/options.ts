// createKeyBudgets' options: every field documented with unit and default, resolved and validated in one place.
import {
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
  'now',
] as const satisfies readonly (keyof KeyBudgetsOptions)[];

export interface ResolvedKeyBudgetsOptions {
  store: 'memory' | 'cluster' | RedisScriptClient;
  name: string;
  onStoreError: 'insurance' | 'open' | 'closed';
  storeTimeoutMs: number;
  processes: number;
  windowSec: number;
  now: () => number;
}

export function resolveOptions(input: KeyBudgetsOptions | undefined): ResolvedKeyBudgetsOptions {
  const options = objectOption('options', input) ?? {};
  rejectUnknownKeys('', options, KEYS);
  const shared = sharedStoreOptions<RedisScriptClient>(options, 'evalsha');
  return {
    ...shared,
    windowSec: numberOption('windowSec', options.windowSec, 60, { min: 1, max: 86_400, integer: true }),
    now: clockOption(options.now),
  };
}
