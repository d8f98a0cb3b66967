// request(): the unparsed passthrough gateways use; plus the injected dispatcher and the client's lifecycle.
import { Agent } from 'undici';
import { describe, expect, it } from 'vitest';
import { isClosedError } from '../../src/index.js';
import { messages, trackResources } from '../helpers/fixtures.js';
import { sseData } from '../helpers/http.js';

const use = trackResources();
/** A small chat completion through request(), its body read to the end. */
async function chatThrough(client: ReturnType<typeof use.client>) {
  const response = await client.request({
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages, max_tokens: 1 }),
  });
  await response.body.toArray();
  return response;
}

describe('request()', () => {
  it('returns status, headers and the raw body stream, with X-Request-Id sent', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    const response = await client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages, max_tokens: 3, stream: true }),
      requestId: 'gw-1',
    });
    expect(response.status).toBe(200);
    expect(response.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(response.headers['x-request-id']).toBe('gw-1');
    let text = '';
    for await (const chunk of response.body) text += chunk;
    expect(sseData(text).at(-1)).toBe('[DONE]');
  });

  it('hands error statuses back instead of throwing, body intact', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    const response = await client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages, model: 'other' }),
    });
    expect(response.status).toBe(404);
    let text = '';
    for await (const chunk of response.body) text += chunk;
    expect(JSON.parse(text)).toMatchObject({ error: { param: 'model' } });
  });

  it('answers an upstream 429 or 503 at once, Retry-After intact (no retry, no sleep)', async () => {
    const sim = await use.simulator({ faults: { status: { status: 429, retryAfterSec: 7, times: 5 } } });
    const client = use.client({ baseUrl: sim.url });
    const started = performance.now();
    const response = await chatThrough(client);
    expect(response.status).toBe(429);
    expect(response.headers['retry-after']).toBe('7');
    expect(sim.stats().requestsReceived).toBe(1);
    expect(client.stats().retries).toBe(0);
    // Far below the 7 s the old retry slept (a bound, not a timing assertion: it cannot flake on a slow machine).
    expect(performance.now() - started).toBeLessThan(7000);
    await sim.setFaults({ status: { status: 503, times: 5 } });
    expect((await chatThrough(client)).status).toBe(503);
    expect(sim.stats().requestsReceived).toBe(2);
  });

  it('still retries a connection failure before the first byte', async () => {
    const sim = await use.simulator({ faults: { resetBeforeResponse: { times: 1 } } });
    const client = use.client({ baseUrl: sim.url, retryBaseDelayMs: 1 });
    expect((await chatThrough(client)).status).toBe(200);
    expect(sim.stats().requestsReceived).toBe(2);
  });

  it('frees the upstream slot when the caller destroys the body', async () => {
    const sim = await use.simulator({ itlMs: 20 });
    const client = use.client({ baseUrl: sim.url });
    const response = await client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages, max_tokens: 500, stream: true }),
    });
    for await (const _ of response.body) break;
    await expect.poll(() => sim.stats()).toMatchObject({ aborted: 1, running: 0 });
  });

  it('sends through an injected dispatcher', async () => {
    const sim = await use.simulator();
    const agent = new Agent();
    use.onCleanup(() => agent.close());
    const client = use.client({ baseUrl: sim.url, dispatcher: agent });
    const reply = await client.chatCompletion({ messages, max_tokens: 1 });
    expect(reply.object).toBe('chat.completion');
    expect(client.stats().upstreams).toEqual([]);
  });
});

describe('lifecycle', () => {
  it('refuses calls after close()', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    await client.models();
    await client.close();
    const error = await client.models().catch((e: unknown) => e);
    expect(isClosedError(error)).toBe(true);
    expect((error as Error).message).toBe('The client is closed');
    await expect.poll(() => sim.stats().connectionsOpen).toBe(0);
  });
});
