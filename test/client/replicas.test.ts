// Several replicas: least-outstanding choice, passive ejection, /health re-admission, active probing.
import { describe, expect, it } from 'vitest';
import { isInvalidOptionError } from '../../src/index.js';
import { generations, messages, trackResources } from '../helpers/fixtures.js';

const use = trackResources();

describe('replicas', () => {
  it('spreads concurrent requests evenly (round-robin among ties)', async () => {
    const a = await use.simulator({ ttftMs: 30 });
    const b = await use.simulator({ ttftMs: 30 });
    const client = use.client({ baseUrls: [a.url, b.url], routing: 'least-outstanding' });
    await Promise.all(Array.from({ length: 10 }, () => client.chatCompletion({ messages, max_tokens: 1 })));
    expect(a.stats().completed).toBe(5);
    expect(b.stats().completed).toBe(5);
  });

  it('sends new requests to the replica with the fewest outstanding', async () => {
    const slow = await use.simulator({ ttftMs: 60_000 });
    const fast = await use.simulator();
    const client = use.client({ baseUrls: [slow.url, fast.url], routing: 'least-outstanding' });
    const controller = new AbortController();
    // The first request goes to the first replica and stays outstanding there.
    const pending = client.chatCompletion({ messages }, { signal: controller.signal }).catch(() => undefined);
    await expect.poll(() => slow.stats().running).toBe(1);
    for (let i = 0; i < 6; i++) await client.chatCompletion({ messages, max_tokens: 1 });
    expect(fast.stats().completed).toBe(6);
    expect(generations(slow)).toBe(1);
    expect(client.stats().upstreams.map((u) => u.outstanding)).toEqual([1, 0]);
    controller.abort();
    await pending;
  });

  it('ejects a replica after consecutive connection failures and re-admits it after a healthy probe', async () => {
    const good = await use.simulator();
    const bad = await use.simulator({ faults: { refuseConnections: true } });
    const client = use.client({
      baseUrls: [bad.url, good.url],
      routing: 'least-outstanding',
      ejectAfterFailures: 2,
      probeIntervalMs: 20,
      retryBaseDelayMs: 1,
      retryMaxDelayMs: 2,
    });
    // Retries move to the healthy replica; no call fails.
    for (let i = 0; i < 6; i++) await client.chatCompletion({ messages, max_tokens: 1 });
    const ejected = client.stats().upstreams.find((u) => u.url === bad.url)!;
    expect(ejected).toMatchObject({ ejected: true });
    expect(client.stats().errors).toEqual({});
    // While ejected it gets no traffic.
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(generations(bad)).toBe(0);
    // Healthy again: the probe re-admits it.
    await bad.clearFaults();
    await expect.poll(() => client.stats().upstreams.find((u) => u.url === bad.url)!.ejected).toBe(false);
    await Promise.all(Array.from({ length: 4 }, () => client.chatCompletion({ messages, max_tokens: 1 })));
    expect(bad.stats().completed).toBeGreaterThan(0);
  });

  it('keeps an ejected replica out while /health fails', async () => {
    const good = await use.simulator();
    const bad = await use.simulator({ faults: { refuseConnections: true } });
    const client = use.client({
      baseUrls: [bad.url, good.url],
      routing: 'least-outstanding',
      ejectAfterFailures: 1,
      probeIntervalMs: 20,
      retryBaseDelayMs: 1,
      retryMaxDelayMs: 2,
    });
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(client.stats().upstreams[0]!.ejected).toBe(true);
    // Accepting connections again but unhealthy: still out.
    await bad.setFaults({ unhealthy: true });
    await expect.poll(() => bad.stats().requestsReceived).toBeGreaterThanOrEqual(2);
    expect(client.stats().upstreams[0]!.ejected).toBe(true);
    await bad.clearFaults();
    await expect.poll(() => client.stats().upstreams[0]!.ejected).toBe(false);
  });

  it('actively probes every replica when healthCheckIntervalMs is set', async () => {
    const a = await use.simulator({ faults: { unhealthy: true } });
    const b = await use.simulator();
    const client = use.client({ baseUrls: [a.url, b.url], healthCheckIntervalMs: 20, probeIntervalMs: 20 });
    await expect.poll(() => client.stats().upstreams.map((u) => u.ejected)).toEqual([true, false]);
    await a.clearFaults();
    await expect.poll(() => client.stats().upstreams.map((u) => u.ejected)).toEqual([false, false]);
  });

  it('sends a call to the replica it names, and refuses one that is not a baseUrl', async () => {
    const a = await use.simulator();
    const b = await use.simulator();
    // (Least-outstanding: prefix routing would also read each replica's cache size from its /metrics at start.)
    const client = use.client({
      baseUrls: [a.url, b.url],
      modelDiscovery: false,
      routing: 'least-outstanding',
    });
    for (let i = 0; i < 3; i++) await client.models({ replica: `${b.url}/` });
    expect(await client.health({ replica: a.url })).toBe(true);
    expect([a.stats().requestsReceived, b.stats().requestsReceived]).toEqual([1, 3]);
    const error = await client.models({ replica: 'http://127.0.0.1:1' }).catch((e: unknown) => e);
    expect(isInvalidOptionError(error)).toBe(true);
    expect((error as Error).message).toContain("Expected `replica` to be one of the client's baseUrls");
  });
});

describe('outlier ejection (5xx and stalls)', () => {
  const body = (text: string) => Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: text }] }));
  const passthrough = (client: ReturnType<typeof use.client>, i: number) =>
    client
      .request({
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json' },
        body: body(`q${i}`),
      })
      .then(async (r) => {
        for await (const _ of r.body) {
          // drained
        }
        return r.status;
      });

  it('retries a 5xx once on another replica, and ejects a replica that answers 500 at once', async () => {
    const good = await use.simulator({ ttftMs: 20 });
    const bad = await use.simulator({ faults: { status: { status: 500 } } });
    const client = use.client({
      baseUrls: [bad.url, good.url],
      routing: 'least-outstanding',
      ejectAfter5xx: 3,
    });
    // A replica failing fast looks the least loaded: without ejection and the retry, most would get its 500 (81 of 90
    // did). Ten callers at a time, as a loaded gateway sends.
    const statuses: number[] = [];
    await Promise.all(
      Array.from({ length: 10 }, async (_, caller) => {
        for (let i = 0; i < 9; i++) statuses.push(await passthrough(client, caller * 9 + i));
      }),
    );
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    const [badStats] = client.stats().upstreams;
    expect(badStats!.ejected).toBe(true);
    expect(badStats!.ejections).toBe(1);
    // Out of rotation: it got only what the first wave sent it before any answer came back (at most 10 in flight).
    expect(generations(bad)).toBeLessThanOrEqual(10);
    expect(good.stats().completed).toBe(90);
  });

  it('keeps a replica out longer each time it is ejected in a row, until it is healthy again', async () => {
    const good = await use.simulator();
    const bad = await use.simulator({ faults: { status: { status: 503 } } });
    const client = use.client({
      baseUrls: [bad.url, good.url],
      routing: 'round-robin',
      ejectAfter5xx: 1,
      probeIntervalMs: 100,
      maxEjectionMs: 250,
    });
    await passthrough(client, 0);
    await passthrough(client, 1);
    expect(client.stats().upstreams[0]!.ejected).toBe(true);
    // Its /health still answers 200: readmitted after 100 ms, ejected again at its next 503 — for 200 ms, then 250.
    await expect.poll(() => client.stats().upstreams[0]!.ejected, { interval: 20 }).toBe(false);
    for (let i = 0; i < 4 && !client.stats().upstreams[0]!.ejected; i++) await passthrough(client, i);
    expect(client.stats().upstreams[0]!.ejections).toBe(2);
    const outAt = performance.now();
    await expect
      .poll(() => client.stats().upstreams[0]!.ejected, { interval: 10, timeout: 2000 })
      .toBe(false);
    expect(performance.now() - outAt).toBeGreaterThanOrEqual(150);
    // Healthy again: a success resets the count.
    await bad.setFaults({});
    for (let i = 0; i < 4; i++) await passthrough(client, i);
    expect(client.stats().upstreams[0]!.consecutive5xx).toBe(0);
  });

  it('ejects a replica that accepts requests and never answers (first-byte timeouts)', async () => {
    const good = await use.simulator();
    const stalled = await use.simulator({ faults: { stall: {} } });
    const client = use.client({
      baseUrls: [stalled.url, good.url],
      routing: 'round-robin',
      firstByteTimeoutMs: 200,
      ejectAfterFailures: 2,
      maxRetries: 0,
    });
    const outcomes = [];
    for (let i = 0; i < 6; i++) outcomes.push(await passthrough(client, i).catch((e) => (e as Error).name));
    expect(client.stats().upstreams[0]!.ejected).toBe(true);
    // After two timeouts it is out: the rest went to the good replica.
    expect(outcomes.slice(4)).toEqual([200, 200]);
  });
});
