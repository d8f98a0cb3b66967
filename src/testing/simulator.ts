// The vLLM simulator: an HTTP/1.1 server with vLLM's routes, formats, scheduling, keep-alive behaviour and faults.
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Engine, type EngineJob } from './engine.js';
import {
  applyJitter,
  createRandom,
  drawOutputLength,
  embed,
  generateTokens,
  hashString,
} from './generation.js';
import { type FinishReason, SimulatorMetrics } from './metrics.js';
import {
  type ResolvedOptions,
  resolveFaults,
  resolveOptions,
  type SimulatorFaults,
  type VllmSimulatorOptions,
} from './options.js';
import { PrefixCache } from './prefix-cache.js';
import {
  type GenerationRequest,
  isProblem,
  parseEmbeddingRequest,
  parseGenerationRequest,
} from './requests.js';
import {
  type Choice,
  chatCompletion,
  DONE_EVENT,
  embeddingList,
  errorBody,
  modelList,
  type ResponseContext,
  streamChunk,
  streamErrorEvent,
  textCompletion,
  usageChunk,
} from './responses.js';

/** Counters of what the simulator has seen; `/metrics` reports the same figures. */
export interface SimulatorStats {
  /** TCP connections accepted since start. */
  connectionsAccepted: number;
  /** TCP connections open now. */
  connectionsOpen: number;
  /** HTTP requests received on any route. */
  requestsReceived: number;
  /** Generation requests holding a running slot now. */
  running: number;
  /** Generation requests in the waiting queue now. */
  waiting: number;
  /** Prompt tokens looked up in the prefix cache, and of them found there (vLLM's prefix_cache_queries/_hits). */
  prefixCacheQueries: number;
  prefixCacheHits: number;
  /** Generation requests that finished normally (`stop` or `length`). */
  completed: number;
  /** Generation requests whose client went away before the end (their slot was freed at once). */
  aborted: number;
  /** Generation requests that ended with an injected error or a socket reset. */
  failed: number;
  /** Requests refused with 503 because the waiting queue was full. */
  rejected: number;
  promptTokens: number;
  generationTokens: number;
  /** LoRA adapters loaded through `/v1/load_lora_adapter` (each accepted call counts, even a duplicate in flight). */
  loraLoads: number;
  /** Requests whose adapter was not resident and was swapped in (see `maxLoras`). */
  loraSwaps: number;
}

export interface VllmSimulator {
  /** Base URL, e.g. `http://127.0.0.1:41234` (append `/v1` for OpenAI SDKs). */
  readonly url: string;
  readonly port: number;
  readonly host: string;
  /** The served model name. */
  readonly model: string;
  /** The LoRA adapters it serves now, name → path (started with, or loaded at run time). */
  readonly adapters: ReadonlyMap<string, string>;
  stats(): SimulatorStats;
  /** The faults in force now (rules with `times` count down as they hit). */
  readonly faults: Readonly<SimulatorFaults>;
  /** Replaces the active faults (validated like the start option). */
  setFaults(faults: SimulatorFaults): Promise<void>;
  /** Removes every fault. */
  clearFaults(): Promise<void>;
  /** Stops listening, aborts everything in flight and closes every connection. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

interface SocketState {
  /** Requests this connection has finished (a request on a connection with `served > 0` reuses it). */
  served: number;
  inFlight: number;
  idleSince: number;
  idleTimer: NodeJS.Timeout | undefined;
}

interface Job extends EngineJob {
  timer: NodeJS.Timeout | undefined;
}

// Per-socket and per-response state lives on the objects themselves: cheaper than Map look-ups on the hot path.
const kState = Symbol('vllm-kit.sim.socket');
const kJob = Symbol('vllm-kit.sim.job');
type SocketWithState = Socket & { [kState]?: SocketState };
type ResponseWithJob = ServerResponse & { [kJob]?: Job };
const socketState = (socket: Socket): SocketState | undefined => (socket as SocketWithState)[kState];

const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
} as const;

/**
 * Starts a vLLM simulator on 127.0.0.1 (port 0 by default) and resolves once it listens.
 *
 * @example
 * const sim = await startVllmSimulator({ ttftMs: 20, itlMs: 5 });
 * const res = await fetch(`${sim.url}/v1/chat/completions`, { method: 'POST', … });
 * await sim.close();
 */
export async function startVllmSimulator(options: VllmSimulatorOptions = {}): Promise<VllmSimulator> {
  const simulator = new Simulator(resolveOptions(options));
  await simulator.listen();
  return simulator;
}

class Simulator implements VllmSimulator {
  port = 0;
  readonly host: string;
  readonly model: string;
  readonly options: ResolvedOptions;
  private activeFaults: SimulatorFaults;
  /** False when no fault is set: the hot path then skips every fault check. */
  private faulty = false;
  readonly engine: Engine;
  readonly metrics = new SimulatorMetrics();
  /** Automatic prefix caching (undefined when `prefixCacheTokens` is 0). */
  readonly prefixCache: PrefixCache | undefined;
  private readonly http: Server;
  private readonly listener: NetServer;
  private readonly sockets = new Set<Socket>();
  private readonly modelJson: string;
  private readonly idPrefix = randomBytes(6).toString('hex');
  private readonly createdAt = Math.floor(Date.now() / 1000);
  private nextId = 0;
  readonly adapters = new Map<string, string>();
  /** Adapters resident in the batch, least recently used first (at most `maxLoras`). */
  private readonly resident: string[] = [];
  /** `vllm:lora_requests_info` series: labels → the wall-clock time they were last set, newest last. */
  private readonly loraInfo = new Map<string, number>();
  private loraLoads = 0;
  private loraSwaps = 0;
  private completed = 0;
  private aborted = 0;
  private failed = 0;
  private rejected = 0;
  private listening = false;
  private closed = false;

  constructor(options: ResolvedOptions) {
    this.options = options;
    this.host = options.host;
    this.model = options.model;
    this.modelJson = JSON.stringify(options.model);
    this.activeFaults = options.faults;
    this.faulty = Object.keys(options.faults).length > 0;
    this.engine = new Engine(options.maxNumSeqs, options.maxQueue, options.maxLoras);
    for (const name of options.loraAdapters) this.adapters.set(name, `/adapters/${name}`);
    if (this.adapters.size > 0) this.stampLoraInfo();
    this.engine.onAdapterChange = () => this.stampLoraInfo();
    this.prefixCache = options.prefixCacheTokens > 0 ? new PrefixCache(options.prefixCacheTokens) : undefined;
    // keepAliveTimeout 0: Node then neither closes idle sockets nor sends a `Keep-Alive: timeout=` hint. uvicorn sends
    // no hint either, and its idle timeout is reproduced per socket below.
    this.http = createServer({ keepAliveTimeout: 0 }, (req, res) => this.handle(req, res));
    this.http.keepAliveTimeout = 0;
    // A separate listener lets `refuseConnections` stop accepting while existing connections carry on.
    // noDelay as node:http's own listener sets it: without it Nagle's algorithm delays small responses.
    this.listener = createNetServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  get url(): string {
    const host = this.host.includes(':') ? `[${this.host}]` : this.host;
    return `http://${host}:${this.port}`;
  }

  get faults(): Readonly<SimulatorFaults> {
    return this.activeFaults;
  }

  async listen(): Promise<void> {
    await this.startListening(this.options.port);
    if (this.activeFaults.refuseConnections) this.stopListening();
  }

  async setFaults(faults: SimulatorFaults): Promise<void> {
    this.applyFaults(resolveFaults(faults));
    if (this.closed) return;
    if (this.activeFaults.refuseConnections && this.listening) this.stopListening();
    if (!this.activeFaults.refuseConnections && !this.listening) await this.startListening(this.port);
  }

  private applyFaults(faults: SimulatorFaults): void {
    this.activeFaults = faults;
    this.faulty = Object.keys(faults).length > 0;
  }

  clearFaults(): Promise<void> {
    return this.setFaults({});
  }

  stats(): SimulatorStats {
    return {
      connectionsAccepted: this.metrics.connections,
      connectionsOpen: this.sockets.size,
      requestsReceived: this.metrics.requests,
      running: this.engine.running,
      waiting: this.engine.waiting,
      completed: this.completed,
      aborted: this.aborted,
      failed: this.failed,
      rejected: this.rejected,
      promptTokens: this.metrics.promptTokens,
      generationTokens: this.metrics.generationTokens,
      prefixCacheQueries: this.prefixCache?.queries ?? 0,
      prefixCacheHits: this.prefixCache?.hits ?? 0,
      loraLoads: this.loraLoads,
      loraSwaps: this.loraSwaps,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.listening) this.stopListening();
    // Destroying every socket also closes every open response, which aborts its job.
    for (const socket of this.sockets) {
      const state = socketState(socket);
      if (state?.idleTimer) clearTimeout(state.idleTimer);
      socket.destroy();
    }
    this.sockets.clear();
    this.http.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ── connections ────────────────────────────────────────────────────────────────────────────────────────────

  private startListening(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      this.listener.once('error', onError);
      this.listener.listen({ port, host: this.host }, () => {
        this.listener.off('error', onError);
        const address = this.listener.address();
        if (address !== null && typeof address === 'object') this.port = address.port;
        this.listening = true;
        resolve();
      });
    });
  }

  /** Closes the listening socket at once; unlike `close(cb)` it does not wait for open connections to end. */
  private stopListening(): void {
    this.listening = false;
    this.listener.close();
  }

  private accept(socket: Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    this.metrics.connections++;
    const state: SocketState = { served: 0, inFlight: 0, idleSince: performance.now(), idleTimer: undefined };
    (socket as SocketWithState)[kState] = state;
    this.sockets.add(socket);
    socket.once('close', () => {
      if (state.idleTimer) clearTimeout(state.idleTimer);
      this.sockets.delete(socket);
    });
    this.armIdleTimer(socket, state);
    this.http.emit('connection', socket);
  }

  /** One lazy timer per socket: it re-arms itself for the remaining time instead of being reset on every request. */
  private armIdleTimer(socket: Socket, state: SocketState): void {
    if (state.idleTimer !== undefined) return;
    const timeout = this.options.keepAliveTimeoutMs;
    const check = () => {
      state.idleTimer = undefined;
      if (state.inFlight > 0) return;
      const idle = performance.now() - state.idleSince;
      if (idle >= timeout - 1) socket.destroy();
      else state.idleTimer = setTimeout(check, timeout - idle).unref();
    };
    state.idleTimer = setTimeout(check, timeout).unref();
  }

  // ── requests ───────────────────────────────────────────────────────────────────────────────────────────────

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.metrics.requests++;
    const socket = req.socket;
    const state = socketState(socket);
    const reused = state !== undefined && state.served > 0;
    if (state) state.inFlight++;
    // One listener per request: it frees the job (if the client left early) and tracks the socket's idle time.
    res.once('close', () => {
      const job = (res as ResponseWithJob)[kJob];
      if (job !== undefined && job.state !== 'done') this.abort(job);
      if (state) {
        state.inFlight--;
        state.served++;
        if (state.inFlight === 0) {
          state.idleSince = performance.now();
          if (!socket.destroyed) this.armIdleTimer(socket, state);
        }
      }
    });
    const requestId = req.headers['x-request-id'];
    if (typeof requestId === 'string') res.setHeader('x-request-id', requestId);

    const url = req.url ?? '/';
    const query = url.indexOf('?');
    const path = query === -1 ? url : url.slice(0, query);
    const method = req.method ?? 'GET';
    this.options.onRequest?.({ method, path, headers: req.headers });

    if (this.options.apiKey !== undefined && path.startsWith('/v1')) {
      if (req.headers.authorization !== `Bearer ${this.options.apiKey}`) {
        req.resume();
        this.sendJson(res, 401, '{"error":"Unauthorized"}');
        return;
      }
    }

    switch (path) {
      case '/v1/chat/completions':
      case '/v1/completions':
      case '/v1/embeddings':
        if (method !== 'POST') return this.methodNotAllowed(req, res);
        if (!this.checkTask(res, path)) {
          req.resume();
          return;
        }
        this.readJson(req, res, (body) => {
          if (path === '/v1/embeddings') this.embeddings(res, body, reused, socket);
          else this.generate(res, body, path === '/v1/chat/completions', reused, socket);
        });
        return;
      case '/v1/models':
        if (method !== 'GET') return this.methodNotAllowed(req, res);
        req.resume();
        return this.sendJson(
          res,
          200,
          modelList(this.model, this.createdAt, this.options.maxModelLen, this.adapters),
        );
      case '/v1/load_lora_adapter':
      case '/v1/unload_lora_adapter':
        // vLLM registers these routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
        if (!this.options.runtimeLoraUpdating) break;
        if (method !== 'POST') return this.methodNotAllowed(req, res);
        this.readJson(req, res, (body) => {
          if (path === '/v1/load_lora_adapter') this.loadAdapter(res, body);
          else this.unloadAdapter(res, body);
        });
        return;
      case '/health':
      case '/ping':
        if (method !== 'GET' && !(path === '/ping' && method === 'POST'))
          return this.methodNotAllowed(req, res);
        req.resume();
        res.writeHead(this.activeFaults.unhealthy ? 503 : 200, { 'content-length': '0' });
        res.end();
        return;
      case '/version':
        if (method !== 'GET') return this.methodNotAllowed(req, res);
        req.resume();
        return this.sendJson(res, 200, `{"version":${JSON.stringify(this.options.version)}}`);
      case '/load':
        if (method !== 'GET') return this.methodNotAllowed(req, res);
        req.resume();
        return this.sendJson(res, 200, `{"server_load":${this.engine.running + this.engine.waiting}}`);
      case '/metrics': {
        if (method !== 'GET') return this.methodNotAllowed(req, res);
        req.resume();
        const text = this.metrics.render(
          this.model,
          this.engine.running,
          this.engine.waiting,
          this.options.maxNumSeqs,
          this.prefixCache,
          this.options.prefixCacheTokens,
        );
        const body = text + this.renderLoraInfo();
        res.writeHead(200, {
          'content-type': 'text/plain; version=0.0.4; charset=utf-8',
          'content-length': Buffer.byteLength(body),
        });
        res.end(body);
        return;
      }
    }
    req.resume();
    this.sendJson(res, 404, '{"detail":"Not Found"}');
  }

  // ── LoRA adapters ──────────────────────────────────────────────────────────────────────────────────────────

  /** vLLM's `load_lora_adapter`: 400 without a name and path or when already loaded; 200 text after `loraLoadMs`. */
  private loadAdapter(res: ServerResponse, body: unknown): void {
    const { lora_name: name, lora_path: path } = (body ?? {}) as { lora_name?: unknown; lora_path?: unknown };
    if (typeof name !== 'string' || name === '' || typeof path !== 'string' || path === '')
      return this.sendError(res, 400, "Both 'lora_name' and 'lora_path' must be provided.");
    if (this.adapters.has(name) || name === this.model)
      return this.sendError(res, 400, `The lora adapter '${name}' has already been loaded.`);
    this.loraLoads++;
    const done = () => {
      this.adapters.set(name, path);
      this.stampLoraInfo();
      this.sendText(res, `Success: LoRA adapter '${name}' added successfully.`);
    };
    if (this.options.loraLoadMs === 0) done();
    else setTimeout(done, this.options.loraLoadMs).unref();
  }

  private unloadAdapter(res: ServerResponse, body: unknown): void {
    const name = ((body ?? {}) as { lora_name?: unknown }).lora_name;
    if (typeof name !== 'string' || name === '')
      return this.sendError(res, 400, "'lora_name' needs to be provided to unload a LoRA adapter.");
    if (!this.adapters.delete(name))
      return this.sendError(res, 404, `The lora adapter '${name}' cannot be found.`);
    const at = this.resident.indexOf(name);
    if (at !== -1) this.resident.splice(at, 1);
    this.sendText(res, `Success: LoRA adapter '${name}' removed successfully.`);
  }

  private sendText(res: ServerResponse, text: string): void {
    if (res.headersSent || res.destroyed) return;
    res.writeHead(200, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  }

  /** A request for `adapter` starts running: the first-token delay of swapping it in, 0 when it is resident. */
  activateAdapter(adapter: string): number {
    const at = this.resident.indexOf(adapter);
    if (at !== -1) {
      this.resident.splice(at, 1);
      this.resident.push(adapter);
      return 0;
    }
    this.resident.push(adapter);
    if (this.resident.length > this.options.maxLoras) this.resident.shift();
    this.loraSwaps++;
    return this.options.loraSwapMs;
  }

  /** Sets the series of the adapters running and waiting now to the current time (vLLM's set_to_current_time). */
  private stampLoraInfo(): void {
    const running = [...this.engine.adapterRunning.keys()].join(',');
    const waiting = [...this.engine.adapterWaiting.keys()].join(',');
    const labels = `max_lora="${this.options.maxLoras}",running_lora_adapters="${running}",waiting_lora_adapters="${waiting}"`;
    this.loraInfo.delete(labels);
    this.loraInfo.set(labels, Date.now() / 1000);
    // vLLM keeps every label set it has seen; the simulator keeps the newest 32.
    if (this.loraInfo.size > 32) this.loraInfo.delete(this.loraInfo.keys().next().value!);
  }

  /** `vllm:lora_requests_info`, only once an adapter has been served or loaded (as in vLLM). */
  private renderLoraInfo(): string {
    if (this.loraInfo.size === 0) return '';
    const lines = [
      '# HELP vllm:lora_requests_info Running stats on lora requests.',
      '# TYPE vllm:lora_requests_info gauge',
    ];
    const model = JSON.stringify(this.model);
    for (const [labels, at] of this.loraInfo)
      lines.push(`vllm:lora_requests_info{${labels},model_name=${model}} ${at}`);
    return `${lines.join('\n')}\n`;
  }

  private methodNotAllowed(req: IncomingMessage, res: ServerResponse): void {
    req.resume();
    this.sendJson(res, 405, '{"detail":"Method Not Allowed"}');
  }

  sendJson(res: ServerResponse, status: number, body: string, extra?: string[]): void {
    if (res.headersSent || res.destroyed) return;
    // A flat header array is the cheapest form for Node to serialise.
    const headers = ['content-type', 'application/json', 'content-length', String(Buffer.byteLength(body))];
    if (extra !== undefined) headers.push(...extra);
    res.writeHead(status, headers);
    res.end(body);
  }

  private sendError(res: ServerResponse, status: number, message: string, param: string | null = null): void {
    this.sendJson(res, status, errorBody(this.options.errorShape, status, message, param));
  }

  /** Reads the whole body and parses it as JSON, answering 400 itself on a wrong content type or malformed JSON. */
  private readJson(req: IncomingMessage, res: ServerResponse, next: (body: unknown) => void): void {
    const contentType = req.headers['content-type'] ?? '';
    const semicolon = contentType.indexOf(';');
    const mediaType = (semicolon === -1 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase();
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      if (mediaType !== 'application/json') {
        this.sendError(res, 400, "Unsupported Media Type: Only 'application/json' is allowed");
        return;
      }
      const raw = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      let body: unknown;
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch (error) {
        this.sendError(res, 400, `JSON decode error: ${(error as Error).message}`);
        return;
      }
      next(body);
    });
  }

  /** Applies a fault rule if it is active, counting down its `times`. */
  take<K extends keyof SimulatorFaults>(name: K): SimulatorFaults[K] | undefined {
    if (!this.faulty) return undefined;
    const rule = this.activeFaults[name];
    if (rule === undefined || typeof rule !== 'object') return undefined;
    const counted = rule as { times?: number };
    if (counted.times !== undefined) {
      counted.times--;
      if (counted.times <= 0) {
        const rest = { ...this.activeFaults };
        delete rest[name];
        this.applyFaults(rest);
      }
    }
    return rule;
  }

  /** Faults that answer before the engine is involved. Returns true when the request was dealt with. */
  private requestFaults(res: ServerResponse, reused: boolean, socket: Socket): boolean {
    if (!this.faulty) return false;
    const reset = this.activeFaults.resetBeforeResponse;
    if (reset !== undefined && (!reset.onlyReused || reused) && this.take('resetBeforeResponse')) {
      this.failed++;
      socket.resetAndDestroy();
      return true;
    }
    const status = this.take('status');
    if (status !== undefined) {
      this.failed++;
      const headers = status.retryAfterSec === undefined ? [] : ['retry-after', String(status.retryAfterSec)];
      const body =
        status.body ??
        errorBody(this.options.errorShape, status.status, `Simulated ${status.status} response`, null);
      this.sendJson(res, status.status, body, headers);
      return true;
    }
    return false;
  }

  private checkModel(res: ServerResponse, model: string | undefined): boolean {
    if (model === undefined || model === this.model || this.adapters.has(model)) return true;
    this.sendError(res, 404, `The model \`${model}\` does not exist.`, 'model');
    return false;
  }

  /** vLLM answers 400 on a route the model's task does not serve. */
  private checkTask(res: ServerResponse, path: string): boolean {
    const task = this.options.task;
    const embedding = path === '/v1/embeddings';
    if (task === 'all' || (task === 'embed') === embedding) return true;
    const api = embedding
      ? 'Embeddings'
      : path === '/v1/chat/completions'
        ? 'Chat Completions'
        : 'Completions';
    this.sendError(res, 400, `The model does not support ${api} API`);
    return false;
  }

  /** A response's id, time and model (an adapter's request is answered in the adapter's name, as vLLM does). */
  newContext(prefix: string, adapter?: string): ResponseContext {
    return {
      id: `${prefix}${this.idPrefix}${(this.nextId++).toString(16)}`,
      created: Math.floor(Date.now() / 1000),
      modelJson: adapter === undefined ? this.modelJson : JSON.stringify(adapter),
    };
  }

  /** The adapter a request names, undefined for the base model. */
  adapterOf(model: string | undefined): string | undefined {
    return model !== undefined && model !== this.model && this.adapters.has(model) ? model : undefined;
  }

  private embeddings(res: ServerResponse, body: unknown, reused: boolean, socket: Socket): void {
    const request = parseEmbeddingRequest(body);
    if (isProblem(request)) return this.sendError(res, request.status, request.message, request.param);
    if (!this.checkModel(res, request.model)) return;
    if (this.requestFaults(res, reused, socket)) return;
    if (this.take('stall')) return;
    if (this.engine.full) return this.rejectQueueFull(res);
    const started = performance.now();
    const job: Job = {
      state: 'new',
      enqueuedAt: 0,
      timer: undefined,
      start: () => {
        const queued = performance.now() - job.enqueuedAt;
        this.metrics.queueTime.observe(queued / 1000);
        const finish = () => {
          job.timer = undefined;
          this.engine.finish(job);
          this.metrics.promptTokens += request.promptTokens;
          this.metrics.e2e.observe((performance.now() - started) / 1000);
          this.finishWith('stop');
          const vectors = request.inputs.map((text) =>
            embed(text, this.options.embeddingDimensions, this.options.seed),
          );
          this.sendJson(
            res,
            200,
            embeddingList(
              this.newContext('embd-', this.adapterOf(request.model)),
              vectors,
              request.promptTokens,
              request.base64,
            ),
          );
        };
        const delay = applyJitter(this.options.ttftMs, this.options.jitter, Math.random);
        if (delay === 0) finish();
        else job.timer = setTimeout(finish, delay);
      },
    };
    this.watchAbort(res, job);
    this.engine.submit(job, started);
  }

  private rejectQueueFull(res: ServerResponse): void {
    this.rejected++;
    this.sendError(res, 503, 'The server is overloaded: the waiting queue is full (max-num-queued-reqs).');
  }

  finishWith(reason: FinishReason): void {
    this.metrics.finished[reason]++;
    if (reason === 'stop' || reason === 'length') this.completed++;
    else if (reason === 'abort') this.aborted++;
    else this.failed++;
  }

  /** Binds a job to its response: if the client goes away first, the slot (or queue place) is freed at once. */
  watchAbort(res: ServerResponse, job: Job): void {
    (res as ResponseWithJob)[kJob] = job;
  }

  private abort(job: Job): void {
    if (job.timer !== undefined) clearTimeout(job.timer);
    job.timer = undefined;
    this.engine.finish(job);
    this.finishWith('abort');
  }

  private generate(res: ServerResponse, body: unknown, chat: boolean, reused: boolean, socket: Socket): void {
    const request = parseGenerationRequest(body, chat);
    if (isProblem(request)) return this.sendError(res, request.status, request.message, request.param);
    if (!this.checkModel(res, request.model)) return;
    const maxModelLen = this.options.maxModelLen;
    const requested = request.promptTokens + (request.maxTokens ?? 0);
    if (requested > maxModelLen || request.promptTokens >= maxModelLen) {
      return this.sendError(
        res,
        400,
        `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${requested} tokens ` +
          `(${request.promptTokens} in the messages, ${request.maxTokens ?? 0} in the completion). ` +
          'Please reduce the length of the messages or completion.',
      );
    }
    if (this.requestFaults(res, reused, socket)) return;
    if (this.engine.full) return this.rejectQueueFull(res);

    // vLLM sends the 200 and headers of a stream before the request is even queued.
    if (request.stream) {
      res.writeHead(200, SSE_HEADERS);
      res.flushHeaders();
    }
    if (this.take('stall')) return;
    new Generation(this, res, request).submit();
  }
}

/** One chat or completion request from queueing to its last token. */
class Generation implements Job {
  state: Job['state'] = 'new';
  enqueuedAt = 0;
  timer: NodeJS.Timeout | undefined = undefined;
  private readonly sim: Simulator;
  private readonly random: () => number;
  private readonly tokens: string[][] = [];
  private readonly finishReason: 'stop' | 'length';
  private readonly length: number;
  private readonly ctx: ResponseContext;
  private step = 0;
  private startedAt = 0;
  private lastTokenAt = 0;
  private readonly resetAfter: number | undefined;
  private readonly errorAfter: { afterTokens?: number; message?: string; status?: number } | undefined;
  private readonly extraFirstTokenMs: number;
  /** Prompt tokens found in the prefix cache when the request started running. */
  private cachedTokens = 0;
  readonly adapter: string | undefined;

  constructor(
    simulator: Simulator,
    private readonly res: ServerResponse,
    private readonly request: GenerationRequest,
  ) {
    this.sim = simulator;
    const options = this.sim.options;
    this.random = createRandom(hashString(request.promptText, request.seed ?? options.seed));
    if (request.maxTokens !== undefined) {
      this.length = request.maxTokens;
      this.finishReason = 'length';
    } else {
      const room = options.maxModelLen - request.promptTokens;
      const drawn = drawOutputLength(options.outputTokens, this.random);
      this.length = Math.min(drawn, room);
      this.finishReason = drawn > room ? 'length' : 'stop';
    }
    for (let i = 0; i < request.choices; i++) this.tokens.push(generateTokens(this.length, this.random));
    this.adapter = this.sim.adapterOf(request.model);
    this.ctx = this.sim.newContext(request.chat ? 'chatcmpl-' : 'cmpl-', this.adapter);
    this.resetAfter = this.sim.take('resetMidStream')?.afterTokens;
    this.errorAfter = this.sim.take('streamError');
    this.extraFirstTokenMs = this.sim.take('slowFirstToken')?.delayMs ?? 0;
  }

  submit(): void {
    this.sim.watchAbort(this.res, this);
    this.sim.engine.submit(this, performance.now());
  }

  start(): void {
    const now = performance.now();
    this.startedAt = this.enqueuedAt;
    this.sim.metrics.queueTime.observe((now - this.enqueuedAt) / 1000);
    // `promptTokens` is one prompt's: a list of prompts is prefilled (and billed, in the final usage) once per prompt.
    this.sim.metrics.promptTokens += this.request.promptTokens * this.request.prompts;
    const options = this.sim.options;
    // Prefill only what the prefix cache does not hold.
    this.cachedTokens = this.sim.prefixCache?.admit(this.request.promptText, this.request.promptTokens) ?? 0;
    const prefillMs = (this.request.promptTokens - this.cachedTokens) * options.prefillMsPerToken;
    const swapMs = this.adapter === undefined ? 0 : this.sim.activateAdapter(this.adapter);
    const ttft =
      applyJitter(options.ttftMs + prefillMs + swapMs, options.jitter, this.random) + this.extraFirstTokenMs;
    this.schedule(ttft);
  }

  /** Runs the next step after `delayMs`, or synchronously when there is no delay. */
  private schedule(delayMs: number): void {
    if (delayMs > 0) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.advance();
      }, delayMs);
      return;
    }
    this.advance();
  }

  private interTokenDelay(): number {
    const options = this.sim.options;
    if (options.itlMs === 0) return 0;
    const load = this.sim.engine.running / options.maxNumSeqs;
    return applyJitter(options.itlMs * (1 + options.batchSlowdown * load), options.jitter, this.random);
  }

  /** Emits token steps until a delay is due or the sequence ends. */
  private advance(): void {
    const stream = this.request.stream;
    let out = '';
    while (this.state === 'running') {
      const now = performance.now();
      if (this.step === 0) this.sim.metrics.ttft.observe((now - this.startedAt) / 1000);
      else this.sim.metrics.itl.observe((now - this.lastTokenAt) / 1000);
      this.lastTokenAt = now;

      if (this.resetAfter !== undefined && this.step >= this.resetAfter) return this.reset(out);
      if (this.errorAfter !== undefined && this.step >= (this.errorAfter.afterTokens ?? 0))
        return this.fail(out);

      if (stream) out += this.streamStep();
      this.step++;
      this.sim.metrics.generationTokens += this.request.choices;
      if (this.step >= this.length) return this.complete(out);

      const delay = this.interTokenDelay();
      if (delay > 0) {
        if (out !== '') this.res.write(out);
        this.schedule(delay);
        return;
      }
    }
  }

  private streamStep(): string {
    const { chat, choices } = this.request;
    const last = this.step === this.length - 1;
    let out = '';
    const prompt = this.request.continuousUsage ? this.request.promptTokens : undefined;
    for (let c = 0; c < choices; c++) {
      if (chat && this.step === 0) {
        const usage = prompt === undefined ? undefined : { prompt, completion: 0 };
        out += streamChunk(this.ctx, true, c, '', null, true, usage);
      }
      const usage = prompt === undefined ? undefined : { prompt, completion: this.step + 1 };
      const finish = last ? this.finishReason : null;
      out += streamChunk(this.ctx, chat, c, this.tokens[c]![this.step]!, finish, false, usage);
    }
    return out;
  }

  private complete(out: string): void {
    this.sim.engine.finish(this);
    this.sim.finishWith(this.finishReason);
    this.sim.metrics.e2e.observe((performance.now() - this.startedAt) / 1000);
    const usage = {
      prompt: this.request.promptTokens * this.request.prompts,
      completion: this.length * this.request.choices,
      ...(this.sim.options.promptTokensDetails ? { cached: this.cachedTokens } : {}),
    };
    if (this.request.stream) {
      if (this.request.includeUsage) out += usageChunk(this.ctx, this.request.chat, usage);
      this.res.end(out + DONE_EVENT);
      return;
    }
    const choices: Choice[] = this.tokens.map((tokens) => ({
      text: tokens.join(''),
      finishReason: this.finishReason,
    }));
    const body = this.request.chat
      ? chatCompletion(this.ctx, choices, usage)
      : textCompletion(this.ctx, choices, usage);
    this.sim.sendJson(this.res, 200, body);
  }

  private reset(out: string): void {
    this.sim.engine.finish(this);
    this.sim.finishWith('error');
    const socket = this.res.socket;
    if (out !== '' && socket) {
      // Flush what was generated so far, then reset: the client sees a stream cut before `[DONE]`.
      this.res.write(out, () => socket.resetAndDestroy());
    } else {
      socket?.resetAndDestroy();
    }
  }

  private fail(out: string): void {
    this.sim.engine.finish(this);
    this.sim.finishWith('error');
    const status = this.errorAfter?.status ?? 500;
    const message = this.errorAfter?.message ?? 'Simulated engine failure';
    if (this.request.stream) {
      this.res.end(out + streamErrorEvent(this.sim.options.errorShape, status, message));
      return;
    }
    this.sim.sendJson(this.res, status, errorBody(this.sim.options.errorShape, status, message));
  }
}
