// The simulator answers with vLLM's exact formats on every route.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';
import { call, chatBody, sseData } from '../helpers/http.js';

let sim: VllmSimulator;
beforeAll(async () => {
  sim = await startVllmSimulator({ model: 'test-model', seed: 7 });
});
afterAll(() => sim.close());

describe('chat completions', () => {
  it('returns a complete chat.completion with every field, nulls included', async () => {
    const reply = await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 5 }) });
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toBe('application/json');
    const body = reply.json() as Record<string, any>;
    expect(body).toMatchObject({
      object: 'chat.completion',
      model: 'test-model',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', tool_calls: [], reasoning_content: null },
          logprobs: null,
          finish_reason: 'length',
          stop_reason: null,
        },
      ],
      usage: { completion_tokens: 5 },
    });
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(typeof body.created).toBe('number');
    expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens + 5);
    expect(body.choices[0].message.content.split(' ').filter(Boolean)).toHaveLength(5);
  });

  it('honours max_completion_tokens and n', async () => {
    const body = (
      await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_completion_tokens: 3, n: 2 }) })
    ).json() as any;
    expect(body.choices.map((c: any) => c.index)).toEqual([0, 1]);
    expect(body.usage.completion_tokens).toBe(6);
  });

  it('draws the length from the distribution without max_tokens and finishes with stop', async () => {
    const local = await startVllmSimulator({ outputTokens: 12 });
    try {
      const body = (await call(local.url, '/v1/chat/completions', { body: chatBody() })).json() as any;
      expect(body.choices[0].finish_reason).toBe('stop');
      expect(body.usage.completion_tokens).toBe(12);
    } finally {
      await local.close();
    }
  });

  it('is deterministic under a seed: same prompt, same text; other prompt, other text', async () => {
    const text = async (content: string) =>
      (
        (
          await call(sim.url, '/v1/chat/completions', {
            body: { messages: [{ role: 'user', content }], max_tokens: 20 },
          })
        ).json() as any
      ).choices[0].message.content;
    expect(await text('alpha')).toBe(await text('alpha'));
    expect(await text('alpha')).not.toBe(await text('beta'));
    const other = await startVllmSimulator({ seed: 8 });
    try {
      const otherText = (
        (
          await call(other.url, '/v1/chat/completions', {
            body: { messages: [{ role: 'user', content: 'alpha' }], max_tokens: 20 },
          })
        ).json() as any
      ).choices[0].message.content;
      expect(otherText).not.toBe(await text('alpha'));
    } finally {
      await other.close();
    }
  });

  it('streams role chunk, one chunk per token, finish chunk, usage chunk and [DONE]', async () => {
    const reply = await call(sim.url, '/v1/chat/completions', {
      body: chatBody({ max_tokens: 3, stream: true, stream_options: { include_usage: true } }),
    });
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(reply.headers['transfer-encoding']).toBe('chunked');
    const events = sseData(reply.text);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    expect(chunks).toHaveLength(5);
    expect(chunks[0].choices[0]).toEqual({
      index: 0,
      delta: { role: 'assistant', content: '' },
      logprobs: null,
      finish_reason: null,
    });
    expect(chunks.slice(1, 4).every((c: any) => typeof c.choices[0].delta.content === 'string')).toBe(true);
    expect(chunks[1].choices[0].finish_reason).toBeNull();
    expect(chunks[3].choices[0].finish_reason).toBe('length');
    expect(chunks[4].choices).toEqual([]);
    expect(chunks[4].usage.completion_tokens).toBe(3);
    expect(new Set(chunks.map((c: any) => c.id)).size).toBe(1);
    expect(chunks.every((c: any) => c.object === 'chat.completion.chunk')).toBe(true);
  });

  it('sends no usage chunk without include_usage', async () => {
    const reply = await call(sim.url, '/v1/chat/completions', {
      body: chatBody({ max_tokens: 2, stream: true }),
    });
    const chunks = sseData(reply.text)
      .slice(0, -1)
      .map((e) => JSON.parse(e));
    expect(chunks).toHaveLength(3);
    expect(chunks.some((c: any) => 'usage' in c)).toBe(false);
  });

  it('streams the same text it returns without streaming', async () => {
    const body = { messages: [{ role: 'user', content: 'same' }], max_tokens: 8 };
    const whole = ((await call(sim.url, '/v1/chat/completions', { body })).json() as any).choices[0].message
      .content;
    const streamed = sseData(
      (await call(sim.url, '/v1/chat/completions', { body: { ...body, stream: true } })).text,
    )
      .slice(0, -1)
      .map((e) => JSON.parse(e).choices[0].delta.content)
      .join('');
    expect(streamed).toBe(whole);
  });
});

describe('completions and embeddings', () => {
  it('returns text_completion, defaulting to 16 tokens', async () => {
    const body = (await call(sim.url, '/v1/completions', { body: { prompt: 'Once upon' } })).json() as any;
    expect(body.object).toBe('text_completion');
    expect(body.id).toMatch(/^cmpl-/);
    expect(typeof body.choices[0].text).toBe('string');
    expect(body.usage.completion_tokens).toBe(16);
    expect(body.choices[0].finish_reason).toBe('length');
  });

  it('streams completions with text chunks', async () => {
    const reply = await call(sim.url, '/v1/completions', {
      body: { prompt: 'x', max_tokens: 2, stream: true, stream_options: { include_usage: true } },
    });
    const events = sseData(reply.text);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    expect(chunks).toHaveLength(3);
    expect(chunks[0].object).toBe('text_completion');
    expect(typeof chunks[0].choices[0].text).toBe('string');
    expect(chunks[1].choices[0].finish_reason).toBe('length');
    expect(chunks[2].usage).toMatchObject({ completion_tokens: 2 });
  });

  it('returns unit-length embeddings, equal for equal inputs', async () => {
    const body = (await call(sim.url, '/v1/embeddings', { body: { input: ['a', 'b', 'a'] } })).json() as any;
    expect(body.object).toBe('list');
    expect(body.data).toHaveLength(3);
    expect(body.data[0]).toMatchObject({ index: 0, object: 'embedding' });
    expect(body.data[0].embedding).toHaveLength(64);
    const norm = Math.hypot(...body.data[0].embedding);
    expect(norm).toBeCloseTo(1, 4);
    expect(body.data[2].embedding).toEqual(body.data[0].embedding);
    expect(body.data[1].embedding).not.toEqual(body.data[0].embedding);
    expect(body.usage.completion_tokens).toBe(0);
    const encoded = (
      await call(sim.url, '/v1/embeddings', { body: { input: 'a', encoding_format: 'base64' } })
    ).json() as any;
    const bytes = Buffer.from(encoded.data[0].embedding, 'base64');
    const floats = Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4));
    expect(floats).toHaveLength(64);
    expect(floats[0]).toBeCloseTo(body.data[0].embedding[0], 5);
  });
});

describe('service routes', () => {
  it('lists the model', async () => {
    const body = (await call(sim.url, '/v1/models')).json() as any;
    expect(body.object).toBe('list');
    expect(body.data[0]).toMatchObject({
      id: 'test-model',
      object: 'model',
      owned_by: 'vllm',
      max_model_len: 8192,
    });
  });

  it('answers /health and /ping with 200 and an empty body, /version and /load with JSON', async () => {
    for (const path of ['/health', '/ping']) {
      const reply = await call(sim.url, path);
      expect(reply.status).toBe(200);
      expect(reply.text).toBe('');
    }
    expect((await call(sim.url, '/ping', { method: 'POST' })).status).toBe(200);
    expect((await call(sim.url, '/version')).json()).toEqual({ version: '0.11.0' });
    expect((await call(sim.url, '/load')).json()).toEqual({ server_load: 0 });
  });

  it('exposes Prometheus metrics under vLLM names', async () => {
    const reply = await call(sim.url, '/metrics');
    expect(reply.headers['content-type']).toMatch(/^text\/plain/);
    for (const name of [
      'vllm:num_requests_running',
      'vllm:num_requests_waiting',
      'vllm:kv_cache_usage_perc',
      'vllm:prompt_tokens_total',
      'vllm:generation_tokens_total',
      'vllm:request_success_total',
      'vllm:time_to_first_token_seconds_bucket',
      'vllm:inter_token_latency_seconds_count',
      'vllm:e2e_request_latency_seconds_sum',
      'vllm:request_queue_time_seconds_bucket',
    ]) {
      expect(reply.text).toContain(`${name}{`);
    }
    expect(reply.text).toContain('model_name="test-model"');
  });

  it('echoes X-Request-Id', async () => {
    const reply = await call(sim.url, '/v1/models', { headers: { 'x-request-id': 'req-42' } });
    expect(reply.headers['x-request-id']).toBe('req-42');
  });
});

describe('errors', () => {
  const nested = (status: number, type: string) => ({
    error: expect.objectContaining({ type, code: status }),
  });

  it('400 on malformed JSON', async () => {
    const reply = await call(sim.url, '/v1/chat/completions', { raw: '{"messages": [' });
    expect(reply.status).toBe(400);
    expect(reply.json()).toEqual(nested(400, 'BadRequestError'));
  });

  it('400 on a wrong content type', async () => {
    const reply = await call(sim.url, '/v1/chat/completions', {
      raw: JSON.stringify(chatBody()),
      headers: { 'content-type': 'text/plain' },
    });
    expect(reply.status).toBe(400);
    expect((reply.json() as any).error.message).toContain("Only 'application/json' is allowed");
  });

  it('400 on stream_options without stream', async () => {
    const reply = await call(sim.url, '/v1/chat/completions', {
      body: chatBody({ stream_options: { include_usage: true } }),
    });
    expect(reply.status).toBe(400);
    expect((reply.json() as any).error).toMatchObject({ param: 'stream_options', code: 400 });
  });

  it('400 on missing messages, bad max_tokens and a context overflow', async () => {
    expect((await call(sim.url, '/v1/chat/completions', { body: {} })).status).toBe(400);
    expect((await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 0 }) })).status).toBe(
      400,
    );
    const overflow = await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 9000 }) });
    expect(overflow.status).toBe(400);
    expect((overflow.json() as any).error.message).toContain('maximum context length is 8192');
  });

  it('404 on an unknown model, with param "model"', async () => {
    const reply = await call(sim.url, '/v1/chat/completions', { body: chatBody({ model: 'other' }) });
    expect(reply.status).toBe(404);
    expect(reply.json()).toEqual({
      error: {
        message: 'The model `other` does not exist.',
        type: 'NotFoundError',
        param: 'model',
        code: 404,
      },
    });
  });

  it('FastAPI-style 404 and 405 for unknown routes and methods', async () => {
    const missing = await call(sim.url, '/v2/nothing');
    expect(missing.status).toBe(404);
    expect(missing.json()).toEqual({ detail: 'Not Found' });
    const wrong = await call(sim.url, '/v1/chat/completions');
    expect(wrong.status).toBe(405);
    expect(wrong.json()).toEqual({ detail: 'Method Not Allowed' });
  });

  it('uses the legacy flat error shape when asked', async () => {
    const legacy = await startVllmSimulator({ errorShape: 'legacy' });
    try {
      const reply = await call(legacy.url, '/v1/chat/completions', { body: chatBody({ model: 'x' }) });
      expect(reply.status).toBe(404);
      expect(reply.json()).toEqual({
        object: 'error',
        message: 'The model `x` does not exist.',
        type: 'NotFoundError',
        param: 'model',
        code: 404,
      });
    } finally {
      await legacy.close();
    }
  });
});

describe('apiKey', () => {
  it('guards only /v1* with a plain-string 401', async () => {
    const guarded = await startVllmSimulator({ apiKey: 'sk-secret' });
    try {
      const denied = await call(guarded.url, '/v1/models');
      expect(denied.status).toBe(401);
      expect(denied.json()).toEqual({ error: 'Unauthorized' });
      const wrong = await call(guarded.url, '/v1/models', { headers: { authorization: 'Bearer nope' } });
      expect(wrong.status).toBe(401);
      const ok = await call(guarded.url, '/v1/models', { headers: { authorization: 'Bearer sk-secret' } });
      expect(ok.status).toBe(200);
      expect((await call(guarded.url, '/health')).status).toBe(200);
      expect((await call(guarded.url, '/metrics')).status).toBe(200);
    } finally {
      await guarded.close();
    }
  });
});
