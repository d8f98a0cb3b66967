// The waiting room of a fair limiter: priority bands (higher first), and within a band one flow per key served by
// deficit round robin (Shreedhar & Varghese, 1995): each turn gives a flow its weight in credit, and it takes one task
// per whole unit. Equal weights are plain round robin; a key with weight 3 gets three turns to another's one.
// As in FQ-CoDel (RFC 8290 §4), a flow that was idle goes first: new flows are served before the backlogged ones, so a
// key sending now and then (a light key beside a flood) waits for a free slot, not for a turn of every backlogged key.

export interface FairItem {
  readonly key: string;
  readonly priority: number;
}

interface Flow<T extends FairItem> {
  key: string;
  weight: number;
  /** Credit left in its turn: it takes a task per whole unit. */
  deficit: number;
  queue: T[];
  /** In the band's `fresh` list (it was idle when its task came), else in `backlogged`. */
  fresh: boolean;
}

interface Band<T extends FairItem> {
  priority: number;
  flows: Map<string, Flow<T>>;
  /** Flows that were idle when their task came, in arrival order: served first. */
  fresh: Flow<T>[];
  /** Flows with waiting tasks, in round-robin order (the head's turn is on). */
  backlogged: Flow<T>[];
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
      for (const flow of band.flows.values()) n += flow.queue.length;
      if (n > 0) counts[String(band.priority)] = n;
    }
    return counts;
  }

  push(item: T, weight: number): void {
    const band = this.bandFor(item.priority);
    let flow = band.flows.get(item.key);
    if (flow === undefined) {
      // Idle until now: a fresh flow, its first turn's credit at once.
      flow = { key: item.key, weight, deficit: weight, queue: [], fresh: true };
      band.flows.set(item.key, flow);
      band.fresh.push(flow);
    }
    // The latest weight given for a key is its weight.
    flow.weight = weight;
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
   * not); within it, fresh flows first, then deficit round robin over the backlogged ones. Undefined when none may.
   */
  shift(eligible: (key: string) => boolean = () => true): T | undefined {
    for (const band of this.bands) {
      const item =
        this.shiftFrom(band, band.fresh, eligible) ?? this.shiftFrom(band, band.backlogged, eligible);
      if (item !== undefined) return item;
    }
    return undefined;
  }

  /**
   * DRR over one list: the first eligible flow with a whole unit of credit gives a task; a flow out of credit gets its
   * weight again and goes to the back of the backlogged flows (its turn is over). Ineligible flows keep their place.
   */
  private shiftFrom(band: Band<T>, list: Flow<T>[], eligible: (key: string) => boolean): T | undefined {
    // Each flow at most a few times round (weights ≥ 0.001 reach a whole unit within 1000 turns; bounded anyway).
    for (let visits = 0, limit = list.length * 1001 + 1; visits < limit && list.length > 0; visits++) {
      const at = list.findIndex((flow) => eligible(flow.key));
      if (at === -1) return undefined;
      const flow = list[at]!;
      if (flow.deficit >= 1) {
        flow.deficit -= 1;
        const item = flow.queue.shift()!;
        this.taken(item);
        if (flow.queue.length === 0) this.retire(band, flow);
        return item;
      }
      // Its turn is over: credit for the next one, at the back of the backlogged flows.
      flow.deficit += flow.weight;
      list.splice(at, 1);
      flow.fresh = false;
      band.backlogged.push(flow);
    }
    return undefined;
  }

  /** The newest task of the key with the most waiting (to make room for a lighter key when the queue is full). */
  newestOfLargest(): T | undefined {
    let largest: Flow<T> | undefined;
    for (const band of this.bands) {
      for (const flow of band.flows.values())
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

  /** An emptied flow leaves the rotation (and forgets its credit, as DRR does); an emptied band is dropped. */
  private retire(band: Band<T>, flow: Flow<T>): void {
    const list = flow.fresh ? band.fresh : band.backlogged;
    list.splice(list.indexOf(flow), 1);
    band.flows.delete(flow.key);
    if (band.flows.size === 0) this.bands = this.bands.filter((b) => b !== band);
  }

  private bandFor(priority: number): Band<T> {
    let band = this.bands.find((b) => b.priority === priority);
    if (band === undefined) {
      band = { priority, flows: new Map(), fresh: [], backlogged: [] };
      this.bands.push(band);
      this.bands.sort((a, b) => b.priority - a.priority);
    }
    return band;
  }
}
