// Streams: chunk order, in-stream errors, cut streams, early exit and abort freeing the upstream slot.
import { describe, expect, it } from 'vitest';
import {
  isRequestAbortedError,
  isUpstreamConnectionError,
  UpstreamAuthenticationError,
  UpstreamConnectionError,
  UpstreamNotFoundError,
  UpstreamServerError,
} from '../../src/index.js';
import { messages, trackResources } from '../helpers/fixtures.js';

const use = trackResources();

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) items.push(item);
  return items;
}

describe('streams', () => {
  it('yields the role chunk, token chunks and the usage chunk, and ends at [DONE]', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    const chunks = await collect(
      client.streamChatCompletion({ messages, max_tokens: 3, stream_options: { include_usage: true } }),
    );
    expect(chunks).toHaveLength(5);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(chunks[3]!.choices[0]!.finish_reason).toBe('length');
    expect(chunks[4]!.usage?.completion_tokens).toBe(3);
    const completions = await collect(client.streamCompletion({ prompt: 'x', max_tokens: 2 }));
    expect(completions.map((c) => typeof c.choices[0]!.text)).toEqual(['string', 'string']);
  });

  it('raises the mapped error for an error event inside a 200 stream', async () => {
    const sim = await use.simulator({ faults: { streamError: { afterTokens: 1, message: 'engine died' } } });
    const client = use.client({ baseUrl: sim.url });
    const seen: unknown[] = [];
    const error = await (async () => {
      for await (const chunk of client.streamChatCompletion({ messages, max_tokens: 5 })) seen.push(chunk);
    })().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UpstreamServerError);
    expect(error).toMatchObject({ status: 500, error: { message: 'engine died' } });
    expect(seen).toHaveLength(2);
  });

  it('raises a connection error, not a silent end, when the stream is cut before [DONE]', async () => {
    const sim = await use.simulator({ itlMs: 2, faults: { resetMidStream: { afterTokens: 2 } } });
    const client = use.client({ baseUrl: sim.url });
    const error = await collect(client.streamChatCompletion({ messages, max_tokens: 10 })).catch(
      (e: unknown) => e,
    );
    expect(isUpstreamConnectionError(error)).toBe(true);
    // Bytes had arrived: no retry.
    expect(sim.stats().requestsReceived).toBe(1);
    expect(client.stats().retries).toBe(0);
  });

  it('cancels the upstream request at once when the loop breaks', async () => {
    const sim = await use.simulator({ itlMs: 20 });
    const client = use.client({ baseUrl: sim.url });
    for await (const _ of client.streamChatCompletion({ messages, max_tokens: 1000 })) break;
    await expect.poll(() => sim.stats()).toMatchObject({ aborted: 1, running: 0 });
  });

  it('cancels the upstream request when the signal aborts, streaming or not', async () => {
    const sim = await use.simulator({ ttftMs: 60_000 });
    const client = use.client({ baseUrl: sim.url });
    const streamController = new AbortController();
    const streaming = collect(
      client.streamChatCompletion({ messages, max_tokens: 5 }, { signal: streamController.signal }),
    ).catch((e: unknown) => e);
    const plainController = new AbortController();
    const plain = client
      .chatCompletion({ messages, max_tokens: 5 }, { signal: plainController.signal })
      .catch((e: unknown) => e);
    await expect.poll(() => sim.stats().running).toBe(2);
    streamController.abort();
    plainController.abort(new Error('user left'));
    expect(isRequestAbortedError(await streaming)).toBe(true);
    const plainError = await plain;
    expect(isRequestAbortedError(plainError)).toBe(true);
    expect((plainError as Error).cause).toMatchObject({ message: 'user left' });
    await expect.poll(() => sim.stats()).toMatchObject({ aborted: 2, running: 0 });
  });

  it('rejects at once when the signal is already aborted', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    const error = await client
      .chatCompletion({ messages }, { signal: AbortSignal.abort() })
      .catch((e: unknown) => e);
    expect(isRequestAbortedError(error)).toBe(true);
    expect(sim.stats().requestsReceived).toBe(0);
  });
});

describe('error mapping', () => {
  it('maps vLLM errors with status, code, body and request id', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    const error = await client
      .chatCompletion({ messages, model: 'nope' }, { requestId: 'req-7' })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UpstreamNotFoundError);
    expect(error).toMatchObject({
      status: 404,
      code: 'ERR_VK_UPSTREAM_NOT_FOUND',
      requestId: 'req-7',
      error: {
        message: 'The model `nope` does not exist.',
        type: 'NotFoundError',
        param: 'model',
        code: 404,
      },
    });
  });

  it('reads the legacy flat error shape and the plain-string 401', async () => {
    const legacy = await use.simulator({ errorShape: 'legacy' });
    const error = await use
      .client({ baseUrl: legacy.url })
      .completion({ prompt: 'x', model: 'nope' })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ status: 404, error: { type: 'NotFoundError', param: 'model' } });
    const guarded = await use.simulator({ apiKey: 'sk-right' });
    const denied = await use
      .client({ baseUrl: guarded.url, apiKey: 'sk-wrong' })
      .models()
      .catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(UpstreamAuthenticationError);
    expect(denied).toMatchObject({ status: 401, error: { message: 'Unauthorized' } });
    expect(JSON.stringify(denied)).not.toContain('sk-wrong');
    expect((denied as Error).message).not.toContain('sk-wrong');
    const allowed = await use.client({ baseUrl: guarded.url, apiKey: 'sk-right' }).models();
    expect(allowed.data[0]?.id).toBeTypeOf('string');
  });

  it('health() sends one request and answers at once, retrying neither a 503 nor a refused connection', async () => {
    const sim = await use.simulator({ faults: { unhealthy: true } });
    const client = use.client({ baseUrl: sim.url });
    expect(await client.health()).toBe(false);
    expect(sim.stats().requestsReceived).toBe(1);
    expect(client.stats().retries).toBe(0);
    await sim.setFaults({ refuseConnections: true });
    const fresh = use.client({ baseUrl: sim.url });
    await expect(fresh.health()).rejects.toBeInstanceOf(UpstreamConnectionError);
    expect(fresh.stats().retries).toBe(0);
  });

  it('maps a refused connection with its cause', async () => {
    const sim = await use.simulator({ faults: { refuseConnections: true } });
    const client = use.client({ baseUrl: sim.url, maxRetries: 0 });
    const error = await client.health().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UpstreamConnectionError);
    expect((error as Error).cause).toMatchObject({ code: 'ECONNREFUSED' });
    expect(client.stats().errors).toEqual({ ERR_VK_UPSTREAM_CONNECTION: 1 });
  });
});
