// Two models behind one gateway (VLLM_BASE_URL lists replicas of each): every request reaches a replica serving its
// model, /v1/models is the union, and an unknown model is refused as OpenAI does, before any replica is asked.
import { describe, expect, it } from 'vitest';
import { generations, post, trackGateways } from '../helpers/gateway.js';

const { setup, simulator } = trackGateways();
const chat = (model: string | undefined, text: string) =>
  JSON.stringify({ ...(model ? { model } : {}), messages: [{ role: 'user', content: text }], max_tokens: 2 });

describe('several models behind the gateway', () => {
  it('routes each model to its replicas, lists the union, and refuses unknown models with OpenAI’s 404', async () => {
    const a = await simulator({ model: 'model-a' });
    const b = await simulator({ model: 'model-b', loraAdapters: ['b-sql'] });
    const { url, key, gateway } = await setup({ RATE_LIMIT_POINTS: '1000' }, a, [b.url]);
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      for (const model of ['model-a', 'model-b', 'b-sql']) {
        const reply = await post(url, '/v1/chat/completions', {
          key,
          body: chat(model, `conversation ${i}`),
        });
        await reply.arrayBuffer();
        statuses.push(reply.status);
      }
    }
    // About half got vLLM's 404 before: a conversation hashed to the replica without its model.
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect([generations(a), generations(b)]).toEqual([10, 20]);
    const list = (await (
      await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })
    ).json()) as { object: string; data: { id: string; parent: string | null }[] };
    expect(list.object).toBe('list');
    expect(list.data.map((m) => [m.id, m.parent])).toEqual([
      ['model-a', null],
      ['model-b', null],
      ['b-sql', 'model-b'],
    ]);
    const unknown = await post(url, '/v1/chat/completions', { key, body: chat('gpt-4o', 'x') });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toEqual({
      error: {
        message: 'The model `gpt-4o` does not exist or you do not have access to it.',
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
      },
    });
    const unnamed = await post(url, '/v1/chat/completions', { key, body: chat(undefined, 'x') });
    expect(unnamed.status).toBe(400);
    expect(((await unnamed.json()) as { error: { code: string } }).error.code).toBe('model_required');
    // Neither reached a replica.
    expect([generations(a), generations(b)]).toEqual([10, 20]);

    // A key limited to some models: any other is answered as if it did not exist (no enumeration).
    const { key: limited } = await gateway.keyStore.create('limited', { models: ['model-a', 'b-sql'] });
    const allowed = await post(url, '/v1/chat/completions', { key: limited, body: chat('b-sql', 'y') });
    expect(allowed.status).toBe(200);
    await allowed.arrayBuffer();
    const forbidden = await post(url, '/v1/chat/completions', { key: limited, body: chat('model-b', 'y') });
    expect(forbidden.status).toBe(404);
    expect(await forbidden.json()).toEqual({
      error: {
        message: 'The model `model-b` does not exist or you do not have access to it.',
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
      },
    });
    const nameless = await post(url, '/v1/chat/completions', { key: limited, body: chat(undefined, 'y') });
    expect(nameless.status).toBe(400);
    await nameless.arrayBuffer();
    const visible = (await (
      await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${limited}` } })
    ).json()) as { data: { id: string }[] };
    expect(visible.data.map((m) => m.id)).toEqual(['model-a', 'b-sql']);
    expect([generations(a), generations(b)]).toEqual([10, 21]);
  });
});
