// The fair policy's order, asserted on FairQueue itself (no timers, no HTTP): deficit round robin between keys,
// fresh flows before backlogged ones, weights, priority bands, removal, eligibility, and the full-queue victim. The limiter's timeouts on a fake clock.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FairQueue } from '../../src/concurrency/fair-queue.js';
import { createConcurrencyLimiter, isQueueTimeoutError } from '../../src/index.js';

interface Task {
  key: string;
  priority: number;
  name: string;
}

const task = (key: string, n: number, priority = 0): Task => ({ key, priority, name: `${key}${n}` });

/** Everything the queue holds, in the order it gives it out. */
function drain(queue: FairQueue<Task>, eligible?: (key: string) => boolean): string[] {
  const order: string[] = [];
  for (let item = queue.shift(eligible); item !== undefined; item = queue.shift(eligible))
    order.push(item.name);
  return order;
}

describe('FairQueue', () => {
  it('serves keys in turn, one task each, whatever the order they arrived in', () => {
    const queue = new FairQueue<Task>();
    for (let i = 0; i < 5; i++) queue.push(task('flood', i), 1);
    for (const key of ['a', 'b', 'c']) queue.push(task(key, 0), 1);
    expect(queue.countsByKey()).toEqual({ flood: 5, a: 1, b: 1, c: 1 });
    expect(drain(queue)).toEqual(['flood0', 'a0', 'b0', 'c0', 'flood1', 'flood2', 'flood3', 'flood4']);
    expect(queue.length).toBe(0);
  });

  it('serves a key that was idle before the backlogged keys (FQ-CoDel new flows): a light key waits for a slot, not a round', () => {
    const queue = new FairQueue<Task>();
    for (let i = 0; i < 6; i++) {
      queue.push(task('flood', i), 1);
      queue.push(task('batch', i), 1);
    }
    expect([queue.shift()?.name, queue.shift()?.name, queue.shift()?.name]).toEqual([
      'flood0',
      'batch0',
      'flood1',
    ]);
    // Both backlogged; a light key's request comes: it is next, whoever's turn it was.
    queue.push(task('light', 0), 1);
    expect(queue.shift()?.name).toBe('light0');
    // Then the round robin goes on where it was.
    expect([queue.shift()?.name, queue.shift()?.name]).toEqual(['batch1', 'flood2']);
    // Idle again, then a new request: first again. A backlogged key never becomes fresh while it waits.
    queue.push(task('light', 1), 1);
    queue.push(task('flood', 6), 1);
    expect(queue.shift()?.name).toBe('light1');
  });

  it('gives turns in proportion to weights (deficit round robin: 3, 1 and 0.5)', () => {
    const queue = new FairQueue<Task>();
    for (let i = 0; i < 8; i++) {
      queue.push(task('heavy', i), 3);
      queue.push(task('light', i), 1);
      queue.push(task('half', i), 0.5);
    }
    const order = drain(queue).slice(0, 12);
    // Two rounds: heavy ×3, light ×1, half ×0 (deficit 0.5), then heavy ×3, light ×1, half ×1.
    expect(order).toEqual([
      'heavy0',
      'heavy1',
      'heavy2',
      'light0',
      'heavy3',
      'heavy4',
      'heavy5',
      'light1',
      'half0',
      'heavy6',
      'heavy7',
      'light2',
    ]);
  });

  it('empties a higher priority band first, fair within each band', () => {
    const queue = new FairQueue<Task>();
    for (let i = 0; i < 3; i++) queue.push(task('batch', i, -1), 1);
    queue.push(task('n', 0), 1);
    queue.push(task('a', 0, 5), 1);
    queue.push(task('b', 0, 5), 1);
    queue.push(task('b', 1, 5), 1);
    queue.push(task('c', 0, 5), 1);
    expect(queue.countsByPriority()).toEqual({ '5': 4, '0': 1, '-1': 3 });
    expect(drain(queue)).toEqual(['a0', 'b0', 'c0', 'b1', 'n0', 'batch0', 'batch1', 'batch2']);
  });

  it('skips a key that may not start (its own concurrency) without losing its place', () => {
    const queue = new FairQueue<Task>();
    for (let i = 0; i < 3; i++) queue.push(task('busy', i), 1);
    queue.push(task('x', 0), 1);
    queue.push(task('y', 0), 1);
    expect(drain(queue, (key) => key !== 'busy')).toEqual(['x0', 'y0']);
    expect(queue.countOf('busy')).toBe(3);
    expect(drain(queue)).toEqual(['busy0', 'busy1', 'busy2']);
  });

  it('removes a cancelled task, and names the newest task of the longest line as the victim when full', () => {
    const queue = new FairQueue<Task>();
    const tasks = Array.from({ length: 4 }, (_, i) => task('flood', i));
    for (const t of tasks) queue.push(t, 1);
    queue.push(task('a', 0), 1);
    expect(queue.newestOfLargest()?.name).toBe('flood3');
    expect(queue.remove(tasks[1]!)).toBe(true);
    expect(queue.remove(tasks[1]!)).toBe(false);
    expect(queue.newestOfLargest()?.name).toBe('flood3');
    expect(drain(queue)).toEqual(['flood0', 'a0', 'flood2', 'flood3']);
    expect(queue.newestOfLargest()).toBeUndefined();
  });
});

describe('the fair limiter on a fake clock', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('times out waiting tasks in the order they would have waited, leaving the others their turn', async () => {
    vi.useFakeTimers();
    let now = 0;
    const limiter = createConcurrencyLimiter({
      concurrency: 1,
      queuePolicy: 'fair',
      maxQueue: 10,
      queueTimeoutMs: 1000,
      now: () => now,
    });
    let release!: () => void;
    const running = limiter.run(() => new Promise<void>((resolve) => (release = resolve)), { key: 'x' });
    const outcomes: string[] = [];
    const wait = (name: string, key: string) =>
      limiter
        .run(() => outcomes.push(`ran ${name}`), { key })
        .catch((error: unknown) => {
          outcomes.push(`${isQueueTimeoutError(error) ? 'timed out' : 'failed'} ${name}`);
        });
    const early = [wait('a0', 'a'), wait('a1', 'a')];
    now = 600;
    await vi.advanceTimersByTimeAsync(600);
    const late = wait('b0', 'b');
    now = 1000;
    await vi.advanceTimersByTimeAsync(400);
    await Promise.all(early);
    expect(outcomes).toEqual(['timed out a0', 'timed out a1']);
    release();
    await running;
    await late;
    expect(outcomes).toEqual(['timed out a0', 'timed out a1', 'ran b0']);
    expect(limiter.stats()).toMatchObject({ rejectedQueueTimeout: 2, completed: 2 });
    await limiter.close();
  });

  it('lets a key below its fair share start in the headroom while a flood holds every slot, and no further', async () => {
    const limiter = createConcurrencyLimiter({ concurrency: 2, queuePolicy: 'fair', fairShareHeadroom: 1 });
    const started: string[] = [];
    const releases = new Map<string, () => void>();
    const run = (name: string, key: string) =>
      limiter.run(
        () =>
          new Promise<void>((resolve) => {
            started.push(name);
            releases.set(name, resolve);
          }),
        { key },
      );
    const flood = ['f0', 'f1', 'f2', 'f3'].map((name) => run(name, 'flood'));
    await Promise.resolve();
    expect(started).toEqual(['f0', 'f1']);
    // Every slot taken: the light key (0 running, its share 1) starts at once, in the headroom.
    const light = [run('l0', 'light')];
    expect(started).toEqual(['f0', 'f1', 'l0']);
    expect(limiter.stats().active).toBe(3);
    // The headroom is used: its next task waits (first in line, as a key that was idle).
    light.push(run('l1', 'light'));
    expect(started).toHaveLength(3);
    // A flood task ends: 2 still run, the limit — nothing starts until below it.
    // (a finished task's slot is given back after its caller is answered: a turn of the event loop)
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    releases.get('f0')!();
    await turn();
    expect(started).toHaveLength(3);
    releases.get('f1')!();
    await turn();
    // Below the limit again: the queue in its order (the flood's waiting tasks came first; then the light key).
    expect(started).toEqual(['f0', 'f1', 'l0', 'f2']);
    releases.get('l0')!();
    await turn();
    expect(started).toEqual(['f0', 'f1', 'l0', 'f2', 'l1']);
    releases.get('l1')!();
    await Promise.all(light);
    await turn();
    expect(started).toEqual(['f0', 'f1', 'l0', 'f2', 'l1', 'f3']);
    for (const name of ['f2', 'f3']) releases.get(name)!();
    await Promise.all(flood);
    expect(() => createConcurrencyLimiter({ fairShareHeadroom: 1 })).toThrow(/fairShareHeadroom.*'fifo'/);
    await limiter.close();
  });
});
