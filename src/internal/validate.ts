// Option validation shared by every factory: one message shape that names the option and shows the bad value.
import { InvalidOptionError } from '../errors/index.js';

/** Renders a value for an error message: `-1` (number), `"x"` (string), `{…}` (object). Never prints secrets. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return `\`${JSON.stringify(value)}\` (string)`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return `\`${String(value)}\` (${typeof value})`;
  }
  if (value === null) return '`null`';
  if (value === undefined) return '`undefined`';
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'function') return 'a function';
  return 'an object';
}

export function invalid(option: string, expected: string, value: unknown): InvalidOptionError {
  return new InvalidOptionError(
    option,
    `Expected \`${option}\` to be ${expected}, got ${describeValue(value)}`,
  );
}

export interface NumberRule {
  /** Inclusive lower bound. */
  min?: number;
  /** Inclusive upper bound. */
  max?: number;
  integer?: boolean;
  /** Accept `Infinity` (meaning "no limit"). */
  allowInfinity?: boolean;
}

function ruleText(rule: NumberRule): string {
  const kind = rule.integer ? 'an integer' : 'a number';
  const parts: string[] = [];
  if (rule.min !== undefined) parts.push(`>= ${rule.min}`);
  if (rule.max !== undefined) parts.push(`<= ${rule.max}`);
  const range = parts.length > 0 ? ` ${parts.join(' and ')}` : '';
  return `${kind}${range}${rule.allowInfinity ? ' (or Infinity)' : ''}`;
}

/** Returns `value ?? fallback` after checking it is a number within `rule`. */
export function numberOption(
  option: string,
  value: unknown,
  fallback: number,
  rule: NumberRule = {},
): number {
  if (value === undefined) return fallback;
  const ok =
    typeof value === 'number' &&
    !Number.isNaN(value) &&
    (Number.isFinite(value) || (rule.allowInfinity === true && value === Number.POSITIVE_INFINITY)) &&
    (!rule.integer || !Number.isFinite(value) || Number.isInteger(value)) &&
    (rule.min === undefined || value >= rule.min) &&
    (rule.max === undefined || value <= rule.max);
  if (!ok) throw invalid(option, ruleText(rule), value);
  return value as number;
}

export function optionalNumberOption(
  option: string,
  value: unknown,
  rule: NumberRule = {},
): number | undefined {
  return value === undefined ? undefined : numberOption(option, value, 0, rule);
}

export function stringOption(option: string, value: unknown, fallback: string, nonEmpty = true): string {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || (nonEmpty && value.length === 0)) {
    throw invalid(option, nonEmpty ? 'a non-empty string' : 'a string', value);
  }
  return value;
}

export function optionalStringOption(option: string, value: unknown): string | undefined {
  return value === undefined ? undefined : stringOption(option, value, '');
}

export function booleanOption(option: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw invalid(option, 'a boolean', value);
  return value;
}

export function oneOfOption<T extends string>(
  option: string,
  value: unknown,
  choices: readonly T[],
  fallback: T,
): T {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
    throw invalid(option, `one of ${choices.map((c) => `"${c}"`).join(', ')}`, value);
  }
  return value as T;
}

/** A function, or undefined. */
export function functionOption<T>(option: string, value: unknown): T | undefined {
  if (value !== undefined && typeof value !== 'function') throw invalid(option, 'a function', value);
  return value as T | undefined;
}

export function objectOption(option: string, value: unknown): Record<string, unknown> | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw invalid(option, 'an object', value);
  return value as Record<string, unknown>;
}

/** Refuses keys the options type does not know: a typo must fail loudly, not be ignored. */
export function rejectUnknownKeys(
  option: string,
  value: Record<string, unknown>,
  known: readonly string[],
): void {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) {
      const where = option === '' ? key : `${option}.${key}`;
      throw new InvalidOptionError(
        where,
        `Unknown option \`${where}\`; expected one of ${known.map((k) => `\`${k}\``).join(', ')}`,
      );
    }
  }
}

/** A clock option: a function returning epoch ms, `Date.now` when absent. */
/** The `now` option of every piece: a clock in ms, `fallback` (Date.now) when absent. */
export function clockOption(value: unknown, fallback: () => number = Date.now): () => number {
  if (value !== undefined && typeof value !== 'function') throw invalid('now', 'a function', value);
  return (value as (() => number) | undefined) ?? fallback;
}

/**
 * The options every piece with a shared store (memory, cluster primary, Redis) takes, validated alike. `store` is
 * `'memory'`, `'cluster'`, or the Redis client, recognised by the method the piece calls on it (`redisMethod`).
 */
export function sharedStoreOptions<Client>(
  options: Record<string, unknown>,
  redisMethod: string,
): {
  store: 'memory' | 'cluster' | Client;
  name: string;
  onStoreError: 'insurance' | 'open' | 'closed';
  storeTimeoutMs: number;
  processes: number;
} {
  const store = options.store ?? 'memory';
  const isClient =
    typeof store === 'object' &&
    store !== null &&
    typeof (store as Record<string, unknown>)[redisMethod] === 'function';
  if (store !== 'memory' && store !== 'cluster' && !isClient) {
    throw invalid('store', '"memory", "cluster" or an ioredis client', store);
  }
  const name = stringOption('name', options.name, 'default');
  if (!/^[A-Za-z0-9_.-]+$/.test(name))
    throw invalid('name', 'letters, digits, "_", "." or "-"', options.name);
  return {
    store: store as 'memory' | 'cluster' | Client,
    name,
    onStoreError: oneOfOption(
      'onStoreError',
      options.onStoreError,
      ['insurance', 'open', 'closed'],
      'insurance',
    ),
    storeTimeoutMs: numberOption('storeTimeoutMs', options.storeTimeoutMs, 500, { min: 1, max: 60_000 }),
    processes: numberOption('processes', options.processes, 1, { min: 1, max: 1_000_000, integer: true }),
  };
}
