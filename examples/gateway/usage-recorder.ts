// Lifetime usage per key, written to the key store in batches: each worker adds up its responses in memory and
// writes them in one transaction at most `flushMs` after the first unwritten one, and on close (drain). A crash loses
// at most that one batch.
//
// The database may fail (a restart, a failover, a locked SQLite file). A batch whose write failed is kept, with its id,
// and written again — first, before anything newer — until it goes through; meanwhile new usage accumulates in the
// next batch. The id makes the write idempotent: a commit whose answer was lost is not added twice. One log line when
// writes start failing, one when they resume.
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { describeDatabaseError, type KeyStore, type UsageDelta } from './key-store.js';

/** Retry delay after a failed write: doubling from `flushMs`, at most this, ms. */
const MAX_RETRY_MS = 10_000;

export class UsageRecorder {
  private pending = new Map<string, UsageDelta>();
  /** A batch whose write failed: its outcome is unknown, so it is retried as it is, under its id. */
  private inDoubt: { id: string; deltas: UsageDelta[] } | undefined;
  private failures = 0;
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
    this.schedule(this.flushMs);
  }

  /** Tokens and requests recorded but not yet in the store (for tests and the drain log). */
  unwritten(): { batches: number; requests: number } {
    let requests = 0;
    for (const delta of this.pending.values()) requests += delta.requests;
    for (const delta of this.inDoubt?.deltas ?? []) requests += delta.requests;
    return { batches: (this.inDoubt ? 1 : 0) + (this.pending.size > 0 ? 1 : 0), requests };
  }

  /** Writes what has been recorded; resolves once it is in the store (or kept for the next try). */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    // One write at a time, in order.
    this.writing = this.writing.then(() => this.write());
    return this.writing;
  }

  private schedule(delayMs: number): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => void this.flush(), delayMs);
    this.timer.unref();
  }

  private async write(): Promise<void> {
    for (;;) {
      if (this.inDoubt === undefined) {
        if (this.pending.size === 0) return;
        this.inDoubt = { id: randomUUID(), deltas: [...this.pending.values()] };
        this.pending = new Map();
      }
      try {
        await this.store.addUsage(this.inDoubt.deltas, this.inDoubt.id);
      } catch (error) {
        if (this.failures++ === 0) {
          this.logger.warn(
            { err: { message: describeDatabaseError(error) }, keys: this.inDoubt.deltas.length },
            'usage write failed; keeping usage in memory and retrying',
          );
        }
        this.schedule(Math.min(this.flushMs * 2 ** Math.min(this.failures, 10), MAX_RETRY_MS));
        return;
      }
      this.inDoubt = undefined;
      if (this.failures > 0) {
        this.logger.info({ failedAttempts: this.failures }, 'usage writes resumed');
        this.failures = 0;
      }
    }
  }

  /** Writes the last batch and stops the timer; what the store still refuses is logged as lost. */
  async close(): Promise<void> {
    await this.flush();
    // A write that failed just now gets one more try before the worker exits.
    if (this.inDoubt !== undefined) await this.flush();
    clearTimeout(this.timer);
    this.timer = undefined;
    const left = this.unwritten();
    if (left.requests > 0) {
      this.logger.error(left, 'usage not written: the key store is unavailable at shutdown');
    }
  }
}
