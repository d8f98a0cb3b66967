// Prefix-cache-aware routing: prompts as chained blocks matched against what each replica holds, conversations placed
// by balance and followed, shared prefixes spread, affinity keys, several processes sharing their placements,
// ejection moving only the ejected replica's conversations, custom policies, and the options.

import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { PrefixIndex } from '../../src/client/prefix-index.js';
import type { RoutingSync, RoutingUpdate } from '../../src/client/replica-pool.js';
import { BLOCK_CHARS, routingBlocks, routingKeyOf } from '../../src/client/routing-policy.js';
import { isInvalidOptionError, redisRoutingSync, type VllmClient } from '../../src/index.js';
import { generations, trackResources } from '../helpers/fixtures.js';
import { REDIS_URL, uniqueName } from '../helpers/services.js';

const use = trackResources();
/** A conversation: its own system prompt, then `turns` user/assistant exchanges. */
const conversation = (id: number, turns: number) => [
  { role: 'system', content: `Session ${id}: ${'You answer questions about topic '.repeat(12)}${id}.` },
  ...Array.from({ length: turns }, (_, t) => [
    { role: 'user', content: `Question ${t} of session ${id}?` },
    { role: 'assistant', content: `Answer ${t}.` },
  ]).flat(),
  { role: 'user', content: 'And now?' },
];

describe('prompt blocks and the prefix index', () => {
  const system = (id: number, chars = 1200) =>
    `Session ${id}. ${'You answer questions about the topic. '.repeat(40)}`.slice(0, chars);
  const chat = (messages: { role: string; content: string }[], extra: object = {}) => ({
    messages,
    ...extra,
  });

  it('hashes a prompt into chained blocks: a later turn extends an earlier one, another prompt shares nothing', () => {
    const turn1 = routingBlocks(
      chat([
        { role: 'system', content: system(1) },
        { role: 'user', content: 'Q1?' },
      ]),
      16384,
    );
    const turn2 = routingBlocks(
      chat([
        { role: 'system', content: system(1) },
        { role: 'user', content: 'Q1?' },
        { role: 'assistant', content: 'A1. '.repeat(60) },
        { role: 'user', content: 'Q2?' },
      ]),
      16384,
    );
    // Only full 128-character blocks: 1,200 characters of system prompt and a question make 9.
    expect(turn1.length).toBe(Math.floor(('system\n'.length + 1200 + '\nuser\nQ1?\n'.length) / BLOCK_CHARS));
    expect(turn2.slice(0, turn1.length)).toEqual([...turn1]);
    expect(turn2.length).toBeGreaterThan(turn1.length);
    const other = routingBlocks(chat([{ role: 'system', content: system(2) }]), 16384);
    expect(other.filter((b) => turn1.includes(b))).toEqual([]);
    // A shared system prompt, then each its own document: the leading blocks agree, then they part.
    const shared = 'Shared rules. '.repeat(100);
    const a = routingBlocks(chat([{ role: 'system', content: shared + 'A doc. '.repeat(100) }]), 16384);
    const b = routingBlocks(chat([{ role: 'system', content: shared + 'B doc. '.repeat(100) }]), 16384);
    const common = a.findIndex((h, i) => h !== b[i]);
    expect(common).toBe(Math.floor(('system\n'.length + shared.length) / BLOCK_CHARS));
    // The model starts the chain (vLLM's cache is per model, an adapter's apart from its base's).
    expect(
      routingBlocks({ model: 'x', ...chat([{ role: 'system', content: system(1) }]) }, 16384)[0],
    ).not.toBe(routingBlocks(chat([{ role: 'system', content: system(1) }]), 16384)[0]);
    // Bounded: at most maxChars of the prompt are hashed.
    expect(routingBlocks({ prompt: 'x'.repeat(100_000) }, 1024).length).toBe(8);
    expect(routingBlocks({ prompt: 'short' }, 16384).length).toBe(0);
    expect(routingBlocks({ model: 'm' }, 16384).length).toBe(0);
    // The whole prompt's hash (its partial last block too) tells a repeat from a next turn.
    expect(routingBlocks({ prompt: 'short' }, 16384).prompt).toBe(
      routingBlocks({ prompt: 'short' }, 16384).prompt,
    );
    expect(routingBlocks({ prompt: 'short.' }, 16384).prompt).not.toBe(
      routingBlocks({ prompt: 'short' }, 16384).prompt,
    );
  });

  it('lets an affinity key stand for the conversation: one block, marked', () => {
    const messages = [{ role: 'user', content: 'x'.repeat(1000) }];
    const byKey = routingBlocks({ messages, prompt_cache_key: 'conv-9', user: 'u' }, 16384);
    expect(byKey.length).toBe(1);
    expect(byKey.affinity).toBe(true);
    expect(
      routingBlocks({ messages: [{ role: 'user', content: 'other' }], prompt_cache_key: 'conv-9' }, 16384),
    ).toEqual(byKey);
    expect(routingBlocks({ messages, user: 'alice' }, 16384)).not.toEqual(byKey);
    expect(routingBlocks({ messages }, 16384, 'session-1').affinity).toBe(true);
    expect(routingBlocks({ messages }, 16384).affinity).toBeUndefined();
  });

  it('matches a prompt against what each replica holds, and forgets the oldest beyond a replica’s capacity', () => {
    const index = new PrefixIndex(3, 4);
    const matches = new Int32Array(3);
    expect(index.insert(0, [1, 2, 3])).toEqual([1, 2, 3]);
    expect(index.insert(1, [1, 2])).toEqual([1, 2]);
    expect(index.insert(0, [1, 2, 3, 4])).toEqual([4]);
    expect(index.insert(0, [1, 2])).toBeUndefined();
    index.match([1, 2, 3, 4, 5], matches);
    expect([...matches]).toEqual([4, 2, 0]);
    // Capacity 4: a fifth block evicts replica 0's least recently sent (3, as 1 and 2 were sent again since).
    index.insert(0, [9]);
    expect(index.held(0)).toBe(4);
    index.match([1, 2, 3, 4], matches);
    expect([...matches]).toEqual([2, 2, 0]);
    index.setCapacity(1, 1);
    index.match([1, 2], matches);
    expect([...matches]).toEqual([2, 0, 0]);
    index.clear(0);
    index.match([1, 2], matches);
    expect([...matches]).toEqual([0, 0, 0]);
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
    // Each conversation's first turn was placed; its two later turns followed it.
    expect(stats.reduce((sum, u) => sum + u.placed, 0)).toBe(30);
    expect(stats.reduce((sum, u) => sum + u.prefixRouted, 0)).toBe(60);
    expect(stats.reduce((sum, u) => sum + u.fallbacks, 0)).toBe(0);
    // Placed by what each replica holds, the 30 conversations split 10/10/10, each whole on its replica.
    expect(sims.map((sim) => generations(sim))).toEqual([30, 30, 30]);
  });

  it('places few conversations evenly (a hash would leave one replica half again its share)', async () => {
    const sims = await replicas(4);
    const client = use.client({ baseUrls: sims.map((s) => s.url) });
    for (let turn = 0; turn < 4; turn++) {
      for (let id = 0; id < 8; id++)
        await client.chatCompletion({ messages: conversation(id, turn), max_tokens: 1 });
    }
    expect(sims.map((sim) => generations(sim))).toEqual([8, 8, 8, 8]);
  });

  it('spreads conversations that share a system prompt, then keeps each on its replica', async () => {
    const sims = await replicas(4);
    const client = use.client({ baseUrls: sims.map((s) => s.url) });
    const shared = 'Shared retrieval instructions. '.repeat(70);
    const session = (id: number, turns: number) => [
      { role: 'system' as const, content: `${shared}Document ${id}: ${`fact ${id} `.repeat(200)}` },
      ...Array.from({ length: turns }, (_, t) => [
        { role: 'user' as const, content: `Question ${t}?` },
        { role: 'assistant' as const, content: `Answer ${t} of ${id}. `.repeat(20) },
      ]).flat(),
      { role: 'user' as const, content: 'Next?' },
    ];
    const homes: number[][] = Array.from({ length: 20 }, () => []);
    for (let turn = 0; turn < 3; turn++) {
      for (let id = 0; id < 20; id++) {
        const before = sims.map((s) => generations(s));
        await client.chatCompletion({ messages: session(id, turn), max_tokens: 1 });
        homes[id]!.push(sims.findIndex((s, k) => generations(s) > before[k]!));
      }
    }
    // 142 of 160 went to one replica when the key was the first 256 characters.
    expect(sims.map((sim) => generations(sim))).toEqual([15, 15, 15, 15]);
    for (const visited of homes) expect(new Set(visited).size).toBe(1);
  });

  it('spreads one hot prompt sent by everyone over the replicas', async () => {
    const sims = await replicas(4);
    const client = use.client({ baseUrls: sims.map((s) => s.url) });
    const hot = [{ role: 'user' as const, content: 'What are your opening hours? '.repeat(30) }];
    for (let i = 0; i < 40; i++) await client.chatCompletion({ messages: hot, max_tokens: 1 });
    const counts = sims.map((sim) => generations(sim));
    expect(Math.max(...counts) / (40 / 4)).toBeLessThanOrEqual(1.3);
  });

  it('shares placements between processes (routingSync): a conversation continued elsewhere finds its replica', async () => {
    const sims = await replicas(4);
    const handlers: ((update: RoutingUpdate) => void)[] = [];
    const published: RoutingUpdate[] = [];
    const sync = (me: number): RoutingSync => ({
      publish(update) {
        published.push(update);
        for (const [i, handler] of handlers.entries()) if (i !== me) handler(update);
      },
      subscribe(handler) {
        handlers[me] = handler;
        return () => {};
      },
    });
    const a = use.client({ baseUrls: sims.map((s) => s.url), routingSync: sync(0) });
    const b = use.client({ baseUrls: sims.map((s) => s.url), routingSync: sync(1) });
    const homeOf = async (client: VllmClient, id: number, turn: number) => {
      const before = sims.map((s) => generations(s));
      await client.chatCompletion({ messages: conversation(id, turn), max_tokens: 1 });
      return sims.findIndex((s, k) => generations(s) > before[k]!);
    };
    const first: number[] = [];
    for (let id = 0; id < 12; id++) first.push(await homeOf(a, id, 0));
    // Updates go out once per event-loop turn.
    await new Promise((r) => setImmediate(r));
    expect(published.length).toBeGreaterThan(0);
    for (let id = 0; id < 12; id++) expect(await homeOf(b, id, 1)).toBe(first[id]);
    // And b's placements reach a: it balances against them (b placed nothing new, so the spread stays 3 each).
    expect(new Set(first).size).toBe(4);
  });

  it('shares placements across hosts through Redis (redisRoutingSync)', async () => {
    const sims = await replicas(3);
    const redisA = new Redis(REDIS_URL, { lazyConnect: false });
    const redisB = new Redis(REDIS_URL, { lazyConnect: false });
    use.onCleanup(async () => {
      redisA.disconnect();
      redisB.disconnect();
    });
    const channel = uniqueName('routing');
    const a = use.client({
      baseUrls: sims.map((s) => s.url),
      routingSync: redisRoutingSync(redisA, { channel }),
    });
    const b = use.client({
      baseUrls: sims.map((s) => s.url),
      routingSync: redisRoutingSync(redisB, { channel }),
    });
    // Both subscriptions live before the first placement.
    await new Promise((r) => setTimeout(r, 300));
    const homeOf = async (client: VllmClient, id: number, turn: number) => {
      const before = sims.map((s) => generations(s));
      await client.chatCompletion({ messages: conversation(id, turn), max_tokens: 1 });
      return sims.findIndex((s, k) => generations(s) > before[k]!);
    };
    const first: number[] = [];
    for (let id = 0; id < 9; id++) first.push(await homeOf(a, id, 0));
    await new Promise((r) => setTimeout(r, 200));
    for (let id = 0; id < 9; id++) expect(await homeOf(b, id, 1)).toBe(first[id]);
  });

  it('sizes its index of each replica from vllm:cache_config_info when load signals are on', async () => {
    // Caches of 512 tokens, 16 of the index's 32-token blocks: conversations of 4 blocks each, 8 per replica, so the
    // oldest are evicted from the index as from the replica.
    const sims = await replicas(2, { prefixCacheTokens: 512 });
    const text = await (await fetch(`${sims[0]!.url}/metrics`)).text();
    expect(text).toContain(
      'vllm:cache_config_info{block_size="16",enable_prefix_caching="True",engine="0",num_gpu_blocks="32"} 1.0',
    );
    const client = use.client({ baseUrls: sims.map((s) => s.url), loadSignalsIntervalMs: 20 });
    await new Promise((r) => setTimeout(r, 100));
    for (let id = 0; id < 16; id++)
      await client.chatCompletion({ messages: conversation(id, 0), max_tokens: 1 });
    // Conversation 0 was evicted from its replica's cache and from the index: its next turn is placed anew.
    const before = client.stats().upstreams.reduce((sum, u) => sum + u.placed, 0);
    await client.chatCompletion({ messages: conversation(0, 1), max_tokens: 1 });
    expect(client.stats().upstreams.reduce((sum, u) => sum + u.placed, 0)).toBe(before + 1);
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
    const targets = new Set<number>();
    for (let i = 0; i < 4; i++) {
      // One conversation's turns, each a longer prompt.
      const body = { messages: conversation(3, i), max_tokens: 1 };
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

  it('moves only an ejected replica’s conversations', async () => {
    const sims = await replicas(3);
    const client = use.client({
      baseUrls: sims.map((s) => s.url),
      ejectAfterFailures: 1,
      probeIntervalMs: 60_000,
      retryBaseDelayMs: 1,
      retryMaxDelayMs: 2,
    });
    const homeOf = async (id: number, turn = 0) => {
      const before = sims.map((s) => generations(s));
      await client.chatCompletion({ messages: conversation(id, turn), max_tokens: 1 });
      return sims.findIndex((s, k) => generations(s) > before[k]!);
    };
    const homes: number[] = [];
    for (let id = 0; id < 30; id++) homes.push(await homeOf(id));
    const down = homes[0]!;
    // The replica goes away (its open connections too).
    await sims[down]!.close();
    // The first request for it fails over (and ejects it); from then on its conversations go elsewhere.
    const after: number[] = [];
    for (let id = 0; id < 30; id++) after.push(await homeOf(id, 1));
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
      [{ routingCacheTokens: 0 }, 'Expected `routingCacheTokens` to be an integer >= 1'],
      [
        { routingSync: { publish() {} } },
        'Expected `routingSync` to be an object with publish() and subscribe()',
      ],
    ];
    const urls = ['http://10.0.0.1:8000', 'http://10.0.0.2:8000'];
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
