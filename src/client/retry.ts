// The retry contract: which failures are retried, how long to wait, and a budget so retries cannot multiply an outage.

/** 408, 409, 429 and 5xx except 501 (not implemented: a retry cannot help). */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 409 || status === 429 || (status >= 500 && status !== 501);
}

type Headers = Record<string, string | string[] | undefined>;

function header(headers: Headers, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** `retry-after-ms` first, then `retry-after` (seconds or an HTTP date), in ms; undefined when absent or invalid. */
export function parseRetryAfter(headers: Headers, now: number = Date.now()): number | undefined {
  const ms = header(headers, 'retry-after-ms');
  if (ms !== undefined) {
    const value = Number(ms);
    if (Number.isFinite(value) && value >= 0) return value;
  }
  const after = header(headers, 'retry-after');
  if (after === undefined || after.trim() === '') return undefined;
  const seconds = Number(after);
  if (Number.isFinite(seconds)) return seconds >= 0 ? seconds * 1000 : undefined;
  const date = Date.parse(after);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Exponential backoff with jitter, as openai-node: min(base × 2^attempt, max) × (1 - random × 0.25). */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, random: () => number): number {
  return Math.min(baseMs * 2 ** attempt, maxMs) * (1 - random() * 0.25);
}

export interface RetryBudgetOptions {
  /** Retries allowed per original request, over the window. @default 0.1 */
  ratio: number;
  /** Retries always allowed per second, so a quiet client can still retry. @default 1 */
  minPerSec: number;
  now: () => number;
}

/**
 * A sliding 10-second budget: retries ≤ minPerSec × 10 + ratio × requests in the window (Finagle's RetryBudget, in
 * the small). Ten 1-second slots keep it O(1).
 */
export class RetryBudget {
  private readonly requests = new Array<number>(10).fill(0);
  private readonly retries = new Array<number>(10).fill(0);
  private slot = 0;
  private slotSecond = 0;

  constructor(private readonly options: RetryBudgetOptions) {}

  private advance(): void {
    const second = Math.floor(this.options.now() / 1000);
    if (second === this.slotSecond) return;
    const steps = Math.min(10, second - this.slotSecond);
    for (let i = 0; i < steps; i++) {
      this.slot = (this.slot + 1) % 10;
      this.requests[this.slot] = 0;
      this.retries[this.slot] = 0;
    }
    this.slotSecond = second;
  }

  recordRequest(): void {
    this.advance();
    this.requests[this.slot]!++;
  }

  /** Takes one retry from the budget; false when it is spent. */
  tryWithdraw(): boolean {
    this.advance();
    const requests = this.requests.reduce((a, b) => a + b, 0);
    const retries = this.retries.reduce((a, b) => a + b, 0);
    if (retries + 1 > this.options.minPerSec * 10 + this.options.ratio * requests) return false;
    this.retries[this.slot]!++;
    return true;
  }
}
