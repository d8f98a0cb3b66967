// Scheduling: running slots, the FIFO waiting queue, queue cap, aborts freeing slots, and stats agreeing with /metrics.
import { Client } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';
import { call, chatBody } from '../helpers/http.js';

let sim: VllmSimulator | undefined;
const clients: Client[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.destroy()));
  await sim?.close();
  sim = undefined;
});

/** Starts a request on its own connection and returns its controller and the promise of its response headers. */
function open(url: string, body: unknown) {
  const client = new Client(url);
  clients.push(client);
  const controller = new AbortController();
  const response = client.request({
    path: '/v1/chat/completions',
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: controller.signal,
  });
  response.catch(() => {});
  return { controller, response };
}

function metric(text: string, name: string, extra = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(extra));
  if (!line) throw new Error(`metric ${name} missing`);
  return Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('engine', () => {
  it('runs at most maxNumSeqs, queues the rest, and sends stream headers before queueing', async () => {
    sim = await startVllmSimulator({ maxNumSeqs: 2, ttftMs: 60_000 });
    const url = sim.url;
    const requests = [0, 1, 2].map(() => open(url, chatBody({ stream: true, max_tokens: 5 })));
    // All three get their 200 and headers, even the one still waiting for a slot.
    const responses = await Promise.all(requests.map((r) => r.response));
    expect(responses.map((r) => r.statusCode)).toEqual([200, 200, 200]);
    expect(responses[2]!.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    await vi.waitFor(() => expect(sim!.stats()).toMatchObject({ running: 2, waiting: 1 }));
    expect((await call(url, '/load')).json()).toEqual({ server_load: 3 });

    const metrics = (await call(url, '/metrics')).text;
    expect(metric(metrics, 'vllm:num_requests_running')).toBe(2);
    expect(metric(metrics, 'vllm:num_requests_waiting')).toBe(1);

    // Aborting a running request frees its slot at once: the waiting one starts.
    requests[0]!.controller.abort();
    await vi.waitFor(() => expect(sim!.stats()).toMatchObject({ running: 2, waiting: 0, aborted: 1 }));
    requests[1]!.controller.abort();
    requests[2]!.controller.abort();
    await vi.waitFor(() => expect(sim!.stats()).toMatchObject({ running: 0, waiting: 0, aborted: 3 }));
    const after = (await call(url, '/metrics')).text;
    expect(metric(after, 'vllm:request_success_total', 'finished_reason="abort"')).toBe(3);
    expect(metric(after, 'vllm:num_requests_running')).toBe(0);
  });

  it('frees the slot when a non-streaming client disconnects', async () => {
    sim = await startVllmSimulator({ maxNumSeqs: 1, ttftMs: 60_000 });
    const first = open(sim.url, chatBody({ max_tokens: 3 }));
    await vi.waitFor(() => expect(sim!.stats().running).toBe(1));
    first.controller.abort();
    await vi.waitFor(() => expect(sim!.stats()).toMatchObject({ running: 0, aborted: 1 }));
  });

  it('removes an aborted request from the waiting queue without ever running it', async () => {
    sim = await startVllmSimulator({ maxNumSeqs: 1, ttftMs: 60_000 });
    const running = open(sim.url, chatBody({ max_tokens: 3 }));
    const queued = open(sim.url, chatBody({ max_tokens: 3 }));
    await vi.waitFor(() => expect(sim!.stats()).toMatchObject({ running: 1, waiting: 1 }));
    queued.controller.abort();
    await vi.waitFor(() => expect(sim!.stats()).toMatchObject({ running: 1, waiting: 0, aborted: 1 }));
    const metrics = (await call(sim.url, '/metrics')).text;
    // It never ran, so it never produced a first token.
    expect(metric(metrics, 'vllm:time_to_first_token_seconds_count')).toBe(0);
    running.controller.abort();
  });

  it('answers 503 when the waiting queue is at maxQueue', async () => {
    sim = await startVllmSimulator({ maxNumSeqs: 1, maxQueue: 1, ttftMs: 60_000 });
    open(sim.url, chatBody({ max_tokens: 1 }));
    open(sim.url, chatBody({ max_tokens: 1 }));
    await vi.waitFor(() => expect(sim!.stats()).toMatchObject({ running: 1, waiting: 1 }));
    const third = await call(sim.url, '/v1/chat/completions', {
      body: chatBody({ max_tokens: 1, stream: true }),
    });
    expect(third.status).toBe(503);
    expect((third.json() as any).error).toMatchObject({ type: 'ServiceUnavailableError', code: 503 });
    expect(sim.stats().rejected).toBe(1);
  });

  it('serves FIFO: time to first token is queue wait plus ttftMs', async () => {
    sim = await startVllmSimulator({ maxNumSeqs: 1, ttftMs: 40 });
    const started = performance.now();
    const order: number[] = [];
    await Promise.all(
      [0, 1, 2].map(async (i) => {
        await call(sim!.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 1 }) });
        order.push(i);
      }),
    );
    const elapsed = performance.now() - started;
    expect(order).toEqual([0, 1, 2]);
    // Three requests through one slot cannot finish faster than three prefills back to back.
    expect(elapsed).toBeGreaterThanOrEqual(3 * 40 - 5);
    const metrics = (await call(sim.url, '/metrics')).text;
    expect(metric(metrics, 'vllm:request_queue_time_seconds_count')).toBe(3);
    expect(metric(metrics, 'vllm:time_to_first_token_seconds_sum')).toBeGreaterThanOrEqual(
      (40 + 80 + 120 - 15) / 1000,
    );
  });

  it('spaces tokens by itlMs', async () => {
    sim = await startVllmSimulator({ itlMs: 20 });
    const started = performance.now();
    const reply = await call(sim.url, '/v1/chat/completions', {
      body: chatBody({ max_tokens: 6, stream: true }),
    });
    expect(reply.text.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(performance.now() - started).toBeGreaterThanOrEqual(5 * 20 - 5);
    const metrics = (await call(sim.url, '/metrics')).text;
    expect(metric(metrics, 'vllm:inter_token_latency_seconds_count')).toBe(5);
  });

  it('keeps stats() and /metrics in agreement', async () => {
    sim = await startVllmSimulator({ outputTokens: 4 });
    await call(sim.url, '/v1/chat/completions', { body: chatBody() });
    await call(sim.url, '/v1/chat/completions', { body: chatBody({ max_tokens: 2, stream: true }) });
    await call(sim.url, '/v1/completions', { body: { prompt: 'hi', max_tokens: 3 } });
    const metrics = (await call(sim.url, '/metrics')).text;
    const stats = sim.stats();
    expect(stats.completed).toBe(3);
    expect(
      metric(metrics, 'vllm:request_success_total', 'finished_reason="stop"') +
        metric(metrics, 'vllm:request_success_total', 'finished_reason="length"'),
    ).toBe(stats.completed);
    expect(metric(metrics, 'vllm:generation_tokens_total')).toBe(stats.generationTokens);
    expect(stats.generationTokens).toBe(4 + 2 + 3);
    expect(metric(metrics, 'vllm:prompt_tokens_total')).toBe(stats.promptTokens);
    // The /metrics request itself is the fourth one received.
    expect(metric(metrics, 'vllm_sim:requests_total')).toBe(4);
    expect(stats.requestsReceived).toBe(4);
    expect(metric(metrics, 'vllm_sim:connections_total')).toBe(stats.connectionsAccepted);
  });
});
