// The contract every piece keeps: close() is idempotent, a call after it rejects with a ClosedError, and stats() says
// what it did. And the refusals the rate limiter and the budgets decide carry the whole answer to send.
import { describe, expect, it } from 'vitest';
import {
  createConcurrencyLimiter,
  createIpRateLimiter,
  createKeyBudgets,
  createPermitPool,
  createTokenCache,
  createVllmClient,
  isClosedError,
  refusalBody,
} from '../../src/index.js';

/** Each piece, made fresh, with one call that does its work. */
const PIECES: Record<
  string,
  () => { close(): Promise<unknown>; stats(): unknown; call(): Promise<unknown> }
> = {
  'rate limiter': () => {
    const limiter = createIpRateLimiter({ points: 5 });
    return {
      close: () => limiter.close(),
      stats: () => limiter.stats(),
      call: () => limiter.check('10.0.0.1'),
    };
  },
  'key budgets': () => {
    const budgets = createKeyBudgets();
    return {
      close: () => budgets.close(),
      stats: () => budgets.stats(),
      call: () => budgets.admit('k', { requests: 5 }),
    };
  },
  'token cache': () => {
    const cache = createTokenCache({ verify: async () => ({ id: 'u' }) });
    return { close: () => cache.close(), stats: () => cache.stats(), call: () => cache.verify('token') };
  },
  'concurrency limiter': () => {
    const limiter = createConcurrencyLimiter({ concurrency: 1 });
    return { close: () => limiter.close(), stats: () => limiter.stats(), call: () => limiter.run(() => 1) };
  },
  'permit pool': () => {
    const pool = createPermitPool({ permits: 1 });
    return {
      close: () => pool.close(),
      stats: () => pool.stats(),
      call: async () => (await pool.acquire('r')).release(),
    };
  },
  client: () => {
    const client = createVllmClient({ baseUrl: 'http://127.0.0.1:9' });
    return {
      close: () => client.close(),
      stats: () => client.stats(),
      call: () => client.request({ method: 'GET', path: '/v1/models' }),
    };
  },
};

describe('every piece keeps the same contract', () => {
  for (const [name, make] of Object.entries(PIECES)) {
    it(`${name}: stats() exists, close() is idempotent, a call after it rejects with a ClosedError`, async () => {
      const piece = make();
      expect(piece.stats()).toBeTypeOf('object');
      const first = piece.close();
      const second = piece.close();
      await Promise.all([first, second]);
      await piece.close();
      const error = await piece.call().then(
        () => undefined,
        (rejected: unknown) => rejected,
      );
      expect(isClosedError(error), `${name}: ${String(error)}`).toBe(true);
    });
  }
});

describe('refusals', () => {
  it("the rate limiter's refused decision carries the 429, its body and every header; stats count it", async () => {
    const limiter = createIpRateLimiter({ points: 1, windowSec: 60, now: () => 1_000_000 });
    expect((await limiter.check('10.0.0.1')).refusal).toBeUndefined();
    const refused = await limiter.check('10.0.0.1');
    expect(refused.refusal).toMatchObject({
      status: 429,
      type: 'rate_limit_exceeded',
      code: 'rate_limit_exceeded',
    });
    expect(refused.refusal!.message).toBe(
      'Rate limit exceeded: 1 requests per 60 seconds. Retry after 60 seconds.',
    );
    expect(refused.refusal!.headers).toEqual(limiter.headers(refused));
    expect(refused.refusal!.headers['retry-after']).toBe('60');
    expect(limiter.stats()).toEqual({ checked: 2, refused: 1, degraded: 0, storeErrors: 0 });
    await limiter.close();
  });

  it("the budgets' refused decision carries the 429 with OpenAI's wording; errorBody is its body; settlements settle once", async () => {
    const budgets = createKeyBudgets({ now: () => 1_000_000 });
    const admitted = await budgets.admit('k', { requests: 1, tokens: 100 }, { reserveTokens: 40 });
    const refused = await budgets.admit('k', { requests: 1, tokens: 100 });
    expect(admitted.refusal).toBeUndefined();
    expect(refused.refusal).toMatchObject({ status: 429, type: 'requests', code: 'rate_limit_exceeded' });
    expect(refused.refusal!.message).toMatch(/^Rate limit reached for requests per minute: limit 1\./);
    expect(refused.refusal!.headers).toEqual(budgets.headers(refused));
    expect(budgets.errorBody(refused)).toBe(refusalBody(refused.refusal!));

    // Sent: charged its usage once, however many times it is settled.
    const used: number[] = [];
    const settlement = budgets.settlement({
      key: 'k',
      decision: admitted,
      onUsage: (usage) => used.push(usage.promptTokens + usage.completionTokens),
    });
    settlement.sent();
    const meter = settlement.meter({ stream: false });
    meter.write(Buffer.from('{"usage":{"prompt_tokens":7,"completion_tokens":3}}'));
    meter.end();
    await settlement.settle();
    expect(settlement.settle()).toBeUndefined();
    expect(used).toEqual([10]);
    const after = await budgets.admit('k2', { tokens: 100 });
    expect(after.remainingTokens).toBe(100);
    // The reservation of 40 became the 10 used.
    expect((await budgets.admit('k', { tokens: 100 })).remainingTokens).toBe(90);

    // Never sent: refunded (its request and its reservation), no usage reported.
    const other = await budgets.admit('r', { requests: 1, tokens: 100 }, { reserveTokens: 60 });
    const unsent = budgets.settlement({ key: 'r', decision: other, onUsage: () => used.push(-1) });
    await unsent.settle();
    const again = await budgets.admit('r', { requests: 1, tokens: 100 });
    expect(again.allowed).toBe(true);
    expect(again.remainingTokens).toBe(100);
    expect(used).toEqual([10]);
    expect(budgets.stats()).toMatchObject({ admitted: 5, refused: 1, settled: 1, refunded: 1 });
    await budgets.close();
  });
});
