// The reference gateway end to end in one process: the official openai client, every error row, client aborts, and
// revocation — against the simulator and a SQLite key store (PostgreSQL in key-store.test.ts).
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { ADMIN_KEY, admin, errorOf, post, trackGateways } from '../helpers/gateway.js';

const { setup, simulator } = trackGateways();

describe('gateway with the openai client', () => {
  it('serves chat (streaming and not), completions, embeddings and models', async () => {
    const { url, key } = await setup();
    const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
    const reply = await openai.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
    });
    expect(reply.choices[0]?.message.content?.trim().split(' ')).toHaveLength(3);
    let streamed = '';
    for await (const chunk of await openai.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 4,
      stream: true,
    })) {
      streamed += chunk.choices[0]?.delta.content ?? '';
    }
    expect(streamed.trim().split(' ')).toHaveLength(4);
    const completion = await openai.completions.create({ model: 'm', prompt: 'Once', max_tokens: 2 });
    expect(completion.choices[0]?.text).toBeTypeOf('string');
    const embedding = await openai.embeddings.create({ model: 'm', input: 'x' });
    expect(embedding.data[0]?.embedding).toHaveLength(64);
    const models = await openai.models.list();
    expect(models.data[0]?.id).toBe('m');
  });

  it('raises the openai client’s AuthenticationError for 401 and RateLimitError for 429', async () => {
    const { url, key } = await setup({ RATE_LIMIT_POINTS: '2' });
    const wrong = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'vk-wrong', maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const right = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
    await right.models.list();
    const limited = await right.models.list().catch((e: unknown) => e);
    expect(limited).toBeInstanceOf(OpenAI.RateLimitError);
  });
});

describe('gateway errors', () => {
  it('answers every error row with an OpenAI-style body and the right status', async () => {
    const { url, key, gateway } = await setup({ MAX_BODY_BYTES: '1000' });
    expect(
      await errorOf(await post(url, '/v1/chat/completions', { key, body: '{"messages": [' })),
    ).toMatchObject({
      status: 400,
      body: { error: { code: 'invalid_json' } },
    });
    expect(await errorOf(await post(url, '/v1/chat/completions', { key, type: 'text/plain' }))).toMatchObject(
      {
        status: 400,
        body: { error: { code: 'unsupported_media_type' } },
      },
    );
    expect(await errorOf(await post(url, '/v1/chat/completions'))).toMatchObject({
      status: 401,
      body: { error: { code: 'missing_api_key' } },
    });
    expect(await errorOf(await post(url, '/v1/chat/completions', { key: 'vk-nope' }))).toMatchObject({
      status: 401,
      body: { error: { code: 'invalid_api_key' } },
    });
    expect((await errorOf(await fetch(`${url}/v2/nothing`))).status).toBe(404);
    const wrongMethod = await fetch(`${url}/v1/chat/completions`, {
      headers: { authorization: `Bearer ${key}` },
    });
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.get('allow')).toBe('POST, OPTIONS');
    expect(
      await errorOf(
        await post(url, '/v1/chat/completions', { key, body: JSON.stringify({ pad: 'x'.repeat(2000) }) }),
      ),
    ).toMatchObject({
      status: 413,
      body: { error: { code: 'body_too_large' } },
    });
    // A model no replica serves: OpenAI's 404, before any replica is asked (upstream 4xx bodies pass through).
    const unknownModel = await post(url, '/v1/chat/completions', {
      key,
      body: JSON.stringify({ model: 'other', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(unknownModel.status).toBe(404);
    expect(await unknownModel.json()).toMatchObject({
      error: { type: 'invalid_request_error', param: 'model', code: 'model_not_found' },
    });
    // The key store goes down: 503 with Retry-After (a fresh key, so the cache cannot answer).
    const { key: other } = await gateway.keyStore.create('bob');
    await gateway.keyStore.close();
    const down = await post(url, '/v1/chat/completions', { key: other });
    expect(down.status).toBe(503);
    expect(down.headers.get('retry-after')).toBe('5');
    expect(await down.json()).toMatchObject({ error: { code: 'key_store_unavailable' } });
    // No stack traces or secrets anywhere in error bodies.
    expect(
      JSON.stringify(await (await post(url, '/v1/chat/completions', { key: 'vk-secret-123' })).json()),
    ).not.toContain('vk-secret-123');
  });

  it('429 with Retry-After once the rate limit is spent', async () => {
    const { url, key } = await setup({ RATE_LIMIT_POINTS: '20' });
    const statuses: number[] = [];
    let last: Response | undefined;
    for (let i = 0; i < 25; i++) {
      last = await post(url, '/v1/chat/completions', { key });
      statuses.push(last.status);
      await last.arrayBuffer();
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(20);
    expect(statuses.slice(20)).toEqual([429, 429, 429, 429, 429]);
    expect(Number(last!.headers.get('retry-after'))).toBeGreaterThan(0);
  });

  it('503 queue full and queue timeout, with Retry-After', async () => {
    const sim = await simulator({ ttftMs: 60_000 });
    const { url, key } = await setup(
      { LIMIT_CONCURRENCY: '1', MAX_QUEUE: '1', QUEUE_TIMEOUT_MS: '200' },
      sim,
    );
    // One request holds the only slot (the simulator never answers it within the test).
    void post(url, '/v1/chat/completions', { key }).catch(() => undefined);
    await expect.poll(() => sim.stats().running).toBe(1);
    const queued = post(url, '/v1/chat/completions', { key });
    // The second waits in the queue (its only place) before the third is sent.
    await expect
      .poll(async () => /^gateway_queue_depth 1$/m.test(await (await fetch(`${url}/metrics`)).text()))
      .toBe(true);
    const full = await post(url, '/v1/chat/completions', { key });
    expect(full.status).toBe(503);
    expect(await full.json()).toMatchObject({ error: { code: 'queue_full' } });
    const timedOut = await queued;
    expect(timedOut.status).toBe(503);
    expect(timedOut.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(await timedOut.json()).toMatchObject({ error: { code: 'queue_timeout' } });
  });

  it('502 when the upstream is unreachable, 504 when it does not answer in time', async () => {
    const sim = await simulator({ faults: { refuseConnections: true } });
    const { url, key } = await setup({ UPSTREAM_TIMEOUT_MS: '300' }, sim);
    expect(await errorOf(await post(url, '/v1/chat/completions', { key }))).toMatchObject({
      status: 502,
      body: { error: { type: 'upstream_unreachable' } },
    });
    await sim.setFaults({ stall: {} });
    expect(await errorOf(await post(url, '/v1/chat/completions', { key }))).toMatchObject({
      status: 504,
      body: { error: { type: 'upstream_timeout' } },
    });
  }, 20_000);
});

describe('gateway behaviour', () => {
  it('aborts the upstream request when the client disconnects mid-stream', async () => {
    const sim = await simulator({ itlMs: 20 });
    const { url, key } = await setup({}, sim);
    const response = await post(url, '/v1/chat/completions', {
      key,
      body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 1000, stream: true }),
    });
    expect(response.headers.get('x-accel-buffering')).toBe('no');
    const reader = response.body!.getReader();
    await reader.read();
    // The client goes away mid-stream.
    await reader.cancel();
    await expect.poll(() => sim.stats()).toMatchObject({ aborted: 1, running: 0 });
  });

  it('GET /auth/verify answers the key’s id and name; /health reports the upstream (details for the admin)', async () => {
    const { url, key, sim } = await setup({ HEALTH_INTERVAL_MS: '100', ADMIN_KEY });
    const verify = await fetch(`${url}/auth/verify`, { headers: { authorization: `Bearer ${key}` } });
    expect(await verify.json()).toMatchObject({ name: 'alice', id: expect.stringMatching(/^key_/) });
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    await sim.setFaults({ unhealthy: true });
    // Answered from the background probe: it shows at the next one.
    await expect.poll(async () => (await fetch(`${url}/health`)).status).toBe(503);
    const unhealthy = await fetch(`${url}/health`, admin);
    expect(await unhealthy.json()).toMatchObject({
      status: 'degraded',
      upstreams: [{ url: sim.url, healthy: false }],
    });
    // Without the admin key: status and counts, never the replicas' URLs.
    const summary = await (await fetch(`${url}/health`)).text();
    expect(JSON.parse(summary)).toEqual({
      status: 'degraded',
      upstreams: { total: 1, usable: 0, ejected: 0 },
    });
    expect(summary).not.toContain(sim.url);
    expect(await (await fetch(`${url}/readyz`)).json()).toEqual({ status: 'not_ready' });
    expect(await (await fetch(`${url}/livez`)).json()).toEqual({ status: 'ok' });
  });

  it('is healthy while at least one replica is', async () => {
    const a = await simulator();
    const b = await simulator();
    const { url } = await setup({ HEALTH_INTERVAL_MS: '100' }, a, [b.url]);
    await a.setFaults({ unhealthy: true });
    await new Promise((r) => setTimeout(r, 300));
    expect((await fetch(`${url}/health`)).status).toBe(200);
    await b.setFaults({ unhealthy: true });
    await expect.poll(async () => (await fetch(`${url}/health`)).status).toBe(503);
  });

  it('serves Prometheus metrics', async () => {
    const { url, key } = await setup();
    await (await post(url, '/v1/chat/completions', { key })).arrayBuffer();
    const text = await (await fetch(`${url}/metrics`)).text();
    expect(text).toContain('gateway_requests_total{route="/v1/chat/completions",status="200"} 1');
    expect(text).toContain('gateway_time_to_first_byte_seconds_bucket');
    expect(text).toContain('gateway_token_cache_total{outcome="miss"} 1');
    expect(text).toContain('gateway_queue_depth 0');
    expect(text).not.toContain('vk-');
  });

  it('revocation without Redis takes effect within the cache TTL', async () => {
    const { url, key, gateway } = await setup({ TOKEN_CACHE_TTL_SEC: '1' });
    expect((await fetch(`${url}/auth/verify`, { headers: { authorization: `Bearer ${key}` } })).status).toBe(
      200,
    );
    await gateway.keyStore.revoke('alice');
    // Cached for up to the TTL, then refused.
    await expect
      .poll(
        async () =>
          (await fetch(`${url}/auth/verify`, { headers: { authorization: `Bearer ${key}` } })).status,
        {
          timeout: 3000,
          interval: 100,
        },
      )
      .toBe(401);
  });
});
