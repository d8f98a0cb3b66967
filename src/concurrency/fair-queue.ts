// The waiting room of a fair limiter: priority bands (higher first), and within a band one flow per key served by
// deficit round robin (Shreedhar & Varghese, 1995): each visit adds the flow's weight to its deficit, and a flow takes
// one task per whole unit. Equal weights are plain round robin; a key with weight 3 gets three turns to another's one.

export interface FairItem {
  readonly key: string;
  readonly priority: number;
}

interface Flow<T extends FairItem> {
  key: string;
  weight: number;
  deficit: number;
  /** Its turn has begun (its weight was added this visit). */
  inTurn: boolean;
  queue: T[];
}

interface Band<T extends FairItem> {
  priority: number;
  flows: Map<string, Flow<T>>;
  /** Flows with waiting tasks, in round-robin order. */
  active: Flow<T>[];
  cursor: number;
}

export class FairQueue<T extends FairItem> {
  /** Bands by priority, highest first. */
  private bands: Band<T>[] = [];
  private size = 0;
  private readonly byKey = new Map<string, number>();

  get length(): number {
    return this.size;
  }

  /** Waiting tasks of one key (every band). */
  countOf(key: string): number {
    return this.byKey.get(key) ?? 0;
  }

  /** Waiting tasks by key. */
  countsByKey(): Record<string, number> {
    return Object.fromEntries(this.byKey);
  }

  /** Waiting tasks by priority. */
  countsByPriority(): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const band of this.bands) {
      let n = 0;
      for (const flow of band.active) n += flow.queue.length;
      if (n > 0) counts[String(band.priority)] = n;
    }
    return counts;
  }

  push(item: T, weight: number): void {
    const band = this.bandFor(item.priority);
    let flow = band.flows.get(item.key);
    if (flow === undefined) {
      flow = { key: item.key, weight, deficit: 0, inTurn: false, queue: [] };
      band.flows.set(item.key, flow);
    }
    // The latest weight given for a key is its weight.
    flow.weight = weight;
    if (flow.queue.length === 0) band.active.push(flow);
    flow.queue.push(item);
    this.size++;
    this.byKey.set(item.key, (this.byKey.get(item.key) ?? 0) + 1);
  }

  /** Takes a waiting task out (cancelled: aborted, timed out). */
  remove(item: T): boolean {
    const band = this.bands.find((b) => b.priority === item.priority);
    const flow = band?.flows.get(item.key);
    if (band === undefined || flow === undefined) return false;
    const at = flow.queue.indexOf(item);
    if (at === -1) return false;
    flow.queue.splice(at, 1);
    this.taken(item);
    if (flow.queue.length === 0) this.retire(band, flow);
    return true;
  }

  /**
   * The next task to start: the highest band with one that `eligible` allows (a key over its own concurrency is
   * not), by deficit round robin within it. Undefined when none may start.
   */
  shift(eligible: (key: string) => boolean = () => true): T | undefined {
    for (const band of this.bands) {
      if (band.active.length === 0) continue;
      if (!band.active.some((flow) => eligible(flow.key))) continue;
      for (;;) {
        if (band.cursor >= band.active.length) band.cursor = 0;
        const flow = band.active[band.cursor]!;
        if (!eligible(flow.key)) {
          flow.inTurn = false;
          band.cursor++;
          continue;
        }
        if (!flow.inTurn) {
          flow.deficit += flow.weight;
          flow.inTurn = true;
        }
        if (flow.deficit >= 1) {
          flow.deficit -= 1;
          const item = flow.queue.shift()!;
          this.taken(item);
          if (flow.queue.length === 0) this.retire(band, flow);
          return item;
        }
        // Its turn is over: the next flow's begins.
        flow.inTurn = false;
        band.cursor++;
      }
    }
    return undefined;
  }

  /** The newest task of the key with the most waiting (to make room for a lighter key when the queue is full). */
  newestOfLargest(): T | undefined {
    let largest: Flow<T> | undefined;
    for (const band of this.bands) {
      for (const flow of band.active)
        if (largest === undefined || flow.queue.length > largest.queue.length) largest = flow;
    }
    return largest?.queue.at(-1);
  }

  private taken(item: T): void {
    this.size--;
    const left = (this.byKey.get(item.key) ?? 1) - 1;
    if (left === 0) this.byKey.delete(item.key);
    else this.byKey.set(item.key, left);
  }

  /** An emptied flow leaves the rotation (and forgets its deficit, as DRR does); an emptied band is dropped. */
  private retire(band: Band<T>, flow: Flow<T>): void {
    const at = band.active.indexOf(flow);
    band.active.splice(at, 1);
    if (at < band.cursor) band.cursor--;
    flow.deficit = 0;
    flow.inTurn = false;
    band.flows.delete(flow.key);
    if (band.active.length === 0) this.bands = this.bands.filter((b) => b !== band);
  }

  private bandFor(priority: number): Band<T> {
    let band = this.bands.find((b) => b.priority === priority);
    if (band === undefined) {
      band = { priority, flows: new Map(), active: [], cursor: 0 };
      this.bands.push(band);
      this.bands.sort((a, b) => b.priority - a.priority);
    }
    return band;
  }
}
