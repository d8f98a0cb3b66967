// Several models behind one client: each replica's /v1/models is discovered, requests go only to replicas serving
// their `model`, an unknown model is refused before anything is sent, and models() is the union.
import { describe, expect, it } from 'vitest';
import { isModelNotFoundError } from '../../src/index.js';
import { parseSimulatorArgs } from '../../src/testing/cli-args.js';
import { generations, trackResources } from '../helpers/fixtures.js';

const use = trackResources();
const ask = (model: string | undefined, text: string) => ({
  ...(model === undefined ? {} : { model }),
  messages: [{ role: 'user' as const, content: text }],
  max_tokens: 1,
});

describe('routing by model', () => {
  it('sends each model only to the replicas serving it (prefix routing within them), and refuses unknown ones', async () => {
    const a1 = await use.simulator({ model: 'model-a' });
    const a2 = await use.simulator({ model: 'model-a' });
    const b = await use.simulator({ model: 'model-b', loraAdapters: ['b-sql'] });
    const client = use.client({ baseUrls: [a1.url, b.url, a2.url] });
    for (let i = 0; i < 12; i++) {
      await client.chatCompletion(ask('model-a', `conversation ${i}`));
      await client.chatCompletion(ask(i % 2 ? 'model-b' : 'b-sql', `conversation ${i}`));
    }
    // Every request reached a replica serving its model: none got vLLM's 404 (it was half of them).
    expect(generations(b)).toBe(12);
    expect(generations(a1) + generations(a2)).toBe(12);
    expect(generations(a1)).toBeGreaterThan(0);
    expect(generations(a2)).toBeGreaterThan(0);
    // request() routes by the parsed body, as the gateway calls it.
    const raw = await client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: Buffer.from(JSON.stringify(ask('model-b', 'raw'))),
      routingBody: ask('model-b', 'raw'),
    });
    expect(raw.status).toBe(200);
    for await (const _ of raw.body) {
      // drained
    }
    expect(generations(b)).toBe(13);
    const before = [a1, a2, b].map((s) => s.stats().requestsReceived);
    const unknown = await client.chatCompletion(ask('model-c', 'x')).catch((e: unknown) => e);
    expect(isModelNotFoundError(unknown)).toBe(true);
    expect((unknown as Error).message).toContain('The model `model-c` does not exist');
    // The replicas serve different models: a request without one is refused too.
    expect(
      isModelNotFoundError(await client.chatCompletion(ask(undefined, 'x')).catch((e: unknown) => e)),
    ).toBe(true);
    expect([a1, a2, b].map((s) => s.stats().requestsReceived)).toEqual(before);
    // models(): the union, each id once, with the replicas serving it and an adapter's parent.
    const list = await client.models();
    expect(list.data.map((m) => [m.id, m.parent, [...(m.replicas as string[])].sort()])).toEqual([
      ['model-a', null, [a1.url, a2.url].sort()],
      ['model-b', null, [b.url]],
      ['b-sql', 'model-b', [b.url]],
    ]);
  });

  it('keeps today’s behaviour without a model when every replica serves the same one', async () => {
    const a = await use.simulator({ model: 'same' });
    const b = await use.simulator({ model: 'same' });
    const client = use.client({ baseUrls: [a.url, b.url] });
    await client.chatCompletion(ask(undefined, 'no model named'));
    expect(generations(a) + generations(b)).toBe(1);
  });

  it('takes an explicit model map for servers without /v1/models, and validates it', async () => {
    const paths: string[] = [];
    const a = await use.simulator({ model: 'x', onRequest: (r) => paths.push(r.path) });
    const b = await use.simulator({ model: 'y', onRequest: (r) => paths.push(r.path) });
    const client = use.client({ baseUrls: [a.url, b.url], models: { x: [a.url], y: [`${b.url}/`] } });
    await client.chatCompletion(ask('y', 'hello'));
    expect(generations(b)).toBe(1);
    expect(paths).not.toContain('/v1/models'); // no discovery
    expect(() => use.client({ baseUrls: [a.url], models: { x: ['http://elsewhere:1'] } })).toThrow(
      /models\.x.*URLs among baseUrls/,
    );
  });

  it('reads a replica’s models again when it answers 404 for one it was thought to serve', async () => {
    const a = await use.simulator({ model: 'm', loraAdapters: ['tmp'] });
    const b = await use.simulator({ model: 'm' });
    const client = use.client({ baseUrls: [a.url, b.url], modelRefreshMs: 0 });
    await client.chatCompletion(ask('tmp', 'x'));
    await a.close();
    const again = await use.simulator({ model: 'm', port: Number(new URL(a.url).port) });
    const error = await client.chatCompletion(ask('tmp', 'x')).catch((e: unknown) => e);
    expect((error as { status?: number }).status).toBe(404);
    // Now known to be gone: refused before sending.
    await expect
      .poll(async () => isModelNotFoundError(await client.chatCompletion(ask('tmp', 'y')).catch((e) => e)))
      .toBe(true);
    expect(again.stats().completed).toBe(0);
  });
});

describe('simulator: adapters and flags', () => {
  it('takes the prefix-cache and LoRA flags on the command line', () => {
    expect(
      parseSimulatorArgs([
        '--prefill-ms-per-token',
        '0.5',
        '--prefix-cache-tokens',
        '4096',
        '--prompt-tokens-details',
        '--lora-adapters',
        'a, b',
      ]),
    ).toEqual({
      port: 8000,
      prefillMsPerToken: 0.5,
      prefixCacheTokens: 4096,
      promptTokensDetails: true,
      loraAdapters: ['a', 'b'],
    });
  });
});
