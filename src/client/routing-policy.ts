// How a request is routed (the dispatcher that does it is replica-pool.ts): its prompt as chained block hashes (the
// pool matches them against what it sent to each replica: prefix-index.ts), the routing key a custom policy gets, and
// the bound on a replica's load.
// vLLM keeps the KV cache of recent prompt prefixes per replica, so a conversation whose earlier turns went to one
// replica is prefilled there in a fraction of the time.

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

/** Characters per prompt block (about 32 tokens): the unit in which prompts are matched against replicas' caches. */
export const BLOCK_CHARS = 128;

/**
 * Hashes text into chained blocks as it is fed: the FNV-1a state runs on across blocks, so each full block's hash
 * (the state at its end, finalised) stands for the whole prefix up to it, as vLLM's block hashes do.
 */
class BlockHasher {
  readonly blocks: number[] = [];
  private state = 0x811c9dc5;
  private inBlock = 0;

  constructor(private readonly maxBlocks: number) {}

  get full(): boolean {
    return this.blocks.length >= this.maxBlocks;
  }

  feed(text: string): void {
    let h = this.state;
    let n = this.inBlock;
    const length = text.length;
    let i = 0;
    while (i < length) {
      // Hash up to the end of the current block without a per-character boundary check.
      const stop = Math.min(length, i + BLOCK_CHARS - n);
      n += stop - i;
      // Two characters per multiply (half the dependent multiplications of one-at-a-time FNV); the shift folds the high
      // half, where the second character went, back into the low bits.
      for (; i + 1 < stop; i += 2) {
        h = Math.imul(h ^ (text.charCodeAt(i) | (text.charCodeAt(i + 1) << 16)), 0x01000193);
        h ^= h >>> 15;
      }
      if (i < stop) h = Math.imul(h ^ text.charCodeAt(i++), 0x01000193);
      if (n === BLOCK_CHARS) {
        n = 0;
        let f = h ^ (h >>> 16);
        f = Math.imul(f, 0x85ebca6b);
        f ^= f >>> 13;
        f = Math.imul(f, 0xc2b2ae35);
        f ^= f >>> 16;
        this.blocks.push(f >>> 0);
        if (this.blocks.length >= this.maxBlocks) break;
      }
    }
    this.state = h;
    this.inBlock = n;
  }

  /** The hash of everything fed, the partial last block included: the same only for the same prompt. */
  get whole(): number {
    let f = this.state ^ (this.state >>> 16) ^ this.inBlock;
    f = Math.imul(f, 0x85ebca6b);
    f ^= f >>> 13;
    return f >>> 0;
  }
}

/**
 * A prompt's blocks; `affinity` marks the one block of an affinity key (one conversation by the caller's word), and
 * `prompt` hashes the whole prompt, its partial last block too (the same only for a repeat of the same prompt).
 */
export type RoutingBlocks = number[] & { affinity?: true; prompt?: number };

function affinityBlock(key: string): RoutingBlocks {
  const blocks: RoutingBlocks = [hash32(key)];
  blocks.affinity = true;
  return blocks;
}

/**
 * A request body's prompt as chained block hashes, for cache-aware routing: the text vLLM prefills — each message's
 * role and content, or `prompt` / `input` — in full blocks of {@link BLOCK_CHARS}, up to `maxChars`. An affinity key
 * (`prompt_cache_key`, `user`, or the caller's `affinity`) stands for the whole conversation instead: one block.
 * Empty when the body has no prompt, or one shorter than a block.
 */
export function routingBlocks(body: unknown, maxChars: number, affinity?: string): RoutingBlocks {
  if (affinity !== undefined) return affinityBlock(`a:${affinity}`);
  if (typeof body !== 'object' || body === null) return [];
  const record = body as Record<string, unknown>;
  if (typeof record.prompt_cache_key === 'string' && record.prompt_cache_key !== '')
    return affinityBlock(`k:${record.prompt_cache_key}`);
  if (typeof record.user === 'string' && record.user !== '') return affinityBlock(`u:${record.user}`);
  const hasher = new BlockHasher(Math.max(1, Math.floor(maxChars / BLOCK_CHARS)));
  // vLLM's cache is per model (an adapter's blocks are not its base's): the model starts the chain.
  if (typeof record.model === 'string') hasher.feed(`${record.model}\n`);
  const blocks: RoutingBlocks = hasher.blocks;
  const messages = record.messages;
  if (Array.isArray(messages)) {
    for (const message of messages) {
      if (hasher.full) break;
      if (typeof message !== 'object' || message === null) continue;
      const { role, content } = message as { role?: unknown; content?: unknown };
      hasher.feed(typeof role === 'string' ? role : '');
      hasher.feed('\n');
      if (typeof content === 'string') hasher.feed(content);
      else if (Array.isArray(content)) {
        for (const part of content) {
          const partText = (part as { text?: unknown } | null)?.text;
          if (typeof partText === 'string') hasher.feed(partText);
        }
      }
      hasher.feed('\n');
    }
  } else {
    const prompt = record.prompt ?? record.input;
    const first = Array.isArray(prompt) ? prompt[0] : prompt;
    if (typeof first === 'string') hasher.feed(first);
    else if (Array.isArray(prompt) && typeof first === 'number') hasher.feed(prompt.join(','));
  }
  if (!hasher.full) blocks.prompt = hasher.whole;
  return blocks;
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
