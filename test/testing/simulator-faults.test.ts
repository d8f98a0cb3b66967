// Fault injection: each fault behaves as documented, at start and at run time, and `times` counts down.
import { Client } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';
import { call, chatBody, sseData } from '../helpers/http.js';

let sim: VllmSimulator | undefined;
const clients: Client[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.destroy()));
  await sim?.close();
  sim = undefined;
});

function client(url: string): Client {
  const c = new Client(url, { keepAliveTimeout: 60_000 });
  clients.push(c);
  return c;
}

/** What a client sees when the server resets the socket: the raw reset, or undici's "other side closed". */
const isConnectionReset = (error: unknown) =>
  ['ECONNRESET', 'UND_ERR_SOCKET'].includes((error as { code?: string }).code ?? '');

const post = (c: Client, body: unknown, signal?: AbortSignal) =>
  c.request({
    path: '/v1/chat/completions',
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });

describe('faults', () => {
  it('refuseConnections: new connections are refused, open ones keep working, and it can be lifted', async () => {
    sim = await startVllmSimulator();
    const existing = client(sim.url);
    await (await existing.request({ path: '/health', method: 'GET' })).body.dump();
    await sim.setFaults({ refuseConnections: true });
    await expect(call(sim.url, '/health', { dispatcher: client(sim.url) })).rejects.toMatchObject({
      code: 'ECONNREFUSED',
    });
    const stillOpen = await existing.request({ path: '/health', method: 'GET' });
    expect(stillOpen.statusCode).toBe(200);
    await stillOpen.body.dump();
    await sim.clearFaults();
    expect((await call(sim.url, '/health', { dispatcher: client(sim.url) })).status).toBe(200);
  });

  it('refuseConnections at start', async () => {
    sim = await startVllmSimulator({ faults: { refuseConnections: true } });
    expect(sim.port).toBeGreaterThan(0);
    await expect(call(sim.url, '/health', { dispatcher: client(sim.url) })).rejects.toMatchObject({
      code: 'ECONNREFUSED',
    });
  });

  it('resetBeforeResponse: the socket is reset before any byte, `times` times', async () => {
    sim = await startVllmSimulator({ faults: { resetBeforeResponse: { times: 1 } } });
    const c = client(sim.url);
    await expect(post(c, chatBody({ max_tokens: 1 }))).rejects.toSatisfy(isConnectionReset);
    const ok = await post(c, chatBody({ max_tokens: 1 }));
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
    expect(sim.faults.resetBeforeResponse).toBeUndefined();
  });

  it('resetBeforeResponse with onlyReused spares the first request of a connection', async () => {
    sim = await startVllmSimulator({ faults: { resetBeforeResponse: { onlyReused: true } } });
    const c = client(sim.url);
    const first = await post(c, chatBody({ max_tokens: 1 }));
    expect(first.statusCode).toBe(200);
    await first.body.dump();
    await expect(post(c, chatBody({ max_tokens: 1 }))).rejects.toSatisfy(isConnectionReset);
    // A fresh connection's first request goes through again.
    const fresh = await post(client(sim.url), chatBody({ max_tokens: 1 }));
    expect(fresh.statusCode).toBe(200);
    await fresh.body.dump();
  });

  it('resetMidStream: the stream is cut after N tokens, before [DONE]', async () => {
    sim = await startVllmSimulator({ itlMs: 5 });
    await sim.setFaults({ resetMidStream: { afterTokens: 2 } });
    const response = await post(client(sim.url), chatBody({ max_tokens: 10, stream: true }));
    expect(response.statusCode).toBe(200);
    let received = '';
    await expect(
      (async () => {
        for await (const chunk of response.body) received += chunk;
      })(),
    ).rejects.toSatisfy(isConnectionReset);
    const events = sseData(received);
    expect(events).not.toContain('[DONE]');
    // Role chunk plus two tokens.
    expect(events).toHaveLength(3);
    expect(sim.stats().failed).toBe(1);
  });

  it('status: answers with the status, Retry-After and a vLLM error body, then clears after `times`', async () => {
    sim = await startVllmSimulator({ faults: { status: { status: 503, retryAfterSec: 2, times: 2 } } });
    for (let i = 0; i < 2; i++) {
      const reply = await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 1 }) });
      expect(reply.status).toBe(503);
      expect(reply.headers['retry-after']).toBe('2');
      expect((reply.json() as any).error).toMatchObject({ type: 'ServiceUnavailableError', code: 503 });
    }
    expect((await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 1 }) })).status).toBe(
      200,
    );
  });

  it('status with an empty body, as a dying engine sends', async () => {
    sim = await startVllmSimulator({ faults: { status: { status: 500, body: '' } } });
    const reply = await call(sim.url, '/v1/completions', { body: { prompt: 'x' } });
    expect(reply.status).toBe(500);
    expect(reply.text).toBe('');
  });

  it('streamError: a 200 stream carries an error event, then [DONE]', async () => {
    sim = await startVllmSimulator({
      faults: { streamError: { afterTokens: 1, message: 'engine died', status: 500 } },
    });
    const reply = await call(sim.url, '/v1/chat/completions', {
      body: chatBody({ max_tokens: 5, stream: true }),
    });
    expect(reply.status).toBe(200);
    const events = sseData(reply.text);
    expect(events.at(-1)).toBe('[DONE]');
    expect(JSON.parse(events.at(-2)!)).toEqual({
      error: { message: 'engine died', type: 'InternalServerError', param: null, code: 500 },
    });
    // Role chunk and one token came before the error.
    expect(events).toHaveLength(4);
  });

  it('streamError on a non-streaming request answers with the error status', async () => {
    sim = await startVllmSimulator({ faults: { streamError: {} } });
    const reply = await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 5 }) });
    expect(reply.status).toBe(500);
    expect((reply.json() as any).error.code).toBe(500);
  });

  it('stall: headers of a stream arrive, then nothing until the client gives up', async () => {
    sim = await startVllmSimulator({ faults: { stall: {} } });
    const controller = new AbortController();
    const response = await post(
      client(sim.url),
      chatBody({ max_tokens: 1, stream: true }),
      controller.signal,
    );
    expect(response.statusCode).toBe(200);
    const body = response.body.text();
    body.catch(() => {});
    const outcome = await Promise.race([
      body.then(() => 'answered'),
      new Promise((resolve) => setTimeout(resolve, 200, 'silent')),
    ]);
    expect(outcome).toBe('silent');
    controller.abort();
    await expect(body).rejects.toThrow();
    expect(sim.stats()).toMatchObject({ running: 0, waiting: 0 });
  });

  it('slowFirstToken adds its delay to the first token only', async () => {
    sim = await startVllmSimulator({ faults: { slowFirstToken: { delayMs: 120, times: 1 } } });
    let started = performance.now();
    await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 2 }) });
    expect(performance.now() - started).toBeGreaterThanOrEqual(115);
    expect(sim.faults.slowFirstToken).toBeUndefined();
    started = performance.now();
    await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 2 }) });
    const metricsText = (await call(sim.url, '/metrics')).text;
    expect(metricsText).toContain('vllm:time_to_first_token_seconds_count{engine="0"');
  });

  it('unhealthy: /health and /ping answer 503', async () => {
    sim = await startVllmSimulator();
    await sim.setFaults({ unhealthy: true });
    expect((await call(sim.url, '/health')).status).toBe(503);
    expect((await call(sim.url, '/ping')).status).toBe(503);
    await sim.clearFaults();
    expect((await call(sim.url, '/health')).status).toBe(200);
  });

  it('validates faults given at run time', async () => {
    sim = await startVllmSimulator();
    await expect(sim.setFaults({ status: { status: 200 } })).rejects.toThrow(
      'Expected `faults.status.status` to be an integer >= 400 and <= 599, got `200` (number)',
    );
    await expect(sim.setFaults({ stall: { times: 0 } })).rejects.toThrow('faults.stall.times');
    await expect(sim.setFaults({ nope: true } as never)).rejects.toThrow('Unknown option `faults.nope`');
  });

  it('aborted stall requests leave nothing behind', async () => {
    sim = await startVllmSimulator({ faults: { stall: { times: 1 } } });
    const controller = new AbortController();
    const pending = post(client(sim.url), chatBody({ max_tokens: 1 }), controller.signal);
    pending.catch(() => {});
    await vi.waitFor(() => expect(sim!.stats().requestsReceived).toBe(1));
    controller.abort();
    await expect(pending).rejects.toThrow();
    expect((await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 1 }) })).status).toBe(
      200,
    );
  });
});
