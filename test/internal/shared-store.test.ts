// The shared-store layer the rate limiter, the key budgets and the permit pool are built on: the two-generation
// window map (on an injected clock), the outage policy, the store choice.
import { describe, expect, it } from 'vitest';
import { chooseStore, GenerationMap, StoreOutage } from '../../src/internal/shared-store.js';

describe('GenerationMap', () => {
  it('keeps a key at least its window, drops it whole within two generations, and skips quiet spells', () => {
    let now = 1_000_000;
    const map = new GenerationMap<number>(60_000, now);
    map.current.set('a', 1);
    // A generation is a window plus a second: at 60.999 s nothing has rotated.
    now += 60_999;
    map.tick(now);
    expect(map.get('a')).toBe(1);
    expect(map.current.has('a')).toBe(true);
    // The first rotation moves it to the previous generation, where it is still found.
    now += 1;
    map.tick(now);
    expect(map.previous.get('a')).toBe(1);
    expect(map.get('a')).toBe(1);
    map.current.set('b', 2);
    expect(map.size).toBe(2);
    // The second drops it, whole; what the next generation wrote is kept.
    now += 61_000;
    map.tick(now);
    expect(map.get('a')).toBeUndefined();
    expect(map.get('b')).toBe(2);
    // A quiet spell of several generations drops everything at once, and the next rotation is a generation away.
    now += 10 * 61_000;
    map.tick(now);
    expect(map.size).toBe(0);
    map.current.set('c', 3);
    now += 60_000;
    map.tick(now);
    expect(map.current.get('c')).toBe(3);
    map.delete('c');
    expect(map.size).toBe(0);
  });
});

describe('StoreOutage', () => {
  it('hands over once however many calls wait, stays degraded when the hand-over fails, and shares limits', async () => {
    let handOvers = 0;
    let fail = true;
    const outage = new StoreOutage(4, async () => {
      handOvers++;
      if (fail) throw new Error('still down');
    });
    expect(outage.share(10)).toBe(2);
    expect(outage.share(3)).toBe(1);
    outage.failed();
    expect(outage.degraded).toBe(true);
    await expect(Promise.all([outage.recover(), outage.recover()])).rejects.toThrow('still down');
    expect(handOvers).toBe(1);
    expect(outage.degraded).toBe(true);
    fail = false;
    await Promise.all([outage.recover(), outage.recover(), outage.recover()]);
    expect(handOvers).toBe(2);
    expect(outage.degraded).toBe(false);
  });
});

describe('chooseStore', () => {
  it('picks one maker per choice', () => {
    const makers = {
      memory: () => 'm',
      cluster: () => 'c',
      redis: (client: { id: string }) => `r:${client.id}`,
    };
    expect(chooseStore('memory', makers)).toBe('m');
    expect(chooseStore('cluster', makers)).toBe('c');
    expect(chooseStore({ id: 'x' }, makers)).toBe('r:x');
  });
});
