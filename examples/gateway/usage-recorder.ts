// Lifetime usage per key, written to the key store in batches: each worker adds up its responses in memory and
// writes them in one transaction at most `flushMs` after the first unwritten one, and on close (drain). A crash loses
// at most that one batch; a failed write is kept and retried with the next.
import type { Logger } from 'pino';
import type { KeyStore, UsageDelta } from './key-store.js';

export class UsageRecorder {
  private pending = new Map<string, UsageDelta>();
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: KeyStore,
    private readonly flushMs: number,
    private readonly logger: Logger,
  ) {}

  /** Adds one response (a request, and the tokens it used) to its key's batch. */
  record(keyId: string, promptTokens: number, completionTokens: number): void {
    let delta = this.pending.get(keyId);
    if (delta === undefined) {
      delta = { keyId, requests: 0, promptTokens: 0, completionTokens: 0 };
      this.pending.set(keyId, delta);
    }
    delta.requests++;
    delta.promptTokens += promptTokens;
    delta.completionTokens += completionTokens;
    if (this.timer === undefined) {
      this.timer = setTimeout(() => void this.flush(), this.flushMs);
      this.timer.unref();
    }
  }

  /** Writes what has been recorded; resolves once it is in the store (or kept for the next try). */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size === 0) return this.writing;
    const batch = [...this.pending.values()];
    this.pending = new Map();
    // One write at a time, in order.
    this.writing = this.writing.then(() =>
      this.store.addUsage(batch).catch((error: Error) => {
        this.logger.warn(
          { err: { message: error.message }, keys: batch.length },
          'usage write failed; retrying',
        );
        for (const delta of batch) {
          const kept = this.pending.get(delta.keyId);
          if (kept === undefined) this.pending.set(delta.keyId, delta);
          else {
            kept.requests += delta.requests;
            kept.promptTokens += delta.promptTokens;
            kept.completionTokens += delta.completionTokens;
          }
        }
        if (this.timer === undefined) {
          this.timer = setTimeout(() => void this.flush(), this.flushMs);
          this.timer.unref();
        }
      }),
    );
    return this.writing;
  }

  /** Writes the last batch and stops the timer. */
  async close(): Promise<void> {
    await this.flush();
    // A write that failed just now gets one more try before the worker exits.
    if (this.pending.size > 0) await this.flush();
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
