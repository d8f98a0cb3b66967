// The client's undici dispatcher: one keep-alive Pool per replica, least-outstanding choice, passive ejection with
// /health re-admission, and the replay of requests that died on a reused socket before any response byte.
import { channel } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import { Dispatcher, Pool } from 'undici';
import type { ResolvedClientOptions } from './options.js';
import { HashRing, hash32, loadBound, type RoutingCandidate, routingKeyOf } from './routing.js';
import type { CallTelemetry } from './telemetry.js';

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

/** A Prometheus metric's sample values (one per label set, e.g. per engine) in a text exposition. */
function sampleValues(lines: string[], name: string): number[] {
  const values: number[] = [];
  for (const line of lines) {
    if (!line.startsWith(name) || (line[name.length] !== '{' && line[name.length] !== ' ')) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) values.push(value);
  }
  return values;
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
    (this.opts as RoutedOptions).telemetry?.setOrigin(upstream.origin);
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
    (this.opts as RoutedOptions).telemetry?.onHeaders(statusCode);
    return this.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true;
  }

  onData(chunk: Buffer): boolean {
    (this.opts as RoutedOptions).telemetry?.onData(chunk);
    return this.handler.onData?.(chunk) ?? true;
  }

  onComplete(trailers: string[] | null): void {
    if (this.upstream) this.upstream.outstanding--;
    (this.opts as RoutedOptions).telemetry?.onComplete();
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
    const telemetry = (this.opts as RoutedOptions).telemetry;
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
  /** Keyed requests that went to the replica their key maps to. */
  prefixRouted = 0;
  /** Keyed requests that came here because their own replica was over its bound or ejected. */
  fallbacks = 0;
  /** From the replica's /metrics, when load signals are scraped. */
  waiting: number | undefined;
  kvCacheUsage: number | undefined;
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

  /** What bounded loads count: requests in flight from here, plus the replica's own queue when scraped. */
  load(): number {
    return this.outstanding + (this.waiting ?? 0);
  }

  /** Reads the replica's load signals from its Prometheus /metrics (vLLM's names); keeps the last on failure. */
  async scrapeLoad(): Promise<void> {
    try {
      const response = await this.pool.request({
        path: '/metrics',
        method: 'GET',
        headersTimeout: this.options.connectTimeoutMs,
        bodyTimeout: this.options.connectTimeoutMs,
      });
      if (response.statusCode !== 200) {
        await response.body.dump();
        return;
      }
      const lines = (await response.body.text()).split('\n');
      // Queues add up over a replica's engines; its KV use is its fullest engine's.
      const waiting = sampleValues(lines, 'vllm:num_requests_waiting');
      const kv = sampleValues(lines, 'vllm:kv_cache_usage_perc');
      const kvUse = kv.length > 0 ? kv : sampleValues(lines, 'vllm:gpu_cache_usage_perc');
      this.waiting = waiting.length > 0 ? waiting.reduce((a, b) => a + b, 0) : undefined;
      this.kvCacheUsage = kvUse.length > 0 ? Math.max(...kvUse) : undefined;
    } catch {
      // A replica that cannot be scraped keeps its last figures; failures eject it through requests and probes.
    }
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
  /** The call's routing key (affinity key or prompt prefix), when it has one and the policy uses it. */
  routeKey?: string | undefined;
  /** The call's span, told of each attempt's replica, status and bytes. */
  telemetry?: CallTelemetry | undefined;
  /** Set by the router: the replica the request went to (errors name it). */
  servedBy?: string | undefined;
}

/**
 * Chooses a replica for each request: by prefix (consistent hashing with bounded loads), least-outstanding
 * (round-robin among ties), or the user's function; ejected replicas are skipped.
 */
export class Router extends Dispatcher {
  readonly upstreams: Upstream[];
  /** Whether requests need a routing key (computing one is skipped otherwise). */
  readonly keyed: boolean;
  private readonly ring: HashRing | undefined;
  private next = 0;
  private healthTimer: NodeJS.Timeout | undefined;
  private loadTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: ResolvedClientOptions) {
    super();
    this.upstreams = options.origins.map((origin) => new Upstream(origin, options));
    this.keyed =
      this.upstreams.length > 1 && (options.routing === 'prefix' || typeof options.routing === 'function');
    if (options.routing === 'prefix' && this.upstreams.length > 1) this.ring = new HashRing(options.origins);
    if (options.healthCheckIntervalMs > 0) {
      this.healthTimer = setInterval(() => void this.checkAll(), options.healthCheckIntervalMs);
      this.healthTimer.unref();
    }
    if (options.loadSignalsIntervalMs > 0 && this.upstreams.length > 1) {
      const scrape = () => void Promise.all(this.upstreams.map((u) => u.scrapeLoad()));
      scrape();
      this.loadTimer = setInterval(scrape, options.loadSignalsIntervalMs);
      this.loadTimer.unref();
    }
  }

  /** The routing key of a request body (for `request()` callers that parsed it, and the typed methods). */
  keyOf(body: unknown): string | undefined {
    return routingKeyOf(body, this.options.routingPrefixChars);
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
      if (best === undefined || candidate.load() < best.load()) best = candidate;
    }
    // Every replica ejected: try them in turn rather than fail without trying.
    return best ?? upstreams[start]!;
  }

  /** The next replica that is not ejected, in turn. */
  private nextInTurn(): Upstream {
    const upstreams = this.upstreams;
    for (let i = 0; i < upstreams.length; i++) {
      const candidate = upstreams[this.next]!;
      this.next = (this.next + 1) % upstreams.length;
      if (!candidate.ejected) return candidate;
    }
    return upstreams[this.next]!;
  }

  /** Bounded loads on the ring: the first replica clockwise from the key that is up and under the bound. */
  private pickByKey(key: string): Upstream {
    const upstreams = this.upstreams;
    let total = 0;
    let active = 0;
    for (const upstream of upstreams) {
      if (upstream.ejected) continue;
      total += upstream.load();
      active++;
    }
    const bound = loadBound(this.options.routingLoadFactor, this.options.routingLoadSlack, total, active);
    // The first replica the walk visits is the key's own: accepting any later one is a fallback.
    let home = -1;
    const index = this.ring!.find(hash32(key), (i) => {
      if (home === -1) home = i;
      return !upstreams[i]!.ejected && upstreams[i]!.load() + 1 <= bound;
    });
    const chosen = index === undefined ? this.pick() : upstreams[index]!;
    if (index === home) chosen.prefixRouted++;
    else chosen.fallbacks++;
    return chosen;
  }

  /** The replica a request goes to (the client asks first when it must take a permit for it). */
  choose(opts: RoutedOptions): Upstream {
    const { replica, routeKey } = opts;
    if (replica !== undefined) return this.upstreams.find((u) => u.origin === replica) ?? this.pick();
    const routing = this.options.routing;
    if (typeof routing === 'function' && this.upstreams.length > 1) {
      const url = routing({ key: routeKey, replicas: this.candidates() });
      return (url === undefined ? undefined : this.upstreams.find((u) => u.origin === url)) ?? this.pick();
    }
    if (routeKey !== undefined && this.ring !== undefined) return this.pickByKey(routeKey);
    if (routing === 'round-robin') return this.nextInTurn();
    return this.pick();
  }

  private candidates(): RoutingCandidate[] {
    return this.upstreams.map((u) => ({
      url: u.origin,
      outstanding: u.outstanding,
      ejected: u.ejected,
      waiting: u.waiting,
      kvCacheUsage: u.kvCacheUsage,
    }));
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Handler): boolean {
    const upstream = this.choose(opts as RoutedOptions);
    (opts as RoutedOptions).servedBy = upstream.origin;
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
    if (this.loadTimer) clearInterval(this.loadTimer);
    this.loadTimer = undefined;
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
