// The fair queue policy: round robin across keys, deficit round robin by weight, priority bands, per-key queue caps,
// a full queue making room for a lighter key, and the queue timeout, aborts, per-key concurrency and the adjustable
// limit working as they do in FIFO order (which stays exactly as it was).
import { describe, expect, it } from 'vitest';
import {
  type ConcurrencyLimiterOptions,
  createConcurrencyLimiter,
  isQueueFullError,
  isQueueTimeoutError,
  isRequestAbortedError,
  type RunOptions,
} from '../../src/index.js';

/** A limiter whose tasks finish only when the test says: `started` lists each task's label in start order. */
function harness(options: ConcurrencyLimiterOptions) {
  const limiter = createConcurrencyLimiter({ maxQueue: 10_000, ...options });
  const started: string[] = [];
  const finishers: (() => void)[] = [];
  const outcomes: Promise<unknown>[] = [];
  const submit = (label: string, runOptions: RunOptions = {}) => {
    const outcome = limiter.run(
      () =>
        new Promise<void>((resolve) => {
          started.push(label);
          finishers.push(resolve);
        }),
      runOptions,
    );
    outcomes.push(outcome.catch(() => undefined));
    return outcome;
  };
  /** Finishes the oldest running task and lets the limiter start the next. */
  const finishOne = async () => {
    finishers.shift()!();
    for (let i = 0; i < 5; i++) await Promise.resolve();
    await new Promise((resolve) => setImmediate(resolve));
  };
  const finishAll = async (n: number) => {
    for (let i = 0; i < n; i++) await finishOne();
  };
  return { limiter, started, submit, finishOne, finishAll, outcomes };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('queuePolicy: "fair"', () => {
  it('keeps FIFO exactly when off: the flood goes first, in arrival order', async () => {
    const h = harness({ concurrency: 1 });
    for (let i = 0; i < 5; i++) void h.submit(`flood${i}`, { key: 'flood' });
    void h.submit('light', { key: 'light' });
    await tick();
    await h.finishAll(6);
    expect(h.started).toEqual(['flood0', 'flood1', 'flood2', 'flood3', 'flood4', 'light']);
  });

  it('serves light keys between the flood’s tasks: each waits at most one turn of each other key', async () => {
    const h = harness({ concurrency: 2, queuePolicy: 'fair' });
    for (let i = 0; i < 40; i++) void h.submit(`flood${i}`, { key: 'flood' });
    await tick();
    for (const key of ['a', 'b', 'c']) void h.submit(key, { key });
    await tick();
    await h.finishAll(8);
    // Two flood tasks took the free slots; after that the light keys alternate with the flood.
    expect(h.started.slice(0, 8)).toEqual(['flood0', 'flood1', 'flood2', 'a', 'b', 'c', 'flood3', 'flood4']);
    // 7 of the flood's 40 have started.
    expect(h.limiter.stats().pendingByKey).toEqual({ flood: 33 });
  });

  it('gives keys turns in proportion to their weights (deficit round robin)', async () => {
    const h = harness({ concurrency: 1, queuePolicy: 'fair' });
    void h.submit('first', { key: 'first' });
    for (let i = 0; i < 60; i++) {
      void h.submit('heavy', { key: 'heavy', weight: 3 });
      void h.submit('light', { key: 'light', weight: 1 });
      void h.submit('half', { key: 'half', weight: 0.5 });
    }
    await tick();
    await h.finishAll(46);
    const served = h.started.slice(1, 46);
    const count = (label: string) => served.filter((s) => s === label).length;
    // 3 : 1 : 0.5 of 45 turns.
    expect(count('heavy')).toBe(30);
    expect(count('light')).toBe(10);
    expect(count('half')).toBe(5);
  });

  it('starts a higher priority band first, fair within each band', async () => {
    const h = harness({ concurrency: 1, queuePolicy: 'fair' });
    void h.submit('busy');
    for (let i = 0; i < 3; i++) void h.submit(`low${i}`, { key: 'batch', priority: -1 });
    void h.submit('normal', { key: 'n' });
    void h.submit('urgent-a', { key: 'a', priority: 5 });
    void h.submit('urgent-b1', { key: 'b', priority: 5 });
    void h.submit('urgent-b2', { key: 'b', priority: 5 });
    void h.submit('urgent-c', { key: 'c', priority: 5 });
    await tick();
    expect(h.limiter.stats().pendingByPriority).toEqual({ '5': 4, '0': 1, '-1': 3 });
    await h.finishAll(9);
    expect(h.started).toEqual([
      'busy',
      'urgent-a',
      'urgent-b1',
      'urgent-c',
      'urgent-b2',
      'normal',
      'low0',
      'low1',
      'low2',
    ]);
  });

  it('caps one key’s waiting tasks (its own 503 first) while other keys still queue', async () => {
    const h = harness({ concurrency: 1, queuePolicy: 'fair', maxQueuePerKey: 5, maxQueue: 100 });
    void h.submit('busy', { key: 'flood' });
    const floods = Array.from({ length: 8 }, (_, i) => h.submit(`flood${i}`, { key: 'flood' }));
    const light = h.submit('light', { key: 'light' });
    const refused = await Promise.allSettled(floods.slice(5));
    expect(refused.every((r) => r.status === 'rejected' && isQueueFullError(r.reason))).toBe(true);
    expect(h.limiter.stats().pendingByKey).toEqual({ flood: 5, light: 1 });
    await h.finishAll(2);
    expect(h.started).toEqual(['busy', 'flood0', 'light']);
    await h.finishOne();
    await light;
  });

  it('when the whole queue is full, a lighter key takes the place of the flood’s newest task', async () => {
    const h = harness({ concurrency: 1, queuePolicy: 'fair', maxQueue: 10 });
    void h.submit('busy', { key: 'flood' });
    const floods = Array.from({ length: 10 }, (_, i) => h.submit(`flood${i}`, { key: 'flood' }));
    const light = h.submit('light', { key: 'light' });
    const [newest] = await Promise.allSettled([floods[9]!]);
    expect(newest!.status === 'rejected' && isQueueFullError(newest!.reason)).toBe(true);
    expect(h.limiter.stats()).toMatchObject({ pending: 10, pendingByKey: { flood: 9, light: 1 } });
    // A second light task of the same key is not preferred over the flood: one place each is fair enough.
    const more = await Promise.allSettled([h.submit('flood10', { key: 'flood' })]);
    expect(more[0]!.status).toBe('rejected');
    await h.finishAll(3);
    expect(h.started.slice(0, 3)).toEqual(['busy', 'flood0', 'light']);
    await light;
  });

  it('times out, aborts, and closes waiting tasks as the FIFO policy does, without disturbing the others', async () => {
    const h = harness({ concurrency: 1, queuePolicy: 'fair', queueTimeoutMs: 50 });
    void h.submit('busy', { key: 'x' });
    const controller = new AbortController();
    const aborted = h.submit('aborted', { key: 'y', signal: controller.signal });
    const timedOut = h.submit('late', { key: 'z' });
    controller.abort();
    await expect(aborted).rejects.toSatisfy(isRequestAbortedError);
    await expect(timedOut).rejects.toSatisfy(isQueueTimeoutError);
    expect(h.limiter.stats()).toMatchObject({ pending: 0, abortedWhileQueued: 1, rejectedQueueTimeout: 1 });
    await h.finishOne();
    const after = h.submit('after', { key: 'y' });
    await tick();
    expect(h.started).toEqual(['busy', 'after']);
    await h.finishOne();
    await after;
    const running = h.submit('running', { key: 'q' });
    const queued = h.submit('queued', { key: 'q' });
    await h.limiter.close();
    await expect(queued).rejects.toThrow(/closed/);
    await h.finishOne();
    await running;
  });

  it('raises the limit at once, and keeps a key within perKeyConcurrency without holding up the others', async () => {
    const h = harness({ concurrency: 1, queuePolicy: 'fair', perKeyConcurrency: 1 });
    for (let i = 0; i < 3; i++) void h.submit(`solo${i}`, { key: 'solo' });
    for (let i = 0; i < 3; i++) void h.submit(`other${i}`, { key: `other${i}` });
    await tick();
    h.limiter.setConcurrency(4);
    await tick();
    // Four slots: one for solo (its own limit is 1), three for the others.
    expect(h.started).toEqual(['solo0', 'other0', 'other1', 'other2']);
    expect(h.limiter.stats().pendingByKey).toEqual({ solo: 2 });
    await h.finishOne();
    await tick();
    expect(h.started.at(-1)).toBe('solo1');
  });

  it('never runs more than `concurrency` tasks and finishes every one (random keys, weights, priorities, aborts)', async () => {
    for (let trial = 0; trial < 5; trial++) {
      const concurrency = 1 + Math.floor(Math.random() * 8);
      const limiter = createConcurrencyLimiter({ concurrency, maxQueue: 10_000, queuePolicy: 'fair' });
      let running = 0;
      let peak = 0;
      const results = await Promise.allSettled(
        Array.from({ length: 300 }, (_, i) => {
          const controller = new AbortController();
          if (i % 10 === 0) setTimeout(() => controller.abort(), Math.random() * 5);
          return limiter.run(
            async () => {
              running++;
              peak = Math.max(peak, running);
              await new Promise((resolve) => setTimeout(resolve, Math.random() * 3));
              running--;
            },
            {
              key: `k${i % 7}`,
              weight: 1 + (i % 3),
              priority: i % 4 === 0 ? 1 : 0,
              signal: controller.signal,
            },
          );
        }),
      );
      expect(peak).toBeLessThanOrEqual(concurrency);
      const stats = limiter.stats();
      expect(stats.completed + stats.abortedWhileQueued).toBe(300);
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(stats.completed);
      expect(stats).toMatchObject({ active: 0, pending: 0, pendingByKey: {}, pendingByPriority: {} });
    }
  });

  it('validates the new options', async () => {
    expect(() => createConcurrencyLimiter({ queuePolicy: 'lifo' as never })).toThrow(/queuePolicy/);
    expect(() => createConcurrencyLimiter({ maxQueuePerKey: 0 })).toThrow(/maxQueuePerKey/);
    const limiter = createConcurrencyLimiter({ queuePolicy: 'fair' });
    await expect(limiter.run(() => 1, { weight: 0 })).rejects.toThrow(/weight/);
    await expect(limiter.run(() => 1, { priority: 1.5 })).rejects.toThrow(/priority/);
  });
});
