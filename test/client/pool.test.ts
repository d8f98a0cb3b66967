// Connection pooling: reuse, the connection cap, the keep-alive race, and many concurrent streams.
import { describe, expect, it } from 'vitest';
import { messages, trackResources } from '../helpers/fixtures.js';

const use = trackResources();

describe('pool', () => {
  it('sends N sequential requests over one connection', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    for (let i = 0; i < 20; i++) {
      await client.chatCompletion({ messages, max_tokens: 2 });
      // undici checks an idle socket for one event-loop turn before reusing it (to catch a server's close).
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(sim.stats().connectionsAccepted).toBe(1);
    expect(client.stats().connections).toEqual({ created: 1, reused: 19 });
  });

  it('needs at most two connections for back-to-back requests in the same turn', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url });
    for (let i = 0; i < 20; i++) await client.chatCompletion({ messages, max_tokens: 2 });
    expect(sim.stats().connectionsAccepted).toBeLessThanOrEqual(2);
    expect(client.stats().connections.reused).toBeGreaterThanOrEqual(18);
  });

  it('opens at most `connections` sockets for N concurrent requests', async () => {
    const sim = await use.simulator({ ttftMs: 20 });
    const client = use.client({ baseUrl: sim.url, connections: 4 });
    const replies = await Promise.all(
      Array.from({ length: 30 }, () => client.chatCompletion({ messages, max_tokens: 1 })),
    );
    expect(replies).toHaveLength(30);
    expect(sim.stats().connectionsAccepted).toBeLessThanOrEqual(4);
    expect(sim.stats().completed).toBe(30);
  });

  it('survives the keep-alive race: reused sockets reset before answering never reach the caller', async () => {
    // Every request that arrives on an already-used connection is reset before any response byte, as when the
    // server closes an idle socket just as the client writes to it.
    const sim = await use.simulator({ faults: { resetBeforeResponse: { onlyReused: true } } });
    const client = use.client({ baseUrl: sim.url, maxRetries: 0 });
    const results = [];
    for (let i = 0; i < 10; i++) {
      results.push(await client.chatCompletion({ messages, max_tokens: 1 }));
      // Streams and raw requests are replayed too.
      for await (const _ of client.streamChatCompletion({ messages, max_tokens: 1 })) {
        // drain
      }
    }
    expect(results).toHaveLength(10);
    const stats = client.stats();
    expect(stats.errors).toEqual({});
    expect(stats.retries).toBe(0);
    // Each reused-socket failure was replayed once, on a fresh connection.
    expect(stats.replays).toBeGreaterThanOrEqual(10);
    expect(stats.replays).toBe(sim.stats().failed);
  });

  it('keeps sockets idle no longer than keepAliveTimeoutMs', async () => {
    const sim = await use.simulator();
    const client = use.client({ baseUrl: sim.url, keepAliveTimeoutMs: 50 });
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(sim.stats().connectionsOpen).toBe(1);
    await expect.poll(() => sim.stats().connectionsOpen, { timeout: 2000 }).toBe(0);
  });

  it('completes 1,000 concurrent streams', async () => {
    const sim = await use.simulator({ itlMs: 2, maxNumSeqs: 1024 });
    const client = use.client({ baseUrl: sim.url, connections: 1000 });
    const counts = await Promise.all(
      Array.from({ length: 1000 }, async () => {
        let tokens = 0;
        for await (const chunk of client.streamChatCompletion({ messages, max_tokens: 10 })) {
          if (chunk.choices[0]?.delta.content) tokens++;
        }
        return tokens;
      }),
    );
    expect(counts.every((n) => n === 10)).toBe(true);
    expect(sim.stats()).toMatchObject({ completed: 1000, aborted: 0, running: 0 });
  }, 60_000);
});
