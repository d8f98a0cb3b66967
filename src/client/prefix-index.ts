// What each replica's prefix cache holds, as this client (and, through `routingSync`, its peers) sent it there: per
// replica an LRU of prompt-block hashes, sized like the replica's cache when known, plus one map from a block to the
// replicas holding it, so a prompt's match against every replica costs one lookup per matched block. An approximation
// of vLLM's automatic prefix caching, in the manner of SGLang's cache-aware router (an approximate radix tree per
// worker) and llm-d's prefix scorer (block hashes of what it routed where).

/** Replicas are bits of a 32-bit mask. */
export const MAX_INDEXED_REPLICAS = 32;

export class PrefixIndex {
  /** Per replica, its blocks, least recently sent first. */
  private readonly lru: Map<number, true>[];
  /** Block → mask of the replicas holding it. */
  private readonly holders = new Map<number, number>();
  private readonly capacity: number[];

  constructor(replicas: number, capacityBlocks: number) {
    this.lru = Array.from({ length: replicas }, () => new Map());
    this.capacity = new Array<number>(replicas).fill(capacityBlocks);
  }

  /** Blocks held by a replica (its share of what was sent, bounded by its cache). */
  held(replica: number): number {
    return this.lru[replica]!.size;
  }

  capacityOf(replica: number): number {
    return this.capacity[replica]!;
  }

  /** Sets a replica's cache size in blocks (read from its metrics); the oldest blocks go if it shrank. */
  setCapacity(replica: number, blocks: number): void {
    this.capacity[replica] = blocks;
    this.evict(replica);
  }

  /**
   * How many leading blocks of `blocks` each replica holds, into `out` (one entry per replica). Stops at the first
   * block no replica holds: the chain makes every later block differ too.
   */
  match(blocks: ArrayLike<number>, out: Int32Array): void {
    out.fill(0);
    let alive = (2 ** Math.min(out.length, MAX_INDEXED_REPLICAS) - 1) | 0;
    for (let i = 0; i < blocks.length && alive !== 0; i++) {
      alive &= this.holders.get(blocks[i]!) ?? 0;
      for (let mask = alive; mask !== 0; mask &= mask - 1) out[31 - Math.clz32(mask & -mask)] = i + 1;
    }
  }

  /**
   * Records `blocks` as sent to `replica` (most recent), evicting its oldest beyond its capacity. Returns the blocks
   * it did not hold before (what peers need to hear about), or undefined when there were none.
   */
  insert(replica: number, blocks: ArrayLike<number>): number[] | undefined {
    const lru = this.lru[replica]!;
    const bit = 1 << replica;
    let added: number[] | undefined;
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i]!;
      if (lru.delete(block)) {
        lru.set(block, true);
        continue;
      }
      lru.set(block, true);
      this.holders.set(block, (this.holders.get(block) ?? 0) | bit);
      (added ??= []).push(block);
    }
    if (added !== undefined) this.evict(replica);
    return added;
  }

  /** Forgets everything a replica held (it restarted, or left). */
  clear(replica: number): void {
    const bit = ~(1 << replica);
    for (const block of this.lru[replica]!.keys()) this.drop(block, bit);
    this.lru[replica]!.clear();
  }

  private evict(replica: number): void {
    const lru = this.lru[replica]!;
    const bit = ~(1 << replica);
    const capacity = this.capacity[replica]!;
    while (lru.size > capacity) {
      const oldest = lru.keys().next().value!;
      lru.delete(oldest);
      this.drop(oldest, bit);
    }
  }

  private drop(block: number, keep: number): void {
    const mask = (this.holders.get(block) ?? 0) & keep;
    if (mask === 0) this.holders.delete(block);
    else this.holders.set(block, mask);
  }
}
