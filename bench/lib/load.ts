// The load generator: closed loops (N callers, each sending its next request when the last ends) and an open loop
// (Poisson arrivals at a target rate, latency counted from each request's scheduled time, so a slow server cannot
// hide its queueing by slowing the generator down). HTTP requests go out on undici from many source addresses in
// 127.0.0.0/8, so per-IP rate limits see many clients, as in production.
import { Client, Pool } from 'undici';
import { createRandom } from '../../src/testing/generation.js';

export interface LoadOptions {
  url: string;
  path: string;
  method?: 'GET' | 'POST';
  body?: string;
  headers?: Record<string, string>;
  connections: number;
  durationMs: number;
  /** Time to run first without counting (JIT, connection set-up). */
  warmupMs?: number;
}

export interface LoadResult {
  requests: number;
  errors: number;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function median(values: number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

/** µs per call of `fn`: a warm-up of `iterations` / 10 calls, then the median of 5 timed batches of `iterations`. */
export function microsPerCall(fn: () => void, iterations: number): number {
  for (let i = 0; i < iterations / 10; i++) fn();
  const batches: number[] = [];
  for (let b = 0; b < 5; b++) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) fn();
    batches.push(Number(process.hrtime.bigint() - started) / iterations / 1000);
  }
  return median(batches);
}

/** p50/p90/p99/max of a list of milliseconds (the list is sorted in place). */
export function summarize(values: number[]): { p50: number; p90: number; p99: number; max: number } {
  values.sort((a, b) => a - b);
  return {
    p50: percentile(values, 50),
    p90: percentile(values, 90),
    p99: percentile(values, 99),
    max: values.at(-1) ?? Number.NaN,
  };
}

/** The i-th client address: 127.10.0.1, 127.10.0.2, … (all of 127.0.0.0/8 is loopback on Linux). */
export function sourceAddress(i: number): string {
  return `127.${10 + Math.floor(i / 62_500)}.${(Math.floor(i / 250) % 250) + 1}.${(i % 250) + 1}`;
}

/** One keep-alive undici Pool per client address, created when first used. */
export class ClientPool {
  private readonly pools = new Map<number, Pool>();
  constructor(private readonly url: string) {}

  for(address: number): Pool {
    let pool = this.pools.get(address);
    if (pool === undefined) {
      pool = new Pool(this.url, {
        localAddress: sourceAddress(address),
        pipelining: 1,
        keepAliveTimeout: 60_000,
        // A stream can stay silent while queued upstream; the benchmark decides when to give up, not undici.
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      this.pools.set(address, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((pool) => pool.destroy()));
    this.pools.clear();
  }
}

export interface HttpRequest {
  path: string;
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
}

export interface Outcome {
  status: number;
  /** From sending to the last byte. */
  ms: number;
  /** From sending to the first body byte (the first SSE event of a stream). */
  firstByteMs: number;
  /** Gaps between successive SSE events (a stream only; events arriving in one TCP chunk count as 0 ms apart). */
  gaps?: number[];
  retryAfter?: string;
  /** The request failed without a response (connection refused, reset). */
  failed?: boolean;
}

/** Sends one request and reads the whole response, timing its first byte and (for `stream`) every SSE event. */
export async function send(pool: Pool | Client, request: HttpRequest, stream = false): Promise<Outcome> {
  const started = performance.now();
  try {
    const response = await pool.request({
      path: request.path,
      method: request.method ?? 'POST',
      headers: { 'content-type': 'application/json', ...request.headers },
      body: request.body ?? null,
    });
    let firstByteMs = Number.NaN;
    let last = Number.NaN;
    const gaps: number[] | undefined = stream ? [] : undefined;
    for await (const chunk of response.body as AsyncIterable<Buffer>) {
      const now = performance.now();
      if (Number.isNaN(firstByteMs)) firstByteMs = now - started;
      if (gaps !== undefined) {
        // Each SSE event ends with a blank line.
        let at = chunk.indexOf('\n\n');
        while (at !== -1) {
          if (!Number.isNaN(last)) gaps.push(now - last);
          last = now;
          at = chunk.indexOf('\n\n', at + 2);
        }
      }
    }
    const ms = performance.now() - started;
    const retryAfter = response.headers['retry-after'];
    return {
      status: response.statusCode,
      ms,
      firstByteMs: Number.isNaN(firstByteMs) ? ms : firstByteMs,
      ...(gaps ? { gaps } : {}),
      ...(typeof retryAfter === 'string' ? { retryAfter } : {}),
    };
  } catch {
    const ms = performance.now() - started;
    return { status: 0, ms, firstByteMs: ms, failed: true };
  }
}

/** Closed loop over any async call: `concurrency` loops, each starting its next call when the last ends. */
export async function closedLoopRun<T>(
  call: (loop: number) => Promise<T>,
  options: {
    concurrency: number;
    durationMs: number;
    warmupMs: number;
    /** Called when the counted window opens and when it closes (to read CPU time around it, say). */
    onWindow?: (edge: 'open' | 'close') => void;
  },
): Promise<{ results: T[]; latencies: number[]; errors: number; elapsedMs: number }> {
  const results: T[] = [];
  const latencies: number[] = [];
  let errors = 0;
  let counting = false;
  let stop = false;
  const loop = async (index: number) => {
    while (!stop) {
      const started = performance.now();
      try {
        const result = await call(index);
        if (counting) {
          latencies.push(performance.now() - started);
          results.push(result);
        }
      } catch {
        if (counting) errors++;
      }
    }
  };
  const loops = Array.from({ length: options.concurrency }, (_, index) => loop(index));
  await new Promise((resolve) => setTimeout(resolve, options.warmupMs));
  options.onWindow?.('open');
  counting = true;
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, options.durationMs));
  counting = false;
  const elapsedMs = performance.now() - started;
  options.onWindow?.('close');
  stop = true;
  await Promise.all(loops);
  return { results, latencies, errors, elapsedMs };
}

/** Closed loop over any async call, summarised as throughput and latency. */
export async function closedLoopCalls(
  call: (loop: number) => Promise<unknown>,
  options: { concurrency: number; durationMs: number; warmupMs: number },
): Promise<LoadResult> {
  const run = await closedLoopRun(call, options);
  run.latencies.sort((a, b) => a - b);
  return {
    requests: run.latencies.length,
    errors: run.errors,
    requestsPerSec: (run.latencies.length / run.elapsedMs) * 1000,
    p50Ms: percentile(run.latencies, 50),
    p99Ms: percentile(run.latencies, 99),
  };
}

/** Closed-loop HTTP: one undici Client (one connection) per loop. */
export async function closedLoop(options: LoadOptions): Promise<LoadResult> {
  const clients = Array.from(
    { length: options.connections },
    () => new Client(options.url, { pipelining: 1, keepAliveTimeout: 60_000 }),
  );
  try {
    return await closedLoopCalls(
      async (loop) => {
        const outcome = await send(clients[loop]!, options);
        if (outcome.status >= 400 || outcome.failed) throw new Error(`status ${outcome.status}`);
      },
      { concurrency: options.connections, durationMs: options.durationMs, warmupMs: options.warmupMs ?? 500 },
    );
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

/**
 * Open loop: requests arrive as a Poisson process at `ratePerSec` for `warmupMs + durationMs`; only those scheduled
 * after the warm-up are counted. Each outcome's times include how late its request left (the generator's own
 * lateness), so they are measured from the scheduled time. Resolves when every request has ended.
 */
export async function openLoop(options: {
  ratePerSec: number;
  durationMs: number;
  warmupMs: number;
  seed?: number;
  send: (index: number) => Promise<Outcome>;
}): Promise<{
  outcomes: Outcome[];
  offered: number;
  /** The counted window: from the end of the warm-up to the last arrival. */
  elapsedMs: number;
  /** From the end of the warm-up until every request has ended (queues drained). */
  finishedMs: number;
}> {
  // Seeded, so every run offers the same arrival times.
  const random = createRandom(options.seed ?? 1);
  const outcomes: Outcome[] = [];
  const pending: Promise<void>[] = [];
  const begin = performance.now();
  const end = begin + options.warmupMs + options.durationMs;
  let next = begin;
  let index = 0;
  let offered = 0;
  while (true) {
    next += (-Math.log(1 - random()) / options.ratePerSec) * 1000;
    if (next >= end) break;
    const wait = next - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    const scheduled = next;
    const counted = scheduled >= begin + options.warmupMs;
    if (counted) offered++;
    const late = performance.now() - scheduled;
    pending.push(
      options.send(index++).then((outcome) => {
        if (!counted) return;
        outcome.ms += late;
        outcome.firstByteMs += late;
        outcomes.push(outcome);
      }),
    );
  }
  const elapsedMs = performance.now() - begin - options.warmupMs;
  await Promise.all(pending);
  return { outcomes, offered, elapsedMs, finishedMs: performance.now() - begin - options.warmupMs };
}
