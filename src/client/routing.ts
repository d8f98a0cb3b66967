// Prefix-cache-aware routing. vLLM keeps the KV cache of recent prompt prefixes per replica, so a conversation whose
// earlier turns went to one replica is prefilled there in a fraction of the time. Consistent hashing with bounded loads
// (Mirrokni, Thorup, Zadimoghaddam 2016) over a hash of the prompt's leading characters — or of an affinity key the
// caller gives — keeps a conversation on one replica, with no state shared between processes or hosts: every process
// with the same replica list builds the same ring. A replica over its load bound or ejected passes the key on to the
// next replica clockwise (so only its share of keys moves), and when every replica is over its bound the request goes
// to the least loaded.

/** How requests are spread over replicas (`round-robin` is there as a baseline to compare with). */
export type RoutingPolicy = 'prefix' | 'least-outstanding' | 'round-robin' | RoutingFunction;

/** What a custom routing function sees of each replica. */
export interface RoutingCandidate {
  url: string;
  /** Requests this client has sent there and not finished. */
  outstanding: number;
  ejected: boolean;
  /** Requests waiting in the replica's own queue (`vllm:num_requests_waiting`), when load signals are scraped. */
  waiting: number | undefined;
  /** The replica's KV-cache use, 0–1 (`vllm:kv_cache_usage_perc`), when load signals are scraped. */
  kvCacheUsage: number | undefined;
}

/**
 * A custom policy: the URL of the replica to use (one of `replicas`), or undefined for the least-outstanding one.
 * `key` is the routing key (affinity key, or the prompt's leading characters), undefined when the call has none.
 */
export type RoutingFunction = (request: {
  key: string | undefined;
  replicas: readonly RoutingCandidate[];
}) => string | undefined;

/** FNV-1a over the string's UTF-16 code units, then a murmur3 finaliser: 32 bits, stable everywhere, no seed. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Points per replica on the ring: enough that each replica's share of keys is within a few percent of 1/n. */
const VIRTUAL_NODES = 400;

/** The hash ring over replica URLs (its order does not matter: every process builds the same ring). */
export class HashRing {
  private readonly points: Uint32Array;
  private readonly owners: Uint16Array;

  constructor(private readonly urls: readonly string[]) {
    const entries: [number, number][] = [];
    urls.forEach((url, index) => {
      for (let v = 0; v < VIRTUAL_NODES; v++) entries.push([hash32(`${url}#${v}`), index]);
    });
    entries.sort((a, b) => a[0] - b[0] || urls[a[1]]!.localeCompare(urls[b[1]]!));
    this.points = Uint32Array.from(entries, (e) => e[0]);
    this.owners = Uint16Array.from(entries, (e) => e[1]);
  }

  /** Replica indexes in ring order from the key's position clockwise, each once; stops when `accept` says so. */
  find(keyHash: number, accept: (index: number) => boolean): number | undefined {
    const points = this.points;
    // The first point at or after the key (binary search), wrapping around.
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid]! < keyHash) lo = mid + 1;
      else hi = mid;
    }
    const seen = new Uint8Array(this.urls.length);
    let left = this.urls.length;
    for (let i = 0; i < points.length && left > 0; i++) {
      const owner = this.owners[(lo + i) % points.length]!;
      if (seen[owner] === 1) continue;
      seen[owner] = 1;
      left--;
      if (accept(owner)) return owner;
    }
    return undefined;
  }

  /** The replica a key maps to when every replica is available and none is over its bound. */
  home(keyHash: number): number {
    return this.find(keyHash, () => true)!;
  }
}

/**
 * The routing key of an OpenAI-shaped request body: the caller's `prompt_cache_key` or `user` when present
 * (affinity), else the prompt's first `chars` characters — the system prompt and earliest turns of `messages`, or
 * `prompt`. Undefined when the body has no prompt (embeddings of token ids, say).
 */
export function routingKeyOf(body: unknown, chars: number): string | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const record = body as Record<string, unknown>;
  if (typeof record.prompt_cache_key === 'string' && record.prompt_cache_key !== '')
    return `k:${record.prompt_cache_key}`;
  if (typeof record.user === 'string' && record.user !== '') return `u:${record.user}`;
  const messages = record.messages;
  if (Array.isArray(messages)) {
    let text = '';
    for (const message of messages) {
      if (text.length >= chars) break;
      if (typeof message !== 'object' || message === null) continue;
      const { role, content } = message as { role?: unknown; content?: unknown };
      text += `${typeof role === 'string' ? role : ''}\n`;
      if (typeof content === 'string') text += content;
      else if (Array.isArray(content)) {
        for (const part of content) {
          const partText = (part as { text?: unknown } | null)?.text;
          if (typeof partText === 'string') text += partText;
        }
      }
      text += '\n';
    }
    return text === '' ? undefined : `p:${text.slice(0, chars)}`;
  }
  const prompt = record.prompt ?? record.input;
  if (typeof prompt === 'string') return `p:${prompt.slice(0, chars)}`;
  if (Array.isArray(prompt) && prompt.length > 0) {
    const first = prompt[0];
    if (typeof first === 'string') return `p:${first.slice(0, chars)}`;
    if (typeof first === 'number') return `t:${prompt.slice(0, Math.ceil(chars / 4)).join(',')}`;
  }
  return undefined;
}

/**
 * The most a replica may carry under bounded loads: ⌈c × (total + 1) / replicas⌉, counting the request being placed,
 * plus an absolute slack — at low load ⌈c × mean⌉ is 1 or 2, and sending a conversation away from its cache to
 * balance two requests against one costs far more than it saves (SGLang's router likewise tolerates an absolute
 * imbalance before it stops following the cache).
 */
export function loadBound(factor: number, slack: number, totalLoad: number, replicas: number): number {
  return Math.ceil((factor * (totalLoad + 1)) / Math.max(1, replicas)) + slack;
}
