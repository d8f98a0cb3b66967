// The concurrency limiter: the bound, FIFO, queue full/timeout, aborts, setConcurrency, per-key caps.
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  type ConcurrencyLimiter,
  createConcurrencyLimiter,
  isInvalidOptionError,
  isQueueFullError,
  isQueueTimeoutError,
  isRequestAbortedError,
} from '../../src/index.js';

const limiters: ConcurrencyLimiter[] = [];
afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(limiters.splice(0).map((l) => l.close()));
});
function limiter(options: Parameters<typeof createConcurrencyLimiter>[0]) {
  const l = createConcurrencyLimiter(options);
  limiters.push(l);
  return l;
}

/** A task the test finishes by hand. */
function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('createConcurrencyLimiter', () => {
  it('never runs more than `concurrency` tasks (randomised durations, many runs)', async () => {
    for (let trial = 0; trial < 5; trial++) {
      const concurrency = 1 + Math.floor(Math.random() * 8);
      const l = limiter({ concurrency, maxQueue: Number.POSITIVE_INFINITY });
      let running = 0;
      let peak = 0;
      await Promise.all(
        Array.from({ length: 200 }, () =>
          l.run(async () => {
            running++;
            peak = Math.max(peak, running);
            expect(l.activeCount).toBeLessThanOrEqual(concurrency);
            await new Promise((resolve) => setTimeout(resolve, Math.random() * 3));
            running--;
          }),
        ),
      );
      expect(peak).toBe(concurrency);
      expect(l.stats()).toMatchObject({ completed: 200, active: 0, pending: 0 });
    }
  });

  it('starts queued tasks in FIFO order', async () => {
    const l = limiter({ concurrency: 1, maxQueue: 10 });
    const order: number[] = [];
    const gate = deferred();
    const first = l.run(() => gate.promise);
    const rest = [1, 2, 3, 4].map((i) => l.run(async () => void order.push(i)));
    expect(l.pendingCount).toBe(4);
    gate.resolve();
    await Promise.all([first, ...rest]);
    expect(order).toEqual([1, 2, 3, 4]);
  });

  it('rejects with QueueFullError (with Retry-After) when the queue is full; maxQueue 0 means no queue', async () => {
    const l = limiter({ concurrency: 1, maxQueue: 1 });
    const gate = deferred();
    const running = l.run(() => gate.promise);
    const queued = l.run(async () => 'queued');
    const error = await l.run(async () => 'rejected').catch((e: unknown) => e);
    expect(isQueueFullError(error)).toBe(true);
    expect((error as { retryAfterSec: number }).retryAfterSec).toBeGreaterThanOrEqual(1);
    gate.resolve();
    expect(await queued).toBe('queued');
    await running;

    const noQueue = limiter({ concurrency: 1, maxQueue: 0 });
    const hold = deferred();
    const busy = noQueue.run(() => hold.promise);
    await expect(noQueue.run(async () => 1)).rejects.toSatisfy(isQueueFullError);
    hold.resolve();
    await busy;
    expect(noQueue.stats().rejectedQueueFull).toBe(1);
  });

  it('rejects with QueueTimeoutError after queueTimeoutMs, and the task never runs', async () => {
    vi.useFakeTimers();
    const l = limiter({ concurrency: 1, queueTimeoutMs: 1000 });
    const gate = deferred();
    const running = l.run(() => gate.promise);
    const fn = vi.fn(async () => 'late');
    const waiting = l.run(fn).catch((e: unknown) => e);
    vi.advanceTimersByTime(999);
    expect(l.pendingCount).toBe(1);
    vi.advanceTimersByTime(1);
    expect(isQueueTimeoutError(await waiting)).toBe(true);
    expect(l.pendingCount).toBe(0);
    gate.resolve();
    await running;
    await vi.runAllTimersAsync();
    expect(fn).not.toHaveBeenCalled();
    expect(l.stats().rejectedQueueTimeout).toBe(1);
  });

  it('removes a task aborted while queued at once; it never runs', async () => {
    const l = limiter({ concurrency: 1 });
    const gate = deferred();
    const running = l.run(() => gate.promise);
    const controller = new AbortController();
    const fn = vi.fn(async () => 'never');
    const aborted = l.run(fn, { signal: controller.signal }).catch((e: unknown) => e);
    const after = l.run(async () => 'after');
    expect(l.pendingCount).toBe(2);
    controller.abort(new Error('client left'));
    const error = await aborted;
    expect(isRequestAbortedError(error)).toBe(true);
    expect((error as Error).cause).toMatchObject({ message: 'client left' });
    expect(l.pendingCount).toBe(1);
    gate.resolve();
    expect(await after).toBe('after');
    await running;
    expect(fn).not.toHaveBeenCalled();
    await expect(l.run(fn, { signal: AbortSignal.abort() })).rejects.toSatisfy(isRequestAbortedError);
  });

  it('passes the caller’s signal to the task', async () => {
    const l = limiter({ concurrency: 1 });
    const controller = new AbortController();
    let seen: AbortSignal | undefined;
    const task = l.run(
      ({ signal }) =>
        new Promise((_resolve, reject) => {
          seen = signal;
          signal.addEventListener('abort', () => reject(signal.reason));
        }),
      { signal: controller.signal },
    );
    await tick();
    controller.abort(new Error('gone'));
    await expect(task).rejects.toThrow('gone');
    expect(seen?.aborted).toBe(true);
  });

  it('setConcurrency up starts queued tasks at once; down lets running ones finish', async () => {
    const l = limiter({ concurrency: 1, maxQueue: 10 });
    const gates = Array.from({ length: 4 }, () => deferred());
    const tasks = gates.map((g) => l.run(() => g.promise));
    await tick();
    expect(l.activeCount).toBe(1);
    l.setConcurrency(3);
    await tick();
    expect(l.activeCount).toBe(3);
    expect(l.pendingCount).toBe(1);
    l.setConcurrency(1);
    gates[0]!.resolve();
    gates[1]!.resolve();
    await tick();
    await tick();
    // Two finished, one still running: the fourth waits, since the limit is now 1.
    expect(l.activeCount).toBe(1);
    expect(l.pendingCount).toBe(1);
    gates[2]!.resolve();
    gates[3]!.resolve();
    await Promise.all(tasks);
    expect(l.stats().concurrency).toBe(1);
  });

  it('caps one key inside the global limit so a tenant cannot take every slot', async () => {
    const l = limiter({ concurrency: 4, perKeyConcurrency: 2, maxQueue: 100 });
    let greedyRunning = 0;
    let greedyPeak = 0;
    const greedy = Array.from({ length: 10 }, () =>
      l.run(
        async () => {
          greedyRunning++;
          greedyPeak = Math.max(greedyPeak, greedyRunning);
          await new Promise((resolve) => setTimeout(resolve, 5));
          greedyRunning--;
        },
        { key: 'tenant-a' },
      ),
    );
    await tick();
    // Another tenant still gets a slot while tenant-a is capped at 2.
    const other = await l.run(async () => l.activeCount, { key: 'tenant-b' });
    expect(other).toBeLessThanOrEqual(3);
    await Promise.all(greedy);
    expect(greedyPeak).toBe(2);
  });

  it('answers queued callers on close() and refuses new work', async () => {
    const l = limiter({ concurrency: 1 });
    const gate = deferred();
    const running = l.run(() => gate.promise);
    const queued = l.run(async () => 1).catch((e: unknown) => e);
    await l.close();
    expect((await queued) as { code: string }).toMatchObject({ code: 'ERR_VK_CLOSED' });
    await expect(l.run(async () => 1)).rejects.toMatchObject({ code: 'ERR_VK_CLOSED' });
    gate.resolve();
    await running;
  });

  it('refuses bad options with a clear message', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ concurrency: 0 }, 'Expected `concurrency` to be an integer >= 1'],
      [{ maxQueue: -1 }, 'Expected `maxQueue` to be an integer >= 0'],
      [{ queueTimeoutMs: 'soon' }, 'got `"soon"` (string)'],
      [{ adaptive: { min: 10, max: 5 } }, 'Expected `adaptive.max` (5) >= `adaptive.min` (10)'],
      [
        { adaptive: { backoffRatio: 1.5 } },
        'Expected `adaptive.backoffRatio` to be a number >= 0.01 and <= 0.99',
      ],
      [{ concurency: 3 }, 'Unknown option `concurency`'],
    ];
    for (const [options, message] of cases) {
      let error: unknown;
      try {
        createConcurrencyLimiter(options as never);
      } catch (e) {
        error = e;
      }
      expect(isInvalidOptionError(error)).toBe(true);
      expect((error as Error).message).toContain(message);
    }
  });
});
