// vLLM's scheduler in miniature: `maxNumSeqs` running slots and a FIFO waiting queue, with O(1) cancellation.

export interface EngineJob {
  /** Called when the job gets a running slot. */
  start(): void;
  /** Set by the engine: `waiting`, `running` or `done`. */
  state: 'new' | 'waiting' | 'running' | 'done';
  /** Time the job entered the queue (ms, performance clock). */
  enqueuedAt: number;
  /** The LoRA adapter the job runs with, if any (counted for `vllm:lora_requests_info`). */
  adapter?: string | undefined;
}

export class Engine {
  running = 0;
  waiting = 0;
  /** Jobs per LoRA adapter, running and waiting (adapters with none are not kept). */
  readonly adapterRunning = new Map<string, number>();
  readonly adapterWaiting = new Map<string, number>();
  /** Called whenever the adapters running or waiting change (the simulator stamps its LoRA gauge). */
  onAdapterChange: (() => void) | undefined;
  private queue: (EngineJob | undefined)[] = [];
  private head = 0;
  private draining = false;
  private drainAgain = false;

  constructor(
    private readonly maxNumSeqs: number,
    private readonly maxQueue: number,
    /** Distinct LoRA adapters in the running batch at most (vLLM's `--max-loras`). */
    private readonly maxLoras = Number.POSITIVE_INFINITY,
  ) {}

  /** A job may join the batch: it has no adapter, its adapter runs already, or an adapter slot is free. */
  private canRun(job: EngineJob): boolean {
    const adapter = job.adapter;
    return (
      adapter === undefined || this.adapterRunning.has(adapter) || this.adapterRunning.size < this.maxLoras
    );
  }

  /** True when a new job would be refused (every slot busy and the queue at its cap). */
  get full(): boolean {
    return this.running >= this.maxNumSeqs && this.waiting >= this.maxQueue;
  }

  /** Runs the job now if a slot is free, otherwise queues it. Call only when not `full`. */
  submit(job: EngineJob, now: number): void {
    job.enqueuedAt = now;
    if (this.running < this.maxNumSeqs && this.waiting === 0 && this.canRun(job)) {
      this.running++;
      job.state = 'running';
      this.countAdapter(job, this.adapterRunning, 1);
      job.start();
      return;
    }
    job.state = 'waiting';
    this.waiting++;
    this.countAdapter(job, this.adapterWaiting, 1);
    this.queue.push(job);
    // Free slots with jobs waiting happen only when those wait for an adapter slot: this one may run past them.
    if (this.running < this.maxNumSeqs) this.drain();
  }

  private countAdapter(job: EngineJob, counts: Map<string, number>, delta: number): void {
    const adapter = job.adapter;
    if (adapter === undefined) return;
    const next = (counts.get(adapter) ?? 0) + delta;
    if (next <= 0) counts.delete(adapter);
    else counts.set(adapter, next);
    this.onAdapterChange?.();
  }

  /** Frees the job's slot or queue place (on completion or abort) and starts whoever waits next. */
  finish(job: EngineJob): void {
    if (job.state === 'running') {
      this.running--;
      job.state = 'done';
      this.countAdapter(job, this.adapterRunning, -1);
      this.drain();
    } else if (job.state === 'waiting') {
      // Left in the array and skipped when reached: removal stays O(1).
      this.waiting--;
      job.state = 'done';
      this.countAdapter(job, this.adapterWaiting, -1);
    }
  }

  /**
   * Starts waiting jobs in arrival order while slots are free; a job whose adapter cannot join the batch (max_loras
   * adapters run already) is passed over and keeps its place, as vLLM's scheduler skips it. A job that finishes
   * synchronously as it starts calls back in: that call only asks for another pass.
   */
  private drain(): void {
    if (this.draining) {
      this.drainAgain = true;
      return;
    }
    this.draining = true;
    try {
      do {
        this.drainAgain = false;
        this.drainPass();
      } while (this.drainAgain);
    } finally {
      this.draining = false;
    }
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private drainPass(): void {
    let passedOver = false;
    for (
      let i = this.head;
      i < this.queue.length && this.running < this.maxNumSeqs && this.waiting > 0;
      i++
    ) {
      const job = this.queue[i];
      if (job !== undefined && job.state === 'waiting' && !this.canRun(job)) {
        passedOver = true;
        continue;
      }
      this.queue[i] = undefined;
      // The head moves past what is started or gone, up to the first job passed over.
      if (!passedOver) this.head = i + 1;
      if (job === undefined || job.state !== 'waiting') continue;
      this.waiting--;
      this.running++;
      job.state = 'running';
      this.countAdapter(job, this.adapterWaiting, -1);
      this.countAdapter(job, this.adapterRunning, 1);
      job.start();
    }
  }
}
