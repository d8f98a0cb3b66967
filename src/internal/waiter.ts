// A caller waiting in a line — for a concurrency slot, for an upstream permit — with a deadline and an abort signal:
// one timer and one abort listener, both cleared the moment it is answered, whichever way.
import type { AbortSignalLike } from './abort.js';

/** Why a waiter gave up. */
export type GiveUp = 'timeout' | 'abort';

/** Base of the lines' waiters: `watch()` arms the deadline and the signal, `stopWatching()` clears both. */
export class Waiter {
  private timer: NodeJS.Timeout | undefined = undefined;
  private signal: AbortSignalLike | undefined = undefined;
  private onAbort: (() => void) | undefined = undefined;

  constructor(
    /** When it joined the line (the line's clock). */
    readonly enqueuedAt: number,
  ) {}

  /**
   * Calls `giveUp(this, 'timeout')` after `timeoutMs` (none when 0 or less) and `giveUp(this, 'abort')` when `signal`
   * aborts, whichever comes first, unless it is answered before (`stopWatching`). `giveUp` should be one function per
   * line (no closure per waiter for the timer).
   */
  watch(
    timeoutMs: number,
    signal: AbortSignalLike | undefined,
    giveUp: (waiter: this, why: GiveUp) => void,
  ): void {
    if (timeoutMs > 0) {
      this.timer = setTimeout(giveUp, timeoutMs, this, 'timeout');
      this.timer.unref();
    }
    if (signal !== undefined) {
      const onAbort = () => giveUp(this, 'abort');
      this.signal = signal;
      this.onAbort = onAbort;
      signal.addEventListener('abort', onAbort, { once: true });
    }
  }

  /** The reason of the signal it watches (read it before `stopWatching`). */
  get abortReason(): unknown {
    return this.signal?.reason;
  }

  /** Answered (or given up): clears the timer and the abort listener. */
  stopWatching(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.onAbort !== undefined) this.signal!.removeEventListener('abort', this.onAbort);
    this.onAbort = undefined;
    this.signal = undefined;
  }
}
