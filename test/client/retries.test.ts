// The retry contract: what is retried, Retry-After, the budget, and never after the first response byte.
import { describe, expect, it } from 'vitest';
import { backoffDelay, isRetryableStatus, parseRetryAfter, RetryBudget } from '../../src/client/retry.js';
import {
  UpstreamBadRequestError,
  UpstreamConnectionError,
  UpstreamOverloadedError,
  UpstreamRateLimitError,
  UpstreamServerError,
} from '../../src/index.js';
import { messages, trackResources } from '../helpers/fixtures.js';

const use = trackResources();
const fast = { retryBaseDelayMs: 1, retryMaxDelayMs: 5 };

describe('retries', () => {
  it('retries a 503 and succeeds, honouring Retry-After', async () => {
    const sim = await use.simulator({ faults: { status: { status: 503, retryAfterSec: 0.15, times: 2 } } });
    const client = use.client({ baseUrl: sim.url, ...fast });
    const started = performance.now();
    const reply = await client.chatCompletion({ messages, max_tokens: 1 });
    expect(reply.choices).toHaveLength(1);
    // Two waits of the server's 150 ms, not the 1-5 ms backoff.
    expect(performance.now() - started).toBeGreaterThanOrEqual(290);
    expect(sim.stats().requestsReceived).toBe(3);
    expect(client.stats()).toMatchObject({ requests: 1, retries: 2, errors: {} });
  });

  it('caps Retry-After at retryAfterCapMs', async () => {
    const sim = await use.simulator({ faults: { status: { status: 429, retryAfterSec: 3600, times: 1 } } });
    const client = use.client({ baseUrl: sim.url, retryAfterCapMs: 10 });
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(client.stats().retries).toBe(1);
  });

  it('gives up after maxRetries with the mapped error', async () => {
    const sim = await use.simulator({ faults: { status: { status: 500 } } });
    const client = use.client({ baseUrl: sim.url, maxRetries: 3, ...fast });
    await expect(client.chatCompletion({ messages })).rejects.toBeInstanceOf(UpstreamServerError);
    expect(sim.stats().requestsReceived).toBe(4);
  });

  it('does not retry a 400, 404 or 501', async () => {
    const sim = await use.simulator({ faults: { status: { status: 501 } } });
    const client = use.client({ baseUrl: sim.url, ...fast });
    await expect(client.chatCompletion({ messages })).rejects.toMatchObject({ status: 501 });
    expect(sim.stats().requestsReceived).toBe(1);
    const ok = await use.simulator();
    const okClient = use.client({ baseUrl: ok.url, ...fast });
    await expect(okClient.chatCompletion({ messages, max_tokens: 0 })).rejects.toBeInstanceOf(
      UpstreamBadRequestError,
    );
    expect(ok.stats().requestsReceived).toBe(1);
  });

  it('maps 429 and 503 with retryAfterMs when retries are off', async () => {
    const sim = await use.simulator({ faults: { status: { status: 429, retryAfterSec: 7, times: 1 } } });
    const client = use.client({ baseUrl: sim.url, maxRetries: 0 });
    const limited = await client.chatCompletion({ messages }).catch((e: unknown) => e);
    expect(limited).toBeInstanceOf(UpstreamRateLimitError);
    expect(limited).toMatchObject({ status: 429, retryAfterMs: 7000 });
    await sim.setFaults({ status: { status: 503, times: 1 } });
    await expect(client.chatCompletion({ messages })).rejects.toBeInstanceOf(UpstreamOverloadedError);
  });

  it('retries a connection that failed before any response byte, also for POST', async () => {
    // A fresh connection reset before answering: nothing came back, so a retry (with backoff) is safe.
    const sim = await use.simulator({ faults: { resetBeforeResponse: { times: 2 } } });
    const client = use.client({ baseUrl: sim.url, ...fast });
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(client.stats().retries).toBe(2);
  });

  it('never retries once a response byte arrived', async () => {
    const sim = await use.simulator({ itlMs: 1, faults: { resetMidStream: { afterTokens: 1 } } });
    const client = use.client({ baseUrl: sim.url, ...fast });
    const error = await (async () => {
      for await (const _ of client.streamChatCompletion({ messages, max_tokens: 5 })) {
        // reading
      }
    })().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UpstreamConnectionError);
    expect(sim.stats().requestsReceived).toBe(1);
  });

  it('stops retrying when the budget is spent', async () => {
    const sim = await use.simulator({ faults: { status: { status: 503 } } });
    let now = 0;
    const client = use.client({
      baseUrl: sim.url,
      ...fast,
      maxRetries: 5,
      retryBudget: { ratio: 0, minPerSec: 0.2 },
      now: () => now,
    });
    // 0.2 per second over a 10 s window: two retries in all, then none.
    await expect(client.chatCompletion({ messages })).rejects.toBeInstanceOf(UpstreamOverloadedError);
    await expect(client.chatCompletion({ messages })).rejects.toBeInstanceOf(UpstreamOverloadedError);
    expect(client.stats().retries).toBe(2);
    expect(sim.stats().requestsReceived).toBe(4);
    now += 11_000;
    await expect(client.chatCompletion({ messages })).rejects.toBeInstanceOf(UpstreamOverloadedError);
    expect(client.stats().retries).toBe(4);
  });
});

describe('retry rules', () => {
  it('classifies statuses', () => {
    expect([408, 409, 429, 500, 502, 503, 504].every(isRetryableStatus)).toBe(true);
    expect([400, 401, 403, 404, 422, 501].some(isRetryableStatus)).toBe(false);
  });

  it('parses retry-after-ms, seconds and HTTP dates', () => {
    expect(parseRetryAfter({ 'retry-after-ms': '250', 'retry-after': '9' })).toBe(250);
    expect(parseRetryAfter({ 'retry-after': '2' })).toBe(2000);
    expect(parseRetryAfter({ 'retry-after': new Date(10_000).toUTCString() }, 4000)).toBe(6000);
    expect(parseRetryAfter({ 'retry-after': 'soon' })).toBeUndefined();
    expect(parseRetryAfter({})).toBeUndefined();
  });

  it('backs off exponentially with at most 25% jitter, capped', () => {
    expect(backoffDelay(0, 500, 8000, () => 0)).toBe(500);
    expect(backoffDelay(3, 500, 8000, () => 0)).toBe(4000);
    expect(backoffDelay(10, 500, 8000, () => 0)).toBe(8000);
    expect(backoffDelay(1, 500, 8000, () => 1)).toBe(750);
  });

  it('budgets retries as a ratio of requests in a sliding 10 s window', () => {
    let now = 0;
    const budget = new RetryBudget({ ratio: 0.1, minPerSec: 0, now: () => now });
    for (let i = 0; i < 50; i++) budget.recordRequest();
    const granted = Array.from({ length: 10 }, () => budget.tryWithdraw()).filter(Boolean).length;
    expect(granted).toBe(5);
    now += 10_000;
    expect(budget.tryWithdraw()).toBe(false);
    budget.recordRequest();
    expect(budget.tryWithdraw()).toBe(false);
    for (let i = 0; i < 9; i++) budget.recordRequest();
    expect(budget.tryWithdraw()).toBe(true);
  });
});
