// A closed-loop HTTP load generator on undici: N connections, each sending its next request when the last ends.
import { Client } from 'undici';

export interface LoadOptions {
  url: string;
  path: string;
  method?: 'GET' | 'POST';
  body?: string;
  headers?: Record<string, string>;
  connections: number;
  durationMs: number;
  /** Requests to send first and not count (JIT, connection set-up). */
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

export async function closedLoop(options: LoadOptions): Promise<LoadResult> {
  // One undici Client (one connection) per loop.
  const clients = Array.from(
    { length: options.connections },
    () => new Client(options.url, { pipelining: 1, keepAliveTimeout: 60_000 }),
  );
  const headers = { 'content-type': 'application/json', ...options.headers };
  try {
    return await closedLoopCalls(
      async (loop) => {
        const response = await clients[loop]!.request({
          path: options.path,
          method: options.method ?? 'POST',
          headers,
          body: options.body ?? null,
        });
        await response.body.dump({ limit: Number.POSITIVE_INFINITY });
        if (response.statusCode >= 400) throw new Error(`status ${response.statusCode}`);
      },
      { concurrency: options.connections, durationMs: options.durationMs, warmupMs: options.warmupMs ?? 500 },
    );
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

/** Closed loop over any async call: `concurrency` loops, each starting its next call when the last ends. */
export async function closedLoopCalls(
  call: (loop: number) => Promise<unknown>,
  options: { concurrency: number; durationMs: number; warmupMs: number },
): Promise<LoadResult> {
  const latencies: number[] = [];
  let errors = 0;
  let counting = false;
  let stop = false;
  const loop = async (index: number) => {
    while (!stop) {
      const started = performance.now();
      try {
        await call(index);
        if (counting) latencies.push(performance.now() - started);
      } catch {
        if (counting) errors++;
      }
    }
  };
  const loops = Array.from({ length: options.concurrency }, (_, index) => loop(index));
  await new Promise((resolve) => setTimeout(resolve, options.warmupMs));
  counting = true;
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, options.durationMs));
  counting = false;
  const elapsed = performance.now() - started;
  stop = true;
  await Promise.all(loops);
  latencies.sort((a, b) => a - b);
  return {
    requests: latencies.length,
    errors,
    requestsPerSec: (latencies.length / elapsed) * 1000,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
  };
}
