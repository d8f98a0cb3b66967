// The simulator's automatic prefix caching: cached tokens from the longest leading run of cached blocks, an LRU
// bounded in tokens, vLLM's metrics and usage fields, and prefill time only for what is not cached.
import { describe, expect, it } from 'vitest';
import { BLOCK_TOKENS, PrefixCache } from '../../src/testing/prefix-cache.js';
import { trackResources } from '../helpers/fixtures.js';
import { call } from '../helpers/http.js';

const use = trackResources();
const system = `You are a careful assistant. ${'Follow the house style. '.repeat(40)}`; // ~1,000 characters

describe('PrefixCache', () => {
  it('hits only a shared leading run of blocks, never the last token, and counts queries and hits', () => {
    const cache = new PrefixCache(100_000);
    const a = `${system}First question?`;
    const tokensA = Math.ceil(a.length / 4);
    expect(cache.admit(a, tokensA)).toBe(0);
    // The same prompt again: all its full blocks are cached.
    const again = cache.admit(a, tokensA);
    expect(again).toBe(Math.floor(a.length / (BLOCK_TOKENS * 4)) * BLOCK_TOKENS);
    // Another question after the same system prompt: the system prompt's blocks hit, the rest does not.
    const b = `${system}A different question, longer than the first one by a good margin.`;
    const hit = cache.admit(b, Math.ceil(b.length / 4));
    expect(hit).toBeGreaterThanOrEqual(Math.floor(system.length / 64) * BLOCK_TOKENS - BLOCK_TOKENS);
    expect(hit).toBeLessThanOrEqual(system.length / 4);
    // The same text after a different first character shares no leading block: nothing hits.
    expect(cache.admit(`X${a}`, tokensA + 1)).toBe(0);
    expect(cache.queries).toBe(tokensA * 3 + Math.ceil(b.length / 4) + 1);
    expect(cache.hits).toBe(again + hit);
  });

  it('evicts the least recently used blocks beyond its capacity', () => {
    const cache = new PrefixCache(BLOCK_TOKENS * 20);
    const one = 'a'.repeat(64 * 10);
    const two = 'b'.repeat(64 * 10);
    const three = 'c'.repeat(64 * 10);
    cache.admit(one, 160);
    cache.admit(two, 160);
    expect(cache.usedTokens).toBe(320);
    cache.admit(three, 160); // pushes `one` out
    expect(cache.usedTokens).toBe(320);
    expect(cache.admit(one, 160)).toBe(0);
    expect(cache.admit(three, 160)).toBe(159);
  });
});

describe('the simulator with prefix caching', () => {
  const chat = (content: string) => ({
    messages: [
      { role: 'system', content: system },
      { role: 'user', content },
    ],
    max_tokens: 1,
  });

  it('reports cached_tokens when asked, and vLLM’s prefix-cache counters on /metrics', async () => {
    const sim = await use.simulator({ promptTokensDetails: true });
    const first = (await call(sim.url, '/v1/chat/completions', { body: chat('one?') })).json() as {
      usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
    };
    expect(first.usage.prompt_tokens_details).toEqual({ cached_tokens: 0 });
    const second = (
      await call(sim.url, '/v1/chat/completions', { body: chat('two?') })
    ).json() as typeof first;
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(200);
    const metrics = (await call(sim.url, '/metrics')).text;
    expect(metrics).toContain('# TYPE vllm:prefix_cache_queries counter');
    expect(metrics).toMatch(
      new RegExp(
        `vllm:prefix_cache_queries_total\\{[^}]*\\} ${first.usage.prompt_tokens + second.usage.prompt_tokens}\\n`,
      ),
    );
    expect(metrics).toMatch(
      new RegExp(
        `vllm:prefix_cache_hits_total\\{[^}]*\\} ${second.usage.prompt_tokens_details.cached_tokens}\\n`,
      ),
    );
    expect(sim.stats()).toMatchObject({
      prefixCacheHits: second.usage.prompt_tokens_details.cached_tokens,
    });
    // Without the flag, as vLLM without --enable-prompt-tokens-details: no details.
    const plain = await use.simulator();
    const reply = (await call(plain.url, '/v1/chat/completions', { body: chat('x') })).json() as {
      usage: { prompt_tokens_details: unknown };
    };
    expect(reply.usage.prompt_tokens_details).toBeNull();
  });

  it('prefills only what is not cached (prefillMsPerToken), so a cached prompt answers sooner', async () => {
    const sim = await use.simulator({ prefillMsPerToken: 2, promptTokensDetails: true });
    const timed = async (content: string) => {
      const started = performance.now();
      const reply = (await call(sim.url, '/v1/chat/completions', { body: chat(content) })).json() as {
        usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
      };
      return { ms: performance.now() - started, ...reply.usage };
    };
    const cold = await timed('first');
    const warm = await timed('second');
    // ~270 prompt tokens × 2 ms cold; a few uncached tokens warm. Bounds, not speed targets: they cannot flake.
    expect(cold.ms).toBeGreaterThanOrEqual((cold.prompt_tokens - 1) * 2 * 0.9);
    const uncached = warm.prompt_tokens - warm.prompt_tokens_details.cached_tokens;
    expect(uncached).toBeLessThan(40);
    expect(warm.ms).toBeLessThan(cold.ms);
  });

  it('refuses bad prefix-cache options', async () => {
    await expect(use.simulator({ prefixCacheTokens: -1 })).rejects.toThrow('Expected `prefixCacheTokens`');
    await expect(use.simulator({ prefillMsPerToken: 'fast' as never })).rejects.toThrow(
      'Expected `prefillMsPerToken`',
    );
  });
});
