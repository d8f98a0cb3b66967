// The keep-alive replay, in front of any dispatcher. It relies on two undici behaviours: (1) undici publishes
// `undici:client:sendHeaders` synchronously when it writes a request, naming the socket (see socket-tracker.ts); (2) a
// request written to a keep-alive socket the server had just closed fails with ECONNRESET, EPIPE or UND_ERR_SOCKET
// ("other side closed") before any response byte, and dispatching the same options and handler again makes undici
// send it on another (live or new) connection — the dead socket is already gone from the pool.
import { Dispatcher } from 'undici';
import type { RoutedOptions, Upstream } from './replica-pool.js';
import type { Attempt, SocketTracker } from './socket-tracker.js';
import type { CallTelemetry } from './telemetry.js';

type Handler = Dispatcher.DispatchHandler;

const STALE_SOCKET_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'ECONNABORTED']);

/** A body undici can send again: absent, a string or bytes. Streams cannot be replayed. */
export function isReplayableBody(body: unknown): boolean {
  return body === undefined || body === null || typeof body === 'string' || body instanceof Uint8Array;
}

export interface ReplayStats {
  replays: number;
}

type Abort = (reason?: Error) => void;

/**
 * Replays a request at once when it failed on a reused keep-alive socket before any response byte: the server had
 * closed the idle socket as we wrote to it (vLLM's 5 s keep-alive race). Nothing reached the server's application,
 * so this is safe for POST too. The dead socket is gone, so the replay goes to a live or new connection.
 *
 * It speaks undici's callback handler API (onConnect/onHeaders/…), the one `request()` and `fetch()` use, so no
 * handler conversion (and no header re-encoding) happens on the hot path.
 */
export class ReplayHandler implements Handler {
  /** Set by the router when it is the dispatcher: the handler then also does the replica's accounting. */
  private upstream: Upstream | undefined;
  private routedKey: number | undefined;
  private keyRouter: { keyDone(key: number): void } | undefined;
  private attempt: Attempt | undefined;
  private abortAttempt: Abort | undefined;
  private abortReason: Error | undefined;
  private started = false;
  private responded = false;
  private replays = 0;
  /** The call's span, told of each attempt's status and bytes (the router tells it the replica). */
  private readonly telemetry: CallTelemetry | undefined;
  /** What the downstream handler calls to abort: it reaches whichever attempt is live. */
  private readonly abort: Abort = (reason) => {
    this.abortReason = reason ?? new Error('aborted');
    this.abortAttempt?.(reason);
  };

  constructor(
    private readonly opts: Dispatcher.DispatchOptions,
    private readonly handler: Handler,
    private readonly dispatch: (opts: Dispatcher.DispatchOptions, handler: Handler) => boolean,
    private readonly tracker: SocketTracker,
    private readonly stats: ReplayStats,
    private readonly maxReplays: number,
  ) {
    this.telemetry = (opts as RoutedOptions).telemetry;
  }

  bindUpstream(upstream: Upstream): void {
    this.upstream = upstream;
  }

  /** The attempt's routing key, counted in flight by the router until the attempt ends. */
  bindKey(key: number, router: { keyDone(key: number): void }): void {
    this.routedKey = key;
    this.keyRouter = router;
  }

  private keyEnded(): void {
    const key = this.routedKey;
    if (key === undefined) return;
    this.routedKey = undefined;
    this.keyRouter!.keyDone(key);
  }

  onConnect(abort: Abort, context?: unknown): void {
    this.abortAttempt = abort;
    if (this.abortReason !== undefined) {
      abort(this.abortReason);
      return;
    }
    this.attempt = {
      method: this.opts.method,
      path: this.opts.path,
      socket: undefined,
      reused: false,
      bytesReadAtSend: 0,
    };
    this.tracker.expect(this.attempt);
    if (!this.started) {
      this.started = true;
      (this.handler.onConnect as (abort: Abort, context?: unknown) => void)?.call(
        this.handler,
        this.abort,
        context,
      );
    }
  }

  onResponseStarted(): void {
    this.handler.onResponseStarted?.();
  }

  onHeaders(statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    this.responded = true;
    this.upstream?.recordStatus(statusCode);
    this.telemetry?.onHeaders(statusCode);
    return this.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true;
  }

  onData(chunk: Buffer): boolean {
    this.telemetry?.onData(chunk);
    return this.handler.onData?.(chunk) ?? true;
  }

  onComplete(trailers: string[] | null): void {
    if (this.upstream) this.upstream.outstanding--;
    this.keyEnded();
    this.telemetry?.onComplete();
    this.handler.onComplete?.(trailers);
  }

  onUpgrade(
    statusCode: number,
    headers: Buffer[] | string[] | null,
    socket: import('node:stream').Duplex,
  ): void {
    this.handler.onUpgrade?.(statusCode, headers, socket);
  }

  onBodySent(chunkSize: number, totalBytesSent: number): void {
    this.handler.onBodySent?.(chunkSize, totalBytesSent);
  }

  onError(error: Error): void {
    this.keyEnded();
    const upstream = this.upstream;
    if (upstream) {
      upstream.outstanding--;
      if (!this.responded) upstream.recordFailure(error);
    }
    const telemetry = this.telemetry;
    if (this.shouldReplay(error)) {
      this.replays++;
      this.stats.replays++;
      telemetry?.replayed(error);
      this.dispatch(this.opts, this);
      return;
    }
    telemetry?.onTransportError(error);
    this.handler.onError?.(error);
  }

  private shouldReplay(error: Error): boolean {
    if (this.attempt === undefined) return false;
    const { socket, reused, bytesReadAtSend } = this.attempt;
    return (
      !this.responded &&
      this.abortReason === undefined &&
      this.replays < this.maxReplays &&
      reused &&
      socket !== undefined &&
      socket.bytesRead === bytesReadAtSend &&
      STALE_SOCKET_CODES.has((error as { code?: string }).code ?? '') &&
      isReplayableBody(this.opts.body)
    );
  }
}

/** Puts the keep-alive replay in front of any dispatcher (the router, or one the user injected). */
export class ReplayDispatcher extends Dispatcher {
  constructor(
    private readonly inner: Dispatcher,
    private readonly tracker: SocketTracker,
    private readonly stats: ReplayStats,
    private readonly maxReplays: number,
  ) {
    super();
  }

  private readonly send = (opts: Dispatcher.DispatchOptions, handler: Handler): boolean =>
    this.inner.dispatch(opts, handler);

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Handler): boolean {
    // Handlers in undici's newer controller API (none of ours) go through untouched.
    if (typeof handler.onRequestStart === 'function') return this.inner.dispatch(opts, handler);
    return this.inner.dispatch(
      opts,
      new ReplayHandler(opts, handler, this.send, this.tracker, this.stats, this.maxReplays),
    );
  }

  override close(): Promise<void> {
    return this.inner.close();
  }

  override destroy(): Promise<void> {
    return this.inner.destroy();
  }
}
