// The client's undici dispatcher over its replicas (how a request is routed is routing-policy.ts): one keep-alive
// Pool per replica, the choice of a replica for each request (by prefix, least-outstanding, round robin or the user's
// function), passive ejection with /health re-admission, and the replicas' load signals. (The keep-alive replay in
// front of it is replay.ts.)
import { Dispatcher, Pool } from 'undici';
import { AdapterLoadError } from '../errors/index.js';
import type { ResolvedClientOptions } from './options.js';
import { PrefixIndex } from './prefix-index.js';
import { ReplayHandler } from './replay.js';
import {
  BLOCK_CHARS,
  loadBound,
  type RoutingBlocks,
  type RoutingCandidate,
  routingKeyOf,
} from './routing-policy.js';
import type { CallTelemetry } from './telemetry.js';

type Handler = Dispatcher.DispatchHandler;

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
  // The replica accepted the request and sent nothing back in time: stalled.
  'UND_ERR_HEADERS_TIMEOUT',
]);

/** A model a replica serves, from its `/v1/models` card. */
export interface ServedModel {
  id: string;
  /** A LoRA adapter's base model (null for a base model). */
  parent: string | null;
  /** vLLM: the model's path (an adapter's path). */
  root: string | null;
  maxModelLen: number | undefined;
}

/** A replica's LoRA state, from the newest series of its `vllm:lora_requests_info`. */
export interface LoraState {
  running: Set<string>;
  waiting: Set<string>;
  maxLora: number;
}

/**
 * The newest `vllm:lora_requests_info` series (its value is the wall-clock time it was set; vLLM keeps every label set
 * it has seen), parsed into its adapters; undefined when the replica reports none.
 */
export function parseLoraInfo(lines: string[]): LoraState | undefined {
  const name = 'vllm:lora_requests_info{';
  let newest: string | undefined;
  let newestAt = Number.NEGATIVE_INFINITY;
  for (const line of lines) {
    if (!line.startsWith(name)) continue;
    const at = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(at) && at >= newestAt) {
      newestAt = at;
      newest = line;
    }
  }
  if (newest === undefined) return undefined;
  const label = (key: string) => {
    const match = new RegExp(`[{,]${key}="([^"]*)"`).exec(newest!);
    return match?.[1] ?? '';
  };
  const names = (text: string) => new Set(text.split(',').filter((a) => a !== ''));
  const maxLora = Number(label('max_lora'));
  return {
    running: names(label('running_lora_adapters')),
    waiting: names(label('waiting_lora_adapters')),
    maxLora: Number.isFinite(maxLora) && maxLora > 0 ? maxLora : 1,
  };
}

/** A replica's KV cache in tokens, from vLLM's `vllm:cache_config_info` labels (`num_gpu_blocks` × `block_size`). */
export function parseCacheTokens(lines: string[]): number | undefined {
  const line = lines.find((l) => l.startsWith('vllm:cache_config_info{'));
  if (line === undefined) return undefined;
  const blocks = Number(/[{,]num_gpu_blocks="(\d+)"/.exec(line)?.[1]);
  const size = Number(/[{,]block_size="(\d+)"/.exec(line)?.[1]);
  return blocks > 0 && size > 0 ? blocks * size : undefined;
}

/**
 * How well a replica suits an adapter, as llm-d's lora-affinity scorer rates it: 1 when the adapter is running there,
 * 0.8 when the replica has a free adapter slot, 0.6 when the adapter is waiting there, else 0.
 */
export function adapterScore(lora: LoraState | undefined, adapter: string): number {
  if (lora === undefined) return 0;
  if (lora.running.has(adapter)) return 1;
  if (lora.running.size < lora.maxLora) return 0.8;
  if (lora.waiting.has(adapter)) return 0.6;
  return 0;
}

export class Upstream {
  readonly pool: Pool;
  /** The models it serves, by id; undefined until known (discovery, or the `models` option). */
  models: Map<string, ServedModel> | undefined;
  outstanding = 0;
  consecutiveFailures = 0;
  /** 5xx answers in a row. */
  consecutive5xx = 0;
  ejected = false;
  /** Times ejected in a row (a success resets it): each ejection lasts longer. */
  ejections = 0;
  /** Ejections since start (for stats). */
  ejectionsTotal = 0;
  connectionsCreated = 0;
  /** Position in the router's list (its bit in the prefix index). */
  index = 0;
  /** Requests that followed their prompt's cached prefix here. */
  prefixRouted = 0;
  /** Requests that came here because the replica holding their prefix was over its bound or ejected. */
  fallbacks = 0;
  /** Requests with no prefix held anywhere (a new conversation), placed here to balance what replicas hold. */
  placed = 0;
  /** Its prefix cache, in tokens, from its `vllm:cache_config_info` (load signals on). */
  cacheTokens: number | undefined;
  /** From the replica's /metrics, when load signals are scraped. */
  waiting: number | undefined;
  kvCacheUsage: number | undefined;
  /** Its adapters running and waiting, when load signals are scraped and it reports them. */
  lora: LoraState | undefined;
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

  /** A response began: a 5xx counts towards ejection (`ejectAfter5xx` in a row); anything else resets the counts. */
  recordStatus(status: number): void {
    this.consecutiveFailures = 0;
    if (status < 500) {
      this.consecutive5xx = 0;
      this.ejections = 0;
      return;
    }
    const limit = this.options.ejectAfter5xx;
    if (limit > 0 && ++this.consecutive5xx >= limit && !this.ejected) this.eject();
  }

  /** Told when it is ejected. */
  onEject: (() => void) | undefined;

  eject(): void {
    if (this.ejected) return;
    this.ejected = true;
    this.onEject?.();
    this.ejections++;
    this.ejectionsTotal++;
    // Out for longer each time in a row (Envoy's base_ejection_time × ejections, capped), then probed.
    this.scheduleProbe(Math.min(this.options.probeIntervalMs * this.ejections, this.options.maxEjectionMs));
  }

  readmit(): void {
    this.ejected = false;
    this.consecutiveFailures = 0;
    this.consecutive5xx = 0;
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  /** What bounded loads count: requests in flight from here, plus the replica's own queue when scraped. */
  load(): number {
    return this.outstanding + (this.waiting ?? 0);
  }

  /** The replica's Prometheus /metrics as lines; undefined when it cannot answer. */
  private async metricsLines(): Promise<string[] | undefined> {
    const response = await this.pool.request({
      path: '/metrics',
      method: 'GET',
      headersTimeout: this.options.connectTimeoutMs,
      bodyTimeout: this.options.connectTimeoutMs,
    });
    if (response.statusCode !== 200) {
      await response.body.dump();
      return undefined;
    }
    return (await response.body.text()).split('\n');
  }

  /** Reads only its cache size (once at start when load signals are off: the cache's size does not change). */
  async readCacheSize(): Promise<void> {
    try {
      const lines = await this.metricsLines();
      if (lines !== undefined) this.cacheTokens = parseCacheTokens(lines) ?? this.cacheTokens;
    } catch {
      // Unknown: the index keeps its default size.
    }
  }

  /** Reads the replica's load signals from its Prometheus /metrics (vLLM's names); keeps the last on failure. */
  async scrapeLoad(): Promise<void> {
    try {
      const lines = await this.metricsLines();
      if (lines === undefined) return;
      // Queues add up over a replica's engines; its KV use is its fullest engine's.
      const waiting = sampleValues(lines, 'vllm:num_requests_waiting');
      const kv = sampleValues(lines, 'vllm:kv_cache_usage_perc');
      const kvUse = kv.length > 0 ? kv : sampleValues(lines, 'vllm:gpu_cache_usage_perc');
      this.waiting = waiting.length > 0 ? waiting.reduce((a, b) => a + b, 0) : undefined;
      this.kvCacheUsage = kvUse.length > 0 ? Math.max(...kvUse) : undefined;
      this.lora = parseLoraInfo(lines);
      this.cacheTokens = parseCacheTokens(lines);
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

  /** Told when its models were read again (the router drops what it derived from them). */
  onModels: (() => void) | undefined;

  /**
   * Models added since a read of /v1/models began, with when: a read that began before an adapter was loaded answers
   * without it, and must not undo the add (the next request would load it again, elsewhere).
   */
  private readonly added = new Map<string, { model: ServedModel; at: number }>();

  /** Adds a model it was just seen to serve (an adapter loaded on it). */
  addModel(model: ServedModel): void {
    this.models ??= new Map();
    this.models.set(model.id, model);
    this.added.set(model.id, { model, at: performance.now() });
    this.onModels?.();
  }

  /**
   * `POST /v1/load_lora_adapter`: true when it loaded (or already had) the adapter. vLLM answers 404 when runtime
   * updating is off, 400 "has already been loaded" when it has it.
   */
  async loadAdapter(name: string, path: string, timeoutMs: number): Promise<boolean> {
    try {
      const response = await this.pool.request({
        path: '/v1/load_lora_adapter',
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          ...(this.options.apiKey === undefined ? {} : { authorization: `Bearer ${this.options.apiKey}` }),
        },
        body: JSON.stringify({ lora_name: name, lora_path: path }),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      const text = await response.body.text();
      return (
        response.statusCode === 200 || (response.statusCode === 400 && text.includes('already been loaded'))
      );
    } catch {
      return false;
    }
  }

  /** Reads `/v1/models`; keeps what it knew when the replica cannot answer. */
  async discoverModels(): Promise<void> {
    const began = performance.now();
    try {
      const response = await this.pool.request({
        path: '/v1/models',
        method: 'GET',
        headers: this.options.apiKey === undefined ? {} : { authorization: `Bearer ${this.options.apiKey}` },
        headersTimeout: this.options.connectTimeoutMs,
        bodyTimeout: this.options.connectTimeoutMs,
      });
      if (response.statusCode !== 200) {
        await response.body.dump();
        return;
      }
      const body = (await response.body.json()) as { data?: unknown };
      if (!Array.isArray(body.data)) return;
      const models = new Map<string, ServedModel>();
      for (const card of body.data as Record<string, unknown>[]) {
        if (typeof card?.id !== 'string') continue;
        models.set(card.id, {
          id: card.id,
          parent: typeof card.parent === 'string' ? card.parent : null,
          root: typeof card.root === 'string' ? card.root : null,
          maxModelLen: typeof card.max_model_len === 'number' ? card.max_model_len : undefined,
        });
      }
      for (const [id, { model, at }] of this.added) {
        if (at >= began) models.set(id, model);
        else this.added.delete(id);
      }
      this.models = models;
      this.onModels?.();
    } catch {
      // Unreachable now: what it served before stands (ejection deals with a dead replica).
    }
  }

  private scheduleProbe(delayMs = this.options.probeIntervalMs): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(async () => {
      this.probeTimer = undefined;
      if (!this.ejected) return;
      if (await this.probe()) this.readmit();
      else if (this.ejected) this.scheduleProbe();
    }, delayMs);
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
  /** The call's routing key (affinity key or prompt prefix), for a custom policy. */
  routeKey?: string | undefined;
  /** The call's prompt as chained block hashes (or its affinity key as one), for the prefix policy. */
  blocks?: RoutingBlocks | undefined;
  /** The call's span, told of each attempt's replica, status and bytes. */
  telemetry?: CallTelemetry | undefined;
  /** Set by the router: the replica the request went to (errors name it). */
  servedBy?: string | undefined;
  /** Set by the router: the request went by load, off its key's replica (the key had its cap in flight). */
  spilled?: boolean | undefined;
  /** Not this replica (a retry after it failed), unless it is the only one left. */
  avoid?: string | undefined;
  /** Only replicas serving this model (set by the client when it routes by model). */
  model?: string | undefined;
}

/**
 * Chooses a replica for each request: by prefix (consistent hashing with bounded loads), least-outstanding
 * (round-robin among ties), or the user's function; ejected replicas are skipped.
 */
export class Router extends Dispatcher {
  readonly upstreams: Upstream[];
  /** A custom policy: requests need a routing key (computing one is skipped otherwise). */
  readonly keyed: boolean;
  /** The prefix policy over several replicas: requests need their prompt's blocks. */
  readonly cacheAware: boolean;
  private readonly index: PrefixIndex | undefined;
  private readonly matches: Int32Array;
  /** Blocks this process placed that its peers have not heard of yet (sent once per event-loop turn). */
  private unsynced: RoutingUpdate = [];
  private syncing: NodeJS.Immediate | undefined;
  private unsubscribe: (() => void) | undefined;
  private next = 0;
  /** How many requests followed a matched prefix ending at each block (a shared prefix is followed by many). */
  private readonly follows = new Map<number, number>();
  /** Whole prompts routed before (a prompt sent again is a hot one, not a conversation's next turn). */
  private readonly prompts = new Set<number>();
  /** Requests in flight per prompt (its last block; prompts with none are not kept). */
  private readonly keyInFlight = new Map<number, number>();
  /** This process's part of the bound's slack and of the per-key cap (shared by `processes`). */
  private readonly slack: number;
  private readonly keyCap: number;
  /** The replica the request being routed must avoid (set for the duration of `choose`). */
  private avoiding: string | undefined;
  /** The replicas the request being routed may use, by its model (set for the duration of `choose`). */
  private allowed: ReadonlySet<Upstream> | undefined;
  /** Per model, the replicas serving it (dropped whenever a replica's models are read again). */
  private readonly eligible = new Map<string, { list: Upstream[]; set: ReadonlySet<Upstream> }>();
  /** Adapter loads in flight, by adapter name (one per name in this process). */
  private readonly adapterLoads = new Map<string, Promise<void>>();
  private discovering: Promise<void> | undefined;
  private discovered = false;
  private modelTimer: NodeJS.Timeout | undefined;
  private healthTimer: NodeJS.Timeout | undefined;
  private loadTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: ResolvedClientOptions) {
    super();
    this.upstreams = options.origins.map((origin) => new Upstream(origin, options));
    this.upstreams.forEach((upstream, i) => {
      upstream.index = i;
      upstream.onModels = () => this.eligible.clear();
      // An ejected replica may come back restarted, its cache empty: what the index knew of it is dropped.
      upstream.onEject = () => this.index?.clear(i);
    });
    this.slack = Math.ceil(options.routingLoadSlack / options.processes);
    this.keyCap =
      options.routingKeyMaxInFlight === 0
        ? Number.POSITIVE_INFINITY
        : Math.max(1, Math.ceil(options.routingKeyMaxInFlight / options.processes));
    this.keyed = this.upstreams.length > 1 && typeof options.routing === 'function';
    this.cacheAware = this.upstreams.length > 1 && options.routing === 'prefix';
    this.matches = new Int32Array(this.upstreams.length);
    if (this.cacheAware) {
      this.index = new PrefixIndex(this.upstreams.length, cacheBlocks(options.routingCacheTokens));
      // Peers' placements (other workers, other hosts) join this index: every process then sees what each replica
      // was sent, whichever process sent it.
      this.unsubscribe = options.routingSync?.subscribe((update) => this.applyPeerUpdate(update));
    }
    if (options.healthCheckIntervalMs > 0) {
      this.healthTimer = setInterval(() => void this.checkAll(), options.healthCheckIntervalMs);
      this.healthTimer.unref();
    }
    if (options.models !== undefined) {
      for (const upstream of this.upstreams) upstream.models = new Map();
      for (const [id, urls] of Object.entries(options.models)) {
        for (const upstream of this.upstreams) {
          if (urls.includes(upstream.origin))
            upstream.models!.set(id, { id, parent: null, root: null, maxModelLen: undefined });
        }
      }
      this.discovered = true;
    } else if (options.modelDiscovery) {
      void this.discoverModels();
      if (options.modelRefreshMs > 0) {
        this.modelTimer = setInterval(() => void this.discoverModels(), options.modelRefreshMs);
        this.modelTimer.unref();
      }
    }
    if (this.cacheAware && options.routingCacheTokens === undefined && options.loadSignalsIntervalMs === 0) {
      void Promise.all(this.upstreams.map((u) => u.readCacheSize())).then(() => this.applyCacheSizes());
    }
    if (options.loadSignalsIntervalMs > 0 && this.upstreams.length > 1) {
      const scrape = () =>
        void Promise.all(this.upstreams.map((u) => u.scrapeLoad())).then(() => this.applyCacheSizes());
      scrape();
      this.loadTimer = setInterval(scrape, options.loadSignalsIntervalMs);
      this.loadTimer.unref();
    }
  }

  /** The routing key of a request body (for `request()` callers that parsed it, and the typed methods). */
  keyOf(body: unknown): string | undefined {
    return routingKeyOf(body, Math.min(256, this.options.routingPrefixChars));
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
      if (this.isOut(candidate)) continue;
      if (best === undefined || candidate.load() < best.load()) best = candidate;
    }
    // Every replica ejected: try them in turn rather than fail without trying (one serving the model, if it must).
    if (best !== undefined) return best;
    const allowed = this.allowed;
    return (allowed === undefined ? undefined : upstreams.find((u) => allowed.has(u))) ?? upstreams[start]!;
  }

  /** The next replica that is not ejected, in turn. */
  private nextInTurn(): Upstream {
    const upstreams = this.upstreams;
    for (let i = 0; i < upstreams.length; i++) {
      const candidate = upstreams[this.next]!;
      this.next = (this.next + 1) % upstreams.length;
      if (!this.isOut(candidate)) return candidate;
    }
    return upstreams[this.next]!;
  }

  /**
   * Cache-aware choice under bounded loads (SGLang's cache-aware policy, with llm-d-style block hashes): among replicas
   * under the load bound, the one holding the longest leading run of the prompt's blocks when that run is at least
   * `MATCH_THRESHOLD` of the prompt (ties: the least loaded); otherwise — a new conversation, or a prefix every
   * replica holds alike — the replica holding the least against its cache (ties: the least loaded), so conversations
   * spread by what they fill, not by a hash. Over the bound everywhere: the least loaded.
   */
  private pickByCache(blocks: RoutingBlocks): Upstream {
    const upstreams = this.upstreams;
    if (blocks.length === 0) return this.pick();
    const index = this.index!;
    const matches = this.matches;
    index.match(blocks, matches);
    let total = 0;
    let active = 0;
    let held = 0;
    for (const upstream of upstreams) {
      if (this.isOut(upstream)) continue;
      total += upstream.load();
      active++;
      held = Math.max(held, matches[upstream.index]!);
    }
    const bound = loadBound(this.options.routingLoadFactor, this.slack, total, active);
    let longest = 0;
    for (const upstream of upstreams) {
      if (!this.isOut(upstream) && upstream.load() + 1 <= bound)
        longest = Math.max(longest, matches[upstream.index]!);
    }
    // A prefix many requests have followed (a shared system prompt, one hot prompt) is not a conversation: following
    // it would pile every new conversation on the replica that first held it. Those spread by balance instead (each
    // replica then prefills it once); a conversation's own history is followed by one request at a time.
    const endpoint = longest > 0 ? blocks[longest - 1]! : 0;
    // An affinity key is one conversation by the caller's word: followed however often (the load bound still holds).
    // The same prompt again is not a conversation's next turn (that always adds text): a hot prompt, spread at once.
    const repeat = blocks.prompt !== undefined && this.seenPrompt(blocks.prompt);
    const shared =
      longest > 0 && !blocks.affinity && (repeat || (this.follows.get(endpoint) ?? 0) >= SHARED_AFTER);
    const follow =
      longest > 0 &&
      !shared &&
      longest >= MATCH_THRESHOLD * blocks.length &&
      !this.everywhere(longest, bound);
    if (follow) {
      if (this.follows.size >= MAX_FOLLOWS) this.follows.clear();
      this.follows.set(endpoint, (this.follows.get(endpoint) ?? 0) + 1);
    }
    // A prompt some replica holds whole (one hot prompt again) adds nothing to a cache: it only costs compute, so it is
    // balanced by load. One that brings new blocks (a new conversation) is balanced by what replicas hold.
    const mode = follow ? 'follow' : held === blocks.length ? 'load' : 'fill';
    // Ties go round in turn (from a rotating start), not always to the first replica.
    const count = upstreams.length;
    const start = this.next;
    this.next = (start + 1) % count;
    let chosen: Upstream | undefined;
    for (let i = 0; i < count; i++) {
      const upstream = upstreams[(start + i) % count]!;
      if (this.isOut(upstream) || upstream.load() + 1 > bound) continue;
      if (follow && matches[upstream.index]! < longest) continue;
      if (chosen === undefined || this.better(upstream, chosen, mode)) chosen = upstream;
    }
    if (chosen === undefined) chosen = this.pick();
    if (!follow) chosen.placed++;
    else if (matches[chosen.index] === held) chosen.prefixRouted++;
    else chosen.fallbacks++;
    return chosen;
  }

  /** Whether this whole prompt was routed before (and remembers it). */
  private seenPrompt(prompt: number): boolean {
    if (this.prompts.has(prompt)) return true;
    if (this.prompts.size >= MAX_FOLLOWS) this.prompts.clear();
    this.prompts.add(prompt);
    return false;
  }

  /** Every replica under the bound holds `longest` blocks: the match does not tell them apart. */
  private everywhere(longest: number, bound: number): boolean {
    let candidates = 0;
    for (const upstream of this.upstreams) {
      if (this.isOut(upstream) || upstream.load() + 1 > bound) continue;
      if (this.matches[upstream.index]! < longest) return false;
      candidates++;
    }
    return candidates > 1;
  }

  /**
   * Following a prefix: the less loaded, then the one holding less. Placing a new conversation: the one holding less
   * of its cache (SGLang's smallest tree), then the less loaded. A prompt held whole somewhere: the less loaded.
   */
  private better(a: Upstream, b: Upstream, mode: 'follow' | 'fill' | 'load'): boolean {
    const index = this.index!;
    const fillA = index.held(a.index) / index.capacityOf(a.index);
    const fillB = index.held(b.index) / index.capacityOf(b.index);
    const loadA = a.load();
    const loadB = b.load();
    if (mode === 'load') return loadA < loadB;
    if (mode === 'follow') return loadA < loadB || (loadA === loadB && fillA < fillB);
    // Fill within a block of each other counts as equal: then load decides.
    const close = Math.abs(fillA - fillB) * index.capacityOf(a.index) < 1;
    return close ? loadA < loadB : fillA < fillB;
  }

  /** Records the prompt's blocks as sent to `upstream`, and queues what is new there for the peers. */
  private remember(upstream: Upstream, blocks: number[]): void {
    const added = this.index!.insert(upstream.index, blocks);
    const sync = this.options.routingSync;
    if (added === undefined || sync === undefined) return;
    this.unsynced.push({ replica: upstream.origin, blocks: added });
    this.syncing ??= setImmediate(() => {
      this.syncing = undefined;
      const update = this.unsynced;
      this.unsynced = [];
      try {
        sync.publish(update);
      } catch {
        // A peer that misses an update routes that conversation by balance once: nothing worth failing a request for.
      }
    });
  }

  private applyPeerUpdate(update: RoutingUpdate): void {
    for (const { replica, blocks } of update) {
      const upstream = this.upstreams.find((u) => u.origin === replica);
      if (upstream !== undefined && Array.isArray(blocks)) this.index!.insert(upstream.index, blocks);
    }
  }

  /** A replica's cache size became known (its metrics): the index holds as much for it as the replica can. */
  private applyCacheSizes(): void {
    if (this.index === undefined || this.options.routingCacheTokens !== undefined) return;
    for (const upstream of this.upstreams) {
      if (upstream.cacheTokens !== undefined)
        this.index.setCapacity(upstream.index, cacheBlocks(upstream.cacheTokens));
    }
  }

  private isOut(upstream: Upstream): boolean {
    return (
      upstream.ejected ||
      upstream.origin === this.avoiding ||
      (this.allowed !== undefined && !this.allowed.has(upstream))
    );
  }

  /** Whether a replica serves a model (a replica whose models are unknown is tried only when none is known to). */
  private serves(upstream: Upstream, model: string): boolean {
    return upstream.models?.has(model) ?? false;
  }

  /** Reads every replica's models (one read at a time, shared). */
  discoverModels(): Promise<void> {
    this.discovering ??= Promise.all(this.upstreams.map((u) => u.discoverModels())).then(() => {
      this.discovering = undefined;
      this.discovered = true;
    });
    return this.discovering;
  }

  /** Models are routed by: discovery is on, or the map was given. */
  get routesByModel(): boolean {
    return this.options.models !== undefined || this.options.modelDiscovery;
  }

  /** The first discovery has finished (or the map was given): no wait before routing by model. */
  get modelsKnown(): boolean {
    return this.discovered;
  }

  /** Resolves once the replicas' models are known (the first discovery), at once afterwards. */
  modelsReady(): Promise<void> {
    return this.discovered ? Promise.resolve() : this.discoverModels();
  }

  /**
   * The replicas for a request's model: undefined when any will do (no model routing, or no replica's models are
   * known); an empty list when none serves it.
   */
  replicasFor(model: string | undefined): Upstream[] | undefined {
    if (!this.routesByModel || this.upstreams.every((u) => u.models === undefined)) return undefined;
    if (model === undefined) return this.distinctModels() ? [] : undefined;
    return this.servingSet(model).list;
  }

  private servingSet(model: string): { list: Upstream[]; set: ReadonlySet<Upstream> } {
    let entry = this.eligible.get(model);
    if (entry === undefined) {
      const list = this.upstreams.filter((u) => this.serves(u, model));
      entry = { list, set: new Set(list) };
      this.eligible.set(model, entry);
    }
    return entry;
  }

  /**
   * The replicas a request for `model` may go to. For an adapter whose replicas report their LoRA state (load signals
   * on), those where it runs or that have a free adapter slot, when one of them is under the load bound: a request
   * sent where the adapter is not resident waits for a swap (llm-d's lora-affinity scoring, as a filter).
   */
  private placementFor(model: string): ReadonlySet<Upstream> {
    const serving = this.servingSet(model);
    if (serving.list.length < 2 || serving.list.some((u) => u.lora === undefined)) return serving.set;
    const preferred = serving.list.filter((u) => !u.ejected && adapterScore(u.lora, model) >= 0.8);
    if (preferred.length === 0 || preferred.length === serving.list.length) return serving.set;
    let total = 0;
    for (const upstream of serving.list) total += upstream.load();
    const bound = loadBound(this.options.routingLoadFactor, this.slack, total, serving.list.length);
    return preferred.some((u) => u.load() + 1 <= bound) ? new Set(preferred) : serving.set;
  }

  /** Whether some replica lists the model as a LoRA adapter. */
  isAdapter(model: string): boolean {
    return this.upstreams.some((u) => (u.models?.get(model)?.parent ?? null) !== null);
  }

  /**
   * Loads a declared adapter on a replica of its base: those with a free adapter slot first, then the least loaded;
   * the next one when a load fails. One load per adapter at a time in this process; `singleFlight` (when given) makes
   * it one across processes. Resolves once a replica serves it; rejects when none could load it.
   */
  loadAdapter(name: string, base: string, path: string, timeoutMs: number): Promise<void> {
    let flight = this.adapterLoads.get(name);
    if (flight === undefined) {
      const place = () => this.placeAdapter(name, base, path, timeoutMs);
      const run = this.options.singleFlight;
      flight = (run === undefined ? place() : run(`lora:${name}`, place))
        .then((origin) => {
          this.upstreams
            .find((u) => u.origin === origin)
            ?.addModel({ id: name, parent: base, root: path, maxModelLen: undefined });
        })
        .finally(() => this.adapterLoads.delete(name));
      this.adapterLoads.set(name, flight);
    }
    return flight;
  }

  private async placeAdapter(name: string, base: string, path: string, timeoutMs: number): Promise<string> {
    // Read the replicas' models first: another process (a worker whose lead has ended, another gateway host) may have
    // loaded it since this one last looked. Loads are rare; a GET per replica is nothing beside one.
    if (this.options.modelDiscovery && this.options.models === undefined) await this.discoverModels();
    const already = this.upstreams.find((u) => this.serves(u, name));
    if (already !== undefined) return already.origin;
    const candidates = this.upstreams
      .filter((u) => !u.ejected && this.serves(u, base))
      .sort(
        (a, b) =>
          Number(adapterScore(b.lora, name) >= 0.8) - Number(adapterScore(a.lora, name) >= 0.8) ||
          a.load() - b.load(),
      );
    const deadline = performance.now() + timeoutMs;
    for (const upstream of candidates) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      const counts = this.adapterLoadCounts.get(name) ?? { sent: 0, failed: 0 };
      this.adapterLoadCounts.set(name, counts);
      counts.sent++;
      if (await upstream.loadAdapter(name, path, left)) return upstream.origin;
      counts.failed++;
    }
    throw new AdapterLoadError(
      name,
      candidates.map((u) => u.origin),
    );
  }

  /** Adapter loads this process sent, and of them those that failed, by adapter (declared names only). */
  readonly adapterLoadCounts = new Map<string, { sent: number; failed: number }>();

  /** True when the replicas do not all serve the same models. */
  private distinctModels(): boolean {
    const sets = this.upstreams
      .filter((u) => u.models !== undefined)
      .map((u) => [...u.models!.keys()].sort().join('\u0000'));
    return new Set(sets).size > 1;
  }

  /** Every model served, each once, with the replicas serving it. */
  servedModels(): (ServedModel & { replicas: string[] })[] {
    const union = new Map<string, ServedModel & { replicas: string[] }>();
    for (const upstream of this.upstreams) {
      for (const model of upstream.models?.values() ?? []) {
        const entry = union.get(model.id) ?? { ...model, replicas: [] };
        entry.replicas.push(upstream.origin);
        union.set(model.id, entry);
      }
    }
    return [...union.values()];
  }

  /** A replica answered 404 for a model it was thought to serve: read its models again now. */
  modelMissing(origin: string): void {
    if (this.options.models !== undefined || !this.options.modelDiscovery) return;
    void this.upstreams.find((u) => u.origin === origin)?.discoverModels();
  }

  /** The replica a request goes to (the client asks first when it must take a permit for it). */
  choose(opts: RoutedOptions): Upstream {
    if ((opts.avoid === undefined || this.upstreams.length < 2) && opts.model === undefined) {
      return this.chooseFrom(opts);
    }
    this.avoiding = opts.avoid;
    this.allowed = opts.model === undefined ? undefined : this.placementFor(opts.model);
    try {
      return this.chooseFrom(opts);
    } finally {
      this.avoiding = undefined;
      this.allowed = undefined;
    }
  }

  private chooseFrom(opts: RoutedOptions): Upstream {
    const { replica, routeKey } = opts;
    if (replica !== undefined) return this.upstreams.find((u) => u.origin === replica) ?? this.pick();
    const routing = this.options.routing;
    if (typeof routing === 'function' && this.upstreams.length > 1) {
      const url = routing({ key: routeKey, replicas: this.candidates() });
      return (url === undefined ? undefined : this.upstreams.find((u) => u.origin === url)) ?? this.pick();
    }
    const blocks = opts.blocks;
    if (blocks !== undefined && this.index !== undefined) {
      // A prompt with its cap in flight already (a client pinning a replica, one hot prompt): by load instead.
      const last = blocks.at(-1);
      if (last !== undefined && (this.keyInFlight.get(last) ?? 0) >= this.keyCap) {
        const chosen = this.pick();
        chosen.fallbacks++;
        opts.spilled = true;
        return chosen;
      }
      return this.pickByCache(blocks);
    }
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
    const routed = opts as RoutedOptions;
    const upstream = this.choose(routed);
    // The replica this attempt goes to: named by the call's errors and on its span.
    routed.servedBy = upstream.origin;
    routed.telemetry?.setOrigin(upstream.origin);
    // The replay handler (every request of the client goes through one) does the replica's accounting itself.
    if (handler instanceof ReplayHandler) {
      upstream.outstanding++;
      handler.bindUpstream(upstream);
      const blocks = routed.blocks;
      if (blocks !== undefined && this.index !== undefined && blocks.length > 0) {
        const key = blocks.at(-1)!;
        this.keyInFlight.set(key, (this.keyInFlight.get(key) ?? 0) + 1);
        handler.bindKey(key, this);
        // A request spilled off its affinity key's replica does not make that replica the conversation's home.
        if (!(blocks.affinity && routed.spilled)) this.remember(upstream, blocks);
      }
      // Until the next scrape, an adapter sent here counts as running here (so its next requests follow it).
      const model = routed.model;
      if (model !== undefined && upstream.lora !== undefined && upstream.models?.get(model)?.parent)
        upstream.lora.running.add(model);
    }
    return upstream.pool.dispatch(opts, handler);
  }

  /** An attempt of a keyed request ended (completed or failed). */
  keyDone(key: number): void {
    const left = (this.keyInFlight.get(key) ?? 1) - 1;
    if (left <= 0) this.keyInFlight.delete(key);
    else this.keyInFlight.set(key, left);
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
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    if (this.syncing !== undefined) clearImmediate(this.syncing);
    this.syncing = undefined;
    if (this.modelTimer) clearInterval(this.modelTimer);
    this.modelTimer = undefined;
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

/** How much of a prompt a replica must hold, as a share of its blocks, for the request to follow it there. */
const MATCH_THRESHOLD = 0.5;
/** Requests that may follow one matched prefix before it counts as shared (a conversation follows each of its own once). */
const SHARED_AFTER = 3;
/** Matched prefixes remembered (then forgotten all at once: a shared one is soon recognised again). */
const MAX_FOLLOWS = 100_000;
/** Tokens per prompt block (four characters a token). */
const TOKENS_PER_BLOCK = BLOCK_CHARS / 4;
/** What the index keeps per replica when its cache size is unknown: 2M tokens, about 6 MB of index. */
const DEFAULT_CACHE_TOKENS = 2_097_152;

function cacheBlocks(tokens: number | undefined): number {
  return Math.max(1, Math.floor((tokens ?? DEFAULT_CACHE_TOKENS) / TOKENS_PER_BLOCK));
}

/** Blocks newly sent to replicas (by URL), as one process tells the others. */
export type RoutingUpdate = { replica: string; blocks: number[] }[];

/**
 * How processes routing over the same replicas share what they sent where (`routingSync`): `publish` is called with
 * this process's new placements, at most once per event-loop turn; `subscribe` hands over the others'.
 */
export interface RoutingSync {
  publish(update: RoutingUpdate): void;
  subscribe(handler: (update: RoutingUpdate) => void): () => void;
}
