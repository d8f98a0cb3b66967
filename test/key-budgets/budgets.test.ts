// createKeyBudgets in one process: admission at the boundaries, windows on an injected clock, OpenAI's headers and
// 429 body, option validation, and the node:http, Express and Fastify adapters charging real simulator responses.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import {
  type BudgetTarget,
  createKeyBudgets,
  formatResetDuration,
  isInvalidOptionError,
  type KeyBudgets,
  type VllmClient,
} from '../../src/index.js';
import { trackResources } from '../helpers/fixtures.js';

const resources = trackResources();

function budgetsAt(clock: { t: number }): KeyBudgets {
  const budgets = createKeyBudgets({ now: () => clock.t });
  resources.onCleanup(() => budgets.close());
  return budgets;
}

describe('admission', () => {
  it('admits exactly the request limit per window, never counts a refusal, and starts over when it ends', async () => {
    const clock = { t: 1_000_000 };
    const budgets = budgetsAt(clock);
    const decisions = [];
    for (let i = 0; i < 7; i++) decisions.push(await budgets.admit('a', { requests: 5 }));
    expect(decisions.map((d) => d.allowed)).toEqual([true, true, true, true, true, false, false]);
    expect(decisions.map((d) => d.remainingRequests)).toEqual([4, 3, 2, 1, 0, 0, 0]);
    expect(decisions[5]).toMatchObject({ refusedBy: 'requests', retryAfterSec: 60, resetMs: 60_000 });
    clock.t += 59_999;
    expect((await budgets.admit('a', { requests: 5 })).allowed).toBe(false);
    clock.t += 1;
    expect(await budgets.admit('a', { requests: 5 })).toMatchObject({ allowed: true, remainingRequests: 4 });
    // Other keys have budgets of their own.
    expect((await budgets.admit('b', { requests: 5 })).remainingRequests).toBe(4);
  });

  it('admits while the window’s charged tokens are under the limit (actual usage, charged after)', async () => {
    const clock = { t: 0 };
    const budgets = budgetsAt(clock);
    const limits = { tokens: 1000 };
    expect(await budgets.admit('k', limits)).toMatchObject({ allowed: true, remainingTokens: 1000 });
    // A request admitted with 1 token left may use far more: the overshoot the docs bound.
    await budgets.charge('k', 999);
    expect(await budgets.admit('k', limits)).toMatchObject({ allowed: true, remainingTokens: 1 });
    await budgets.charge('k', 400);
    const refused = await budgets.admit('k', limits);
    expect(refused).toMatchObject({ allowed: false, refusedBy: 'tokens', remainingTokens: 0 });
    clock.t += 60_000;
    expect(await budgets.admit('k', limits)).toMatchObject({ allowed: true, remainingTokens: 1000 });
  });

  it('takes back a refunded request, ignores nonsense charges, and resets a key', async () => {
    const budgets = budgetsAt({ t: 0 });
    await budgets.admit('k', { requests: 2 });
    await budgets.admit('k', { requests: 2 });
    expect((await budgets.admit('k', { requests: 2 })).allowed).toBe(false);
    await budgets.refund('k');
    expect((await budgets.admit('k', { requests: 2 })).allowed).toBe(true);
    for (const bad of [-5, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) await budgets.charge('k', bad);
    expect((await budgets.admit('t', { tokens: 1 })).remainingTokens).toBe(1);
    await budgets.reset('k');
    expect((await budgets.admit('k', { requests: 2 })).remainingRequests).toBe(1);
  });

  it('drops expired windows without a timer (memory stays bounded by the keys of two windows)', async () => {
    const clock = { t: 0 };
    const budgets = createKeyBudgets({ now: () => clock.t });
    resources.onCleanup(() => budgets.close());
    for (let i = 0; i < 1000; i++) await budgets.admit(`k${i}`, { requests: 1 });
    clock.t += 200_000;
    await budgets.admit('late', { requests: 1 });
    // Every old key is gone: each is new again.
    expect((await budgets.admit('k1', { requests: 1 })).allowed).toBe(true);
  });
});

describe('headers and errors', () => {
  it('formats reset durations as OpenAI does', () => {
    expect(formatResetDuration(0)).toBe('0ms');
    expect(formatResetDuration(250)).toBe('250ms');
    expect(formatResetDuration(1000)).toBe('1s');
    expect(formatResetDuration(1500)).toBe('1.5s');
    expect(formatResetDuration(59_999)).toBe('59.999s');
    expect(formatResetDuration(360_000)).toBe('6m0s');
    expect(formatResetDuration(90_500)).toBe('1m30.5s');
    expect(formatResetDuration(3_723_000)).toBe('1h2m3s');
  });

  it('sends the x-ratelimit-* headers of the limits a key has, and an OpenAI 429 body', async () => {
    const clock = { t: 0 };
    const budgets = budgetsAt(clock);
    const both = await budgets.admit('k', { requests: 3, tokens: 500 });
    clock.t += 1500;
    expect(budgets.headers(both)).toEqual({
      'x-ratelimit-limit-requests': '3',
      'x-ratelimit-remaining-requests': '2',
      'x-ratelimit-reset-requests': '1m0s',
      'x-ratelimit-limit-tokens': '500',
      'x-ratelimit-remaining-tokens': '500',
      'x-ratelimit-reset-tokens': '1m0s',
    });
    await budgets.charge('k', 600);
    const refused = await budgets.admit('k', { requests: 3, tokens: 500 });
    expect(budgets.headers(refused)).toMatchObject({
      'x-ratelimit-remaining-tokens': '0',
      'x-ratelimit-reset-tokens': '58.5s',
      'retry-after': '59',
    });
    expect(JSON.parse(budgets.errorBody(refused))).toEqual({
      error: {
        message: 'Rate limit reached for tokens per minute: limit 500. Try again in 58.5s.',
        type: 'tokens',
        param: null,
        code: 'rate_limit_exceeded',
      },
    });
    const requestsOnly = await budgets.admit('r', { requests: 1 });
    expect(Object.keys(budgets.headers(requestsOnly))).toEqual([
      'x-ratelimit-limit-requests',
      'x-ratelimit-remaining-requests',
      'x-ratelimit-reset-requests',
    ]);
  });

  it('validates every option and limit, naming it and showing the value', async () => {
    const cases: [unknown, string][] = [
      [{ windowSec: 0 }, 'windowSec'],
      [{ store: 'disk' }, 'store'],
      [{ name: 'a b' }, 'name'],
      [{ onStoreError: 'maybe' }, 'onStoreError'],
      [{ now: 5 }, 'now'],
      [{ leases: 'yes' }, 'leases'],
      [{ limit: 5 }, 'limit'],
    ];
    for (const [options, option] of cases) {
      let error: unknown;
      try {
        createKeyBudgets(options as never);
      } catch (e) {
        error = e;
      }
      expect(isInvalidOptionError(error), option).toBe(true);
      expect((error as { option: string }).option).toBe(option);
    }
    expect(() => createKeyBudgets({ store: 'cluster' })).toThrow(/node:cluster worker/);
    const budgets = budgetsAt({ t: 0 });
    await expect(budgets.admit('k', { requests: -1 })).rejects.toThrow(
      'Expected `limits.requests` to be an integer >= 0 or null, got `-1` (number)',
    );
    await expect(budgets.admit('k', { tokens: 2.5 })).rejects.toThrow(/limits\.tokens/);
  });
});

/** A proxy route: forwards the JSON body to the simulator and pipes the answer back through `res`. */
async function proxyTo(client: VllmClient, body: unknown, res: ServerResponse): Promise<void> {
  const upstream = await client.request({
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  res.statusCode = upstream.status;
  res.setHeader('content-type', String(upstream.headers['content-type']));
  upstream.body.pipe(res);
}

async function chat(url: string, body: object) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], ...body }),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** Total tokens a simulator answer reported (the usage of its body or of its usage chunk). */
function reportedTokens(text: string): number {
  const match = /"usage":\{"prompt_tokens":(\d+),"total_tokens":(\d+)/.exec(text);
  return Number(match![2]);
}

describe('adapters charge the usage of real responses', () => {
  const target: BudgetTarget = { key: 'team-a', limits: { requests: 10, tokens: 10_000 } };

  async function listen(server: ReturnType<typeof createServer>): Promise<string> {
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    resources.onCleanup(() => new Promise((done) => server.close(done)));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function setup() {
    const sim = await resources.simulator({ outputTokens: 20 });
    const client = resources.client({ baseUrls: [sim.url] });
    const budgets = createKeyBudgets();
    resources.onCleanup(() => budgets.close());
    return { client, budgets };
  }

  it('node:http: headers on the answer, tokens charged before its last byte, streamed or not', async () => {
    const { client, budgets } = await setup();
    const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
      if (!(await budgets.handle(req, res, target))) return;
      let raw = '';
      for await (const chunk of req) raw += chunk;
      await proxyTo(client, JSON.parse(raw), res);
    });
    const url = await listen(server);
    const first = await chat(url, {});
    expect(first.status).toBe(200);
    expect(first.headers.get('x-ratelimit-remaining-requests')).toBe('9');
    expect(first.headers.get('x-ratelimit-remaining-tokens')).toBe('10000');
    const used = reportedTokens(first.text);
    const streamed = await chat(url, { stream: true, stream_options: { include_usage: true } });
    expect(streamed.headers.get('x-ratelimit-remaining-tokens')).toBe(String(10_000 - used));
    const after = await budgets.admit('team-a', target!.limits);
    expect(after.remainingTokens).toBe(10_000 - used - reportedTokens(streamed.text));
  });

  it('Express: refuses over budget with 429, the OpenAI body and Retry-After; refused requests are not charged', async () => {
    const { client, budgets } = await setup();
    const app = express();
    app.use(express.json());
    app.use(budgets.express(() => ({ key: 'tight', limits: { requests: 2 } })));
    app.post('/v1/chat/completions', (req, res) => void proxyTo(client, req.body, res));
    const url = await listen(createServer(app));
    const replies = [];
    for (let i = 0; i < 4; i++) replies.push(await chat(url, {}));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 429, 429]);
    expect(JSON.parse(replies[2]!.text).error).toMatchObject({
      type: 'requests',
      code: 'rate_limit_exceeded',
    });
    expect(Number(replies[2]!.headers.get('retry-after'))).toBeGreaterThanOrEqual(59);
    expect(replies[3]!.headers.get('x-ratelimit-remaining-requests')).toBe('0');
  });

  it('Fastify: the onRequest hook admits and the streamed answer is charged', async () => {
    const { client, budgets } = await setup();
    const app = Fastify();
    app.addHook(
      'onRequest',
      budgets.fastify(() => target),
    );
    app.post('/v1/chat/completions', async (request, reply) => {
      const upstream = await client.request({
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(request.body),
      });
      reply.code(upstream.status).header('content-type', String(upstream.headers['content-type']));
      return reply.send(upstream.body);
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    resources.onCleanup(() => app.close());
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const reply = await chat(url, { stream: true, stream_options: { include_usage: true } });
    expect(reply.status).toBe(200);
    expect(reply.headers.get('x-ratelimit-limit-tokens')).toBe('10000');
    const after = await budgets.admit('team-a', target!.limits);
    expect(after.remainingTokens).toBe(10_000 - reportedTokens(reply.text));
  });
});
