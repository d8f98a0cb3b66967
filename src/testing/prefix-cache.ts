// vLLM's automatic prefix caching in miniature: the prompt is cut into KV blocks (16 tokens, ~64 characters at the
// simulator's four characters a token), each block's hash chained on the previous one, so only a shared *leading*
// run of blocks hits. Blocks live in an LRU bounded by a capacity in tokens; a request's cached tokens are the
// longest leading run of its blocks found there (at most all but its last token, which vLLM always computes).

/** Tokens per KV block (vLLM's default block size). */
export const BLOCK_TOKENS = 16;
const BLOCK_CHARS = BLOCK_TOKENS * 4;

function blockHash(previous: number, text: string, start: number, end: number): number {
  let h = (previous ^ 0x811c9dc5) >>> 0;
  for (let i = start; i < end; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export class PrefixCache {
  /** Block hash → nothing; a Map's insertion order is the LRU order (touched blocks are re-inserted). */
  private readonly blocks = new Map<number, true>();
  private readonly capacityBlocks: number;
  /** Prompt tokens looked up, and of them found cached (vLLM's prefix_cache_queries and _hits). */
  queries = 0;
  hits = 0;

  constructor(capacityTokens: number) {
    this.capacityBlocks = Math.floor(capacityTokens / BLOCK_TOKENS);
  }

  /** Tokens the cache holds now. */
  get usedTokens(): number {
    return this.blocks.size * BLOCK_TOKENS;
  }

  get capacityTokens(): number {
    return this.capacityBlocks * BLOCK_TOKENS;
  }

  /** Looks the prompt up (counting queries and hits) and caches its full blocks; returns its cached tokens. */
  admit(promptText: string, promptTokens: number): number {
    const fullBlocks = Math.min(
      Math.floor(promptText.length / BLOCK_CHARS),
      Math.floor(promptTokens / BLOCK_TOKENS),
    );
    let hash = 0;
    let leading = 0;
    let stillLeading = true;
    for (let b = 0; b < fullBlocks; b++) {
      hash = blockHash(hash, promptText, b * BLOCK_CHARS, (b + 1) * BLOCK_CHARS);
      const present = this.blocks.delete(hash);
      if (stillLeading && present) leading++;
      else stillLeading = false;
      if (this.capacityBlocks > 0) this.blocks.set(hash, true);
    }
    while (this.blocks.size > this.capacityBlocks) {
      this.blocks.delete(this.blocks.keys().next().value as number);
    }
    const cached = Math.min(leading * BLOCK_TOKENS, Math.max(0, promptTokens - 1));
    this.queries += promptTokens;
    this.hits += cached;
    return cached;
  }
}
