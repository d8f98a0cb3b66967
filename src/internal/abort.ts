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
