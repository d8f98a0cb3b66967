// Real services for tests, from the environment with the machine's defaults. Never skipped: CI starts them.
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** A channel or key prefix no other test run shares. */
export function uniqueName(prefix: string): string {
  return `${prefix}:${process.pid}:${Date.now().toString(36)}:${Math.random().toString(36).slice(2, 8)}`;
}
