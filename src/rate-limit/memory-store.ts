// The in-memory rate-limit store: fixed windows per key, two generations of Maps instead of a timer per key.
//
// rate-limiter-flexible's memory store keeps a timer per key (about 485 MB and 4 µs per check for 1M keys). Here each
// key costs one Map entry holding one number (count and reset time packed together), and expired keys are dropped a
// whole generation at a time: a key created in one generation always expires before the next-but-one begins.

export interface WindowState {
  /** Points consumed in the key's current window, this request's included. */
  consumed: number;
  /** When the key's window ends, epoch ms. */
  resetAt: number;
}

// Packing: resetAt in whole seconds since the store's epoch, × 2^21, plus the count (capped at 2^21 - 1).
const COUNT_BITS = 2 ** 21;
const MAX_COUNT = COUNT_BITS - 1;

export class MemoryStore {
  private current = new Map<string, number>();
  private previous = new Map<string, number>();
  private generationEndsAt: number;
  private readonly epochSec: number;
  private readonly windowMs: number;
  /** A generation lasts a window plus the second that resets are rounded up by. */
  private readonly generationMs: number;

  constructor(
    windowSec: number,
    private readonly now: () => number,
  ) {
    this.windowMs = windowSec * 1000;
    this.generationMs = this.windowMs + 1000;
    this.epochSec = Math.floor(now() / 1000) - 1;
    this.generationEndsAt = now() + this.generationMs;
  }

  /** Adds `cost` to the key's window (starting a new window if the last one ended) and returns the new state. */
  consume(key: string, cost: number): WindowState {
    const now = this.now();
    if (now >= this.generationEndsAt) this.rotate(now);
    let map = this.current;
    let packed = map.get(key);
    if (packed === undefined) {
      packed = this.previous.get(key);
      if (packed !== undefined) map = this.previous;
    }
    if (packed !== undefined) {
      const resetSec = Math.floor(packed / COUNT_BITS);
      const resetAt = (resetSec + this.epochSec) * 1000;
      if (resetAt > now) {
        const consumed = Math.min(MAX_COUNT, (packed % COUNT_BITS) + cost);
        map.set(key, resetSec * COUNT_BITS + consumed);
        return { consumed, resetAt };
      }
      if (map === this.previous) this.previous.delete(key);
    }
    // A new window: it ends windowSec from now, rounded up to the second the packing keeps.
    const resetSec = Math.ceil((now + this.windowMs) / 1000) - this.epochSec;
    const consumed = Math.min(MAX_COUNT, cost);
    this.current.set(key, resetSec * COUNT_BITS + consumed);
    return { consumed, resetAt: (resetSec + this.epochSec) * 1000 };
  }

  reset(key: string): void {
    this.current.delete(key);
    this.previous.delete(key);
  }

  get size(): number {
    return this.current.size + this.previous.size;
  }

  /** Every key of the previous generation has expired by now: drop them all at once. */
  private rotate(now: number): void {
    const generations = Math.floor((now - this.generationEndsAt) / this.generationMs) + 1;
    this.previous = generations === 1 ? this.current : new Map();
    this.current = new Map();
    this.generationEndsAt += generations * this.generationMs;
  }

  clear(): void {
    this.current.clear();
    this.previous.clear();
  }
}
