// Each timeout raises its own error and frees the upstream's slot.
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { resolveClientOptions } from '../../src/client/options.js';
import { UpstreamTimeoutError } from '../../src/index.js';
import { messages, trackResources } from '../helpers/fixtures.js';

const use = trackResources();

async function timeoutOf(promise: Promise<unknown>): Promise<string | undefined> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(UpstreamTimeoutError);
  return (error as UpstreamTimeoutError).timeout;
}

describe('timeouts', () => {
  it('connect: a TLS handshake that never completes', async () => {
    // A TCP server that accepts and never speaks TLS: the connect (and handshake) timeout must fire.
    const sockets = new Set<import('node:net').Socket>();
    const server = createServer((socket) => {
      sockets.add(socket);
      socket.resume();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    use.onCleanup(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    });
    const port = (server.address() as { port: number }).port;
    const client = use.client({ baseUrl: `https://127.0.0.1:${port}`, connectTimeoutMs: 100, maxRetries: 0 });
    const error = await client.health().catch((e: unknown) => e);
    expect(error).toMatchObject({ timeout: 'connect', code: 'ERR_VK_CONNECT_TIMEOUT', timeoutMs: 100 });
  });

  it('firstByte: no response headers in time (non-streaming)', async () => {
    const sim = await use.simulator({ faults: { stall: {} } });
    const client = use.client({ baseUrl: sim.url, firstByteTimeoutMs: 100, maxRetries: 0 });
    expect(await timeoutOf(client.chatCompletion({ messages }))).toBe('firstByte');
  });

  it('firstByte: headers but no first token in time (streaming)', async () => {
    const sim = await use.simulator({ ttftMs: 60_000 });
    const client = use.client({ baseUrl: sim.url, firstByteTimeoutMs: 100 });
    const stream = (async () => {
      for await (const _ of client.streamChatCompletion({ messages, max_tokens: 2 })) {
        // waiting
      }
    })();
    expect(await timeoutOf(stream)).toBe('firstByte');
    await expect.poll(() => sim.stats()).toMatchObject({ running: 0, aborted: 1 });
  });

  it('idle: a gap between stream chunks longer than idleTimeoutMs', async () => {
    const sim = await use.simulator({ itlMs: 400 });
    const client = use.client({ baseUrl: sim.url, idleTimeoutMs: 100 });
    const chunks: unknown[] = [];
    const stream = (async () => {
      for await (const chunk of client.streamChatCompletion({ messages, max_tokens: 5 })) chunks.push(chunk);
    })();
    const error = await stream.catch((e: unknown) => e);
    expect(error).toMatchObject({ timeout: 'idle', code: 'ERR_VK_IDLE_TIMEOUT' });
    // The role chunk and the first token arrived before the gap.
    expect(chunks).toHaveLength(2);
    await expect.poll(() => sim.stats()).toMatchObject({ running: 0, aborted: 1 });
  });

  it('total: the per-call timeoutMs, and the slot is freed', async () => {
    const sim = await use.simulator({ ttftMs: 60_000 });
    const client = use.client({ baseUrl: sim.url });
    const error = await client
      .chatCompletion({ messages }, { timeoutMs: 100, requestId: 'r1' })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ timeout: 'total', code: 'ERR_VK_TOTAL_TIMEOUT', requestId: 'r1' });
    await expect.poll(() => sim.stats()).toMatchObject({ running: 0, aborted: 1 });
    expect(client.stats().errors).toEqual({ ERR_VK_TOTAL_TIMEOUT: 1 });
  });

  it('defaults fit LLM work: a long non-streamed generation does not die at undici’s 300 s', () => {
    const resolved = resolveClientOptions({ baseUrl: 'http://127.0.0.1:9' });
    expect(resolved).toMatchObject({
      connectTimeoutMs: 10_000,
      firstByteTimeoutMs: 600_000,
      idleTimeoutMs: 120_000,
      totalTimeoutMs: 1_800_000,
      keepAliveTimeoutMs: 4000,
    });
    expect(resolved.firstByteTimeoutMs).toBeGreaterThan(300_000);
  });
});
