// vLLM's scheduler in miniature: `maxNumSeqs` running slots and a FIFO waiting queue, with O(1) cancellation.

export interface EngineJob {
  /** Called when the job gets a running slot. */
  start(): void;
  /** Set by the engine: `waiting`, `running` or `done`. */
  state: 'new' | 'waiting' | 'running' | 'done';
  /** Time the job entered the queue (ms, performance clock). */
  enqueuedAt: number;
}

export class Engine {
  running = 0;
  waiting = 0;
  private queue: (EngineJob | undefined)[] = [];
  private head = 0;

  constructor(
    private readonly maxNumSeqs: number,
    private readonly maxQueue: number,
  ) {}

  /** True when a new job would be refused (every slot busy and the queue at its cap). */
  get full(): boolean {
    return this.running >= this.maxNumSeqs && this.waiting >= this.maxQueue;
  }

  /** Runs the job now if a slot is free, otherwise queues it. Call only when not `full`. */
  submit(job: EngineJob, now: number): void {
    job.enqueuedAt = now;
    if (this.running < this.maxNumSeqs && this.waiting === 0) {
      this.running++;
      job.state = 'running';
      job.start();
      return;
    }
    job.state = 'waiting';
    this.waiting++;
    this.queue.push(job);
  }

  /** Frees the job's slot or queue place (on completion or abort) and starts whoever waits next. */
  finish(job: EngineJob): void {
    if (job.state === 'running') {
      this.running--;
      job.state = 'done';
      this.drain();
    } else if (job.state === 'waiting') {
      // Left in the array and skipped when reached: removal stays O(1).
      this.waiting--;
      job.state = 'done';
    }
  }

  private drain(): void {
    while (this.running < this.maxNumSeqs && this.waiting > 0) {
      const job = this.queue[this.head];
      this.queue[this.head++] = undefined;
      if (job === undefined || job.state !== 'waiting') continue;
      this.waiting--;
      this.running++;
      job.state = 'running';
      job.start();
    }
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }
}
