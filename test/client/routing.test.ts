// Prefix-cache-aware routing: consistent hashing with bounded loads, stable across processes, affinity keys, ejection
// moving only the ejected replica's keys, custom policies, and the options.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HashRing, hash32, routingKeyOf } from '../../src/client/routing.js';
import { isInvalidOptionError } from '../../src/index.js';
import { generations, trackResources } from '../helpers/fixtures.js';

const use = trackResources();
const root = resolve(import.meta.dirname, '../..');
const urls = ['http://10.0.0.1:8000', 'http://10.0.0.2:8000', 'http://10.0.0.3:8000', 'http://10.0.0.4:8000'];
const prompts = Array.from(
  { length: 1000 },
  (_, i) => `You are assistant number ${i}. ${'Context. '.repeat(30)}`,
);
/** A conversation: its own system prompt, then `turns` user/assistant exchanges. */
const conversation = (id: number, turns: number) => [
  { role: 'system', content: `Session ${id}: ${'You answer questions about topic '.repeat(12)}${id}.` },
  ...Array.from({ length: turns }, (_, t) => [
    { role: 'user', content: `Question ${t} of session ${id}?` },
    { role: 'assistant', content: `Answer ${t}.` },
  ]).flat(),
  { role: 'user', content: 'And now?' },
];

describe('the hash ring', () => {
  it('maps 1,000 prompts the same way in two processes (no seed, no shared state)', () => {
    const here = prompts.map((p) => new HashRing(urls).home(hash32(routingKeyOf({ prompt: p }, 256)!)));
    const code = `
      import { HashRing, hash32, routingKeyOf } from './src/client/routing.ts';
      const urls = ${JSON.stringify([...urls].reverse())};
      const prompts = Array.from({ length: 1000 }, (_, i) => \`You are assistant number \${i}. \${'Context. '.repeat(30)}\`);
      const ring = new HashRing(urls);
      process.stdout.write(JSON.stringify(prompts.map((p) => urls[ring.home(hash32(routingKeyOf({ prompt: p }, 256)))])));
    `;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      cwd: root,
      encoding: 'utf8',
    });
    expect(child.stderr).toBe('');
    // The other process listed the replicas in another order: the ring does not depend on it.
    expect(JSON.parse(child.stdout)).toEqual(here.map((i) => urls[i]));
    // And the keys spread over every replica, about a quarter each.
    const counts = urls.map((_, i) => here.filter((h) => h === i).length);
    for (const count of counts) expect(count).toBeGreaterThan(150);
  });

  it('moves only the ejected replica’s keys when it leaves, and gives them back when it returns', () => {
    const ring = new HashRing(urls);
    const hashes = prompts.map((p) => hash32(p));
    const before = hashes.map((h) => ring.home(h));
    const without2 = hashes.map((h) => ring.find(h, (i) => i !== 2)!);
    const moved = before.filter((home, k) => home !== without2[k]);
    // Exactly the keys that lived on replica 2 moved, spread over the others.
    expect(moved.every((home) => home === 2)).toBe(true);
    expect(moved.length).toBe(before.filter((home) => home === 2).length);
    expect(new Set(without2.filter((_, k) => before[k] === 2))).toEqual(new Set([0, 1, 3]));
    expect(hashes.map((h) => ring.home(h))).toEqual(before);
  });

  it('keys a body by its affinity fields first, then the prompt’s leading characters', () => {
    const messages = conversation(1, 2);
    expect(routingKeyOf({ messages, prompt_cache_key: 'conv-9', user: 'u' }, 256)).toBe('k:conv-9');
    expect(routingKeyOf({ messages, user: 'alice' }, 256)).toBe('u:alice');
    // Later turns of a conversation share the key of its first: the system prompt leads.
    expect(routingKeyOf({ messages: conversation(1, 5) }, 256)).toBe(routingKeyOf({ messages }, 256));
    expect(routingKeyOf({ messages: conversation(2, 2) }, 256)).not.toBe(routingKeyOf({ messages }, 256));
    expect(routingKeyOf({ prompt: ['abc', 'def'] }, 2)).toBe('p:ab');
    expect(routingKeyOf({ input: 'embed me' }, 256)).toBe('p:embed me');
    expect(routingKeyOf({ model: 'm' }, 256)).toBeUndefined();
  });
});

describe('createVllmClient routing', () => {
  async function replicas(count: number, options: Parameters<typeof use.simulator>[0] = {}) {
    return Promise.all(Array.from({ length: count }, () => use.simulator(options)));
  }

  it('defaults to prefix routing with several replicas: each conversation stays on one replica', async () => {
    const sims = await replicas(3);
    const client = use.client({ baseUrls: sims.map((s) => s.url) });
    for (let turn = 0; turn < 3; turn++) {
      for (let id = 0; id < 30; id++) {
        await client.chatCompletion({ messages: conversation(id, turn), max_tokens: 1 });
      }
    }
    const stats = client.stats().upstreams;
    expect(stats.reduce((sum, u) => sum + u.prefixRouted, 0)).toBe(90);
    expect(stats.reduce((sum, u) => sum + u.fallbacks, 0)).toBe(0);
    // Each replica served whole conversations (3 turns each); the conversations spread over the replicas (which
    // ones depends on the ring, and so on the simulators' random ports: at least two of three here, always).
    for (const sim of sims) expect(generations(sim) % 3).toBe(0);
    expect(sims.filter((sim) => generations(sim) > 0).length).toBeGreaterThanOrEqual(2);
  });

  it('spreads a hot prefix under bounded loads instead of pinning one replica (strict bound, no slack)', async () => {
    const sims = await replicas(4, { ttftMs: 300 });
    const client = use.client({
      baseUrls: sims.map((s) => s.url),
      routingLoadFactor: 1.25,
      routingLoadSlack: 0,
    });
    // 40 requests at once, all with the same prompt.
    const calls = Array.from({ length: 40 }, () =>
      client.chatCompletion({ messages: conversation(7, 0), max_tokens: 1 }),
    );
    await expect.poll(() => sims.reduce((sum, s) => sum + s.stats().running, 0)).toBe(40);
    const running = sims.map((s) => s.stats().running);
    // Each replica holds at most ⌈1.25 × 40 / 4⌉ = 13.
    expect(Math.max(...running)).toBeLessThanOrEqual(13);
    expect(running.filter((r) => r > 0).length).toBeGreaterThanOrEqual(3);
    await Promise.all(calls);
    const stats = client.stats().upstreams;
    expect(stats.reduce((sum, u) => sum + u.fallbacks, 0)).toBeGreaterThan(0);
  });

  it('with the default slack, a hot prefix still spreads once the load is real', async () => {
    const sims = await replicas(4, { ttftMs: 300 });
    const client = use.client({ baseUrls: sims.map((s) => s.url) });
    const calls = Array.from({ length: 60 }, () =>
      client.chatCompletion({ messages: conversation(8, 0), max_tokens: 1 }),
    );
    await expect.poll(() => sims.reduce((sum, s) => sum + s.stats().running, 0)).toBe(60);
    // ⌈1.25 × 60 / 4⌉ + 8 = 27 at most on the hot key's replica; the rest went on around the ring.
    expect(Math.max(...sims.map((s) => s.stats().running))).toBeLessThanOrEqual(27);
    await Promise.all(calls);
  });

  it('an affinity key (routingKey) keeps different prompts together; request() routes by the parsed body', async () => {
    const sims = await replicas(4);
    const client = use.client({ baseUrls: sims.map((s) => s.url) });
    for (let i = 0; i < 8; i++) {
      await client.chatCompletion(
        { messages: [{ role: 'user', content: `unrelated prompt ${i}` }], max_tokens: 1 },
        { routingKey: 'session-42' },
      );
    }
    expect(sims.map((s) => generations(s)).sort()).toEqual([0, 0, 0, 8]);
    const body = { messages: conversation(3, 1), max_tokens: 1 };
    const targets = new Set<number>();
    for (let i = 0; i < 4; i++) {
      const before = sims.map((s) => generations(s));
      const reply = await client.request({
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        routingBody: body,
      });
      for await (const _ of reply.body) void _;
      targets.add(sims.findIndex((s, k) => generations(s) > before[k]!));
    }
    expect(targets.size).toBe(1);
  });

  it('sends an ejected replica’s keys to the next replica, and only those', async () => {
    const sims = await replicas(3);
    const client = use.client({
      baseUrls: sims.map((s) => s.url),
      ejectAfterFailures: 1,
      probeIntervalMs: 60_000,
      retryBaseDelayMs: 1,
      retryMaxDelayMs: 2,
    });
    const homeOf = async (id: number) => {
      const before = sims.map((s) => generations(s));
      await client.chatCompletion({ messages: conversation(id, 0), max_tokens: 1 });
      return sims.findIndex((s, k) => generations(s) > before[k]!);
    };
    const homes: number[] = [];
    for (let id = 0; id < 30; id++) homes.push(await homeOf(id));
    const down = homes[0]!;
    // The replica goes away (its open connections too).
    await sims[down]!.close();
    // The first request keyed to it fails over (and ejects it); from then on its keys go to the next replica.
    const after: number[] = [];
    for (let id = 0; id < 30; id++) after.push(await homeOf(id));
    for (let id = 0; id < 30; id++) {
      if (homes[id] === down) expect(after[id]).not.toBe(down);
      else expect(after[id]).toBe(homes[id]);
    }
    expect(client.stats().upstreams[down]!.ejected).toBe(true);
  });

  it('takes a custom policy, and round-robin and least-outstanding by name', async () => {
    const sims = await replicas(3);
    const seen: (string | undefined)[] = [];
    const custom = use.client({
      baseUrls: sims.map((s) => s.url),
      routing: ({ key, replicas }) => {
        seen.push(key);
        return replicas[2]!.url;
      },
    });
    await custom.chatCompletion({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 });
    await custom.chatCompletion(
      { messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 },
      { routingKey: 's' },
    );
    expect(sims.map((s) => generations(s))).toEqual([0, 0, 2]);
    expect(seen).toEqual(['p:user\nhi\n', 'a:s']);
    // Model discovery off: models() then asks one replica at a time, in turn.
    const turns = use.client({
      baseUrls: sims.map((s) => s.url),
      routing: 'round-robin',
      modelDiscovery: false,
    });
    for (let i = 0; i < 6; i++) await turns.models();
    expect(sims.map((s) => s.stats().requestsReceived - generations(s))).toEqual([3, 3, 3]);
  });

  it('refuses bad routing options with InvalidOptionError', () => {
    const cases: [Record<string, unknown>, string][] = [
      [
        { routing: 'random' },
        'Expected `routing` to be "prefix", "least-outstanding", "round-robin" or a function',
      ],
      [{ routingLoadFactor: 0.5 }, 'Expected `routingLoadFactor` to be a number >= 1'],
      [{ routingPrefixChars: 0 }, 'Expected `routingPrefixChars` to be an integer >= 1'],
      [{ routingLoadSlack: -1 }, 'Expected `routingLoadSlack` to be an integer >= 0'],
      [{ loadSignalsIntervalMs: -1 }, 'Expected `loadSignalsIntervalMs` to be a number >= 0'],
    ];
    for (const [options, message] of cases) {
      let error: unknown;
      try {
        use.client({ baseUrls: urls, ...options } as never);
      } catch (e) {
        error = e;
      }
      expect(isInvalidOptionError(error), JSON.stringify(options)).toBe(true);
      expect((error as Error).message).toContain(message);
    }
  });

  it('reads each replica’s queue and KV use from its /metrics when load signals are on', async () => {
    const sims = await replicas(2, { ttftMs: 60_000, maxNumSeqs: 1 });
    const client = use.client({ baseUrls: sims.map((s) => s.url), loadSignalsIntervalMs: 20 });
    // Fill one replica: one running, two waiting.
    for (let i = 0; i < 3; i++) {
      void client
        .chatCompletion(
          { messages: [{ role: 'user', content: 'x' }], max_tokens: 1 },
          { replica: sims[0]!.url },
        )
        .catch(() => undefined);
    }
    await expect.poll(() => client.stats().upstreams[0]!.waiting).toBe(2);
    expect(client.stats().upstreams[0]!.kvCacheUsage).toBe(1);
    expect(client.stats().upstreams[1]!.waiting).toBe(0);
  });
});

describe('routingKeyMaxInFlight', () => {
  const messages = [{ role: 'user' as const, content: 'hello' }];
  it('sends a key’s requests beyond the cap by load, and keeps affinity once they are done', async () => {
    const sims = await Promise.all([0, 1, 2].map(() => use.simulator({ ttftMs: 200 })));
    const client = use.client({
      baseUrls: sims.map((s) => s.url),
      routing: 'prefix',
      routingKeyMaxInFlight: 2,
      routingLoadSlack: 100,
    });
    const ask = () => client.chatCompletion({ messages, max_tokens: 1 }, { routingKey: 'one-session' });
    await Promise.all(Array.from({ length: 9 }, ask));
    const counts = sims.map((s) => s.stats().completed).sort();
    // 2 on the key's replica, the other 7 by load: 2 + ~2 there, the rest over the other two.
    expect(Math.max(...counts)).toBeLessThanOrEqual(5);
    // One at a time, the key stays on its replica.
    const before = sims.map((s) => s.stats().completed);
    for (let i = 0; i < 4; i++) await ask();
    const grew = sims.map((s, i) => s.stats().completed - before[i]!);
    expect(grew.filter((n) => n > 0)).toEqual([4]);
  });
});
