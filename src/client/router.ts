// The client's undici dispatcher: one keep-alive Pool per replica, least-outstanding choice, passive ejection with
// /health re-admission, and the replay of requests that died on a reused socket before any response byte.
import { channel } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import { Dispatcher, Pool } from 'undici';
import type { ResolvedClientOptions } from './options.js';

type Handler = Dispatcher.DispatchHandler;

/** Where one dispatch attempt went: its socket, whether the socket had served a request before, and bytes read. */
interface Attempt {
  method: string;
  path: string;
  socket: Socket | undefined;
  reused: boolean;
  bytesReadAtSend: number;
}

const sendHeaders = channel('undici:client:sendHeaders');

/**
 * Learns which socket each request is written to. undici calls the handler's `onRequestStart` and, synchronously
 * right after, publishes `undici:client:sendHeaders` with the socket: the attempt waiting here is the one it names.
 */
export class SocketTracker {
  private waiting: Attempt | undefined;
  private readonly served = new WeakMap<Socket, number>();
  reusedRequests = 0;

  private readonly onSendHeaders = (message: unknown) => {
    const attempt = this.waiting;
    if (attempt === undefined) return;
    const { socket, request } = message as { socket: Socket; request: { method: string; path: string } };
    // The request undici writes right after our onConnect is ours; the check guards against an attempt that undici
    // aborted before writing, being matched with another client's request later.
    if (request.method !== attempt.method || request.path !== attempt.path) return;
    this.waiting = undefined;
    const count = this.served.get(socket) ?? 0;
    this.served.set(socket, count + 1);
    attempt.socket = socket;
    attempt.reused = count > 0;
    attempt.bytesReadAtSend = socket.bytesRead;
    if (count > 0) this.reusedRequests++;
  };

  constructor() {
    sendHeaders.subscribe(this.onSendHeaders);
  }

  expect(attempt: Attempt): void {
    this.waiting = attempt;
  }

  close(): void {
    sendHeaders.unsubscribe(this.onSendHeaders);
  }
}

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
  private attempt: Attempt | undefined;
  private abortAttempt: Abort | undefined;
  private abortReason: Error | undefined;
  private started = false;
  private responded = false;
  private replays = 0;
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
  ) {}

  bindUpstream(upstream: Upstream): void {
    this.upstream = upstream;
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
    this.upstream?.recordSuccess();
    return this.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true;
  }

  onData(chunk: Buffer): boolean {
    return this.handler.onData?.(chunk) ?? true;
  }

  onComplete(trailers: string[] | null): void {
    if (this.upstream) this.upstream.outstanding--;
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
    const upstream = this.upstream;
    if (upstream) {
      upstream.outstanding--;
      if (!this.responded) upstream.recordFailure(error);
    }
    if (this.shouldReplay(error)) {
      this.replays++;
      this.stats.replays++;
      this.dispatch(this.opts, this);
      return;
    }
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

const CONNECTION_FAILURE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
]);

export class Upstream {
  readonly pool: Pool;
  outstanding = 0;
  consecutiveFailures = 0;
  ejected = false;
  connectionsCreated = 0;
  private probeTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly origin: string,
    private readonly options: ResolvedClientOptions,
  ) {
    this.pool = new Pool(origin, {
      connections: options.connections,
      pipelining: options.pipelining,
      keepAliveTimeout: options.keepAliveTimeoutMs,
      // A server's `Keep-Alive: timeout=` hint may shorten our idle time but never lengthen it past ours.
      keepAliveMaxTimeout: options.keepAliveTimeoutMs,
      keepAliveTimeoutThreshold: Math.min(1000, Math.floor(options.keepAliveTimeoutMs / 4)),
      allowH2: options.allowH2,
      connect: { timeout: options.connectTimeoutMs },
      headersTimeout: options.firstByteTimeoutMs,
      bodyTimeout: options.idleTimeoutMs,
    });
    this.pool.on('connect', () => {
      this.connectionsCreated++;
    });
  }

  /** A request failed before any response: count it, and take the replica out after enough in a row. */
  recordFailure(error: Error): void {
    if (!CONNECTION_FAILURE_CODES.has((error as { code?: string }).code ?? '')) return;
    this.consecutiveFailures++;
    if (!this.ejected && this.consecutiveFailures >= this.options.ejectAfterFailures) this.eject();
  }

  recordSuccess(): void {
    this.consecutiveFailures = 0;
  }

  eject(): void {
    if (this.ejected) return;
    this.ejected = true;
    this.scheduleProbe();
  }

  readmit(): void {
    this.ejected = false;
    this.consecutiveFailures = 0;
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  /** GET /health: true on a 2xx. */
  async probe(): Promise<boolean> {
    try {
      const response = await this.pool.request({
        path: '/health',
        method: 'GET',
        headersTimeout: this.options.connectTimeoutMs,
        bodyTimeout: this.options.connectTimeoutMs,
      });
      await response.body.dump();
      return response.statusCode >= 200 && response.statusCode < 300;
    } catch {
      return false;
    }
  }

  private scheduleProbe(): void {
    this.probeTimer = setTimeout(async () => {
      this.probeTimer = undefined;
      if (!this.ejected) return;
      if (await this.probe()) this.readmit();
      else if (this.ejected) this.scheduleProbe();
    }, this.options.probeIntervalMs);
    this.probeTimer.unref();
  }

  stopProbing(): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }
}

/** What the client adds to undici's dispatch options for the router. */
export interface RoutedOptions {
  /** Send to this replica (its origin) instead of choosing one. */
  replica?: string | undefined;
}

/** Sends each request to the replica with the fewest outstanding requests (round-robin among ties). */
export class Router extends Dispatcher {
  readonly upstreams: Upstream[];
  private next = 0;
  private healthTimer: NodeJS.Timeout | undefined;

  constructor(options: ResolvedClientOptions) {
    super();
    this.upstreams = options.origins.map((origin) => new Upstream(origin, options));
    if (options.healthCheckIntervalMs > 0) {
      this.healthTimer = setInterval(() => void this.checkAll(), options.healthCheckIntervalMs);
      this.healthTimer.unref();
    }
  }

  pick(): Upstream {
    const upstreams = this.upstreams;
    const count = upstreams.length;
    if (count === 1) return upstreams[0]!;
    const start = this.next;
    this.next = (start + 1) % count;
    let best: Upstream | undefined;
    for (let i = 0; i < count; i++) {
      const candidate = upstreams[(start + i) % count]!;
      if (candidate.ejected) continue;
      if (best === undefined || candidate.outstanding < best.outstanding) best = candidate;
    }
    // Every replica ejected: try them in turn rather than fail without trying.
    return best ?? upstreams[start]!;
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Handler): boolean {
    const replica = (opts as RoutedOptions).replica;
    const upstream =
      replica === undefined ? this.pick() : (this.upstreams.find((u) => u.origin === replica) ?? this.pick());
    // The replay handler (every request of the client goes through one) does the replica's accounting itself.
    if (handler instanceof ReplayHandler) {
      upstream.outstanding++;
      handler.bindUpstream(upstream);
    }
    return upstream.pool.dispatch(opts, handler);
  }

  private async checkAll(): Promise<void> {
    await Promise.all(
      this.upstreams.map(async (upstream) => {
        const healthy = await upstream.probe();
        if (healthy && upstream.ejected) upstream.readmit();
        if (!healthy && !upstream.ejected) upstream.eject();
      }),
    );
  }

  private stop(): void {
    if (this.healthTimer) clearInterval(this.healthTimer);
    this.healthTimer = undefined;
    for (const upstream of this.upstreams) upstream.stopProbing();
  }

  override async close(): Promise<void> {
    this.stop();
    await Promise.all(this.upstreams.map((u) => u.pool.close()));
  }

  override async destroy(): Promise<void> {
    this.stop();
    await Promise.all(this.upstreams.map((u) => u.pool.destroy()));
  }
}
