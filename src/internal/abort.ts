// Cancellation that costs nothing until used: the structural signal type the pieces accept, and a task signal made
// only when a task asks for one.

/**
 * What vllm-kit needs of a signal: an `AbortSignal` fits, and so does any object with these members — for a server
 * that would otherwise build an `AbortController` per request (about 10 µs each) just in case the client leaves.
 */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** A real `AbortSignal` that follows `source` (aborted now if it is): for APIs that need the genuine type. */
export function toAbortSignal(source: AbortSignalLike | undefined): AbortSignal {
  if (source instanceof AbortSignal) return source;
  const controller = new AbortController();
  if (source === undefined) return controller.signal;
  if (source.aborted) controller.abort(source.reason);
  else source.addEventListener('abort', () => controller.abort(source.reason), { once: true });
  return controller.signal;
}

/**
 * The cheap {@link AbortSignalLike}: an array of listeners, no EventTarget, no DOMException. What the client makes per
 * call and the reference gateway per request (exported for servers that want the same); undici, the concurrency
 * limiter and the permit pool all take it.
 */
export class LightAbortSignal implements AbortSignalLike {
  aborted = false;
  reason: unknown = undefined;
  private listeners: (() => void)[] | undefined = undefined;

  addEventListener(_type: 'abort', listener: () => void): void {
    (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const listeners = this.listeners;
    const at = listeners === undefined ? -1 : listeners.indexOf(listener);
    if (at !== -1) listeners!.splice(at, 1);
  }

  /** Aborts once (later calls do nothing): sets `reason`, then calls each listener once. */
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.listeners;
    this.listeners = undefined;
    if (listeners !== undefined) for (const listener of listeners) listener();
  }
}
