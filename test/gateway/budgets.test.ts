// Per-key budgets and usage in the gateway (one worker in this process, the real simulator): limits from the key,
// OpenAI's headers and 429, usage asked for and stripped byte for byte, a cut stream charged what it streamed, an
// upstream without usage, refused requests never charged, and the Prometheus counters.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { ADMIN_KEY, admin, type GatewaySetup, post, trackGateways } from '../helpers/gateway.js';

const { setup, simulator, onCleanup } = trackGateways();
const messages = [{ role: 'user', content: 'Write a poem about the sea.' }];
const RESET = /^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$/;

async function keyWith(gateway: GatewaySetup, name: string, rpm: number | null, tpm: number | null) {
  return (await gateway.gateway.keyStore.create(name, { rpm, tpm })).key;
}

/** The usage the key store holds for `name` once the recorder has written it. */
async function storedUsage(gateway: GatewaySetup, name: string, requests: number) {
  let row: Awaited<ReturnType<GatewaySetup['gateway']['keyStore']['usage']>>[number] | undefined;
  await expect
    .poll(
      async () => {
        row = (await gateway.gateway.keyStore.usage(name))[0];
        return row?.requests;
      },
      { timeout: 5000, interval: 20 },
    )
    .toBe(requests);
  return row!;
}

/** Raw SSE text of a streamed chat request, through the gateway or straight to the simulator. */
async function streamText(url: string, body: object, key?: string): Promise<string> {
  const res = await post(url, '/v1/chat/completions', {
    key,
    body: JSON.stringify({ messages, stream: true, seed: 3, ...body }),
  });
  expect(res.status).toBe(200);
  return res.text();
}
const normalise = (text: string) =>
  text.replace(/"id":"[^"]+"/g, '"id":"X"').replace(/"created":\d+/g, '"created":0');

describe('budgets from the key', () => {
  it('admits rpm requests per minute with OpenAI headers, then answers 429 with the OpenAI body and Retry-After', async () => {
    const gateway = await setup({ USAGE_FLUSH_MS: '10' });
    const key = await keyWith(gateway, 'rpm3', 3, null);
    const replies = [];
    for (let i = 0; i < 5; i++) replies.push(await post(gateway.url, '/v1/chat/completions', { key }));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 429, 429]);
    expect(replies.map((r) => r.headers.get('x-ratelimit-remaining-requests'))).toEqual([
      '2',
      '1',
      '0',
      '0',
      '0',
    ]);
    expect(replies[0]!.headers.get('x-ratelimit-limit-requests')).toBe('3');
    expect(replies[0]!.headers.get('x-ratelimit-reset-requests')).toMatch(RESET);
    expect(replies[0]!.headers.get('x-ratelimit-limit-tokens')).toBeNull();
    const refused = replies[3]!;
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(59);
    expect(await refused.json()).toEqual({
      error: {
        message: expect.stringMatching(
          /^Rate limit reached for requests per minute: limit 3\. Try again in \S+s\.$/,
        ),
        type: 'requests',
        param: null,
        code: 'rate_limit_exceeded',
      },
    });
    for (const r of replies.slice(0, 3)) await r.text();
    // Refused requests are not charged: three requests recorded, not five.
    expect((await storedUsage(gateway, 'rpm3', 3)).requests).toBe(3);
    // A key without limits gets no budget headers.
    const free = await post(gateway.url, '/v1/chat/completions', { key: gateway.key });
    expect(free.headers.get('x-ratelimit-limit-requests')).toBeNull();
    await free.text();
  });

  it('admits while the minute’s tokens are under tpm, charges actual usage before the last byte, then refuses by tokens', async () => {
    const sim = await simulator({ outputTokens: 30 });
    const gateway = await setup({ USAGE_FLUSH_MS: '10' }, sim);
    const key = await keyWith(gateway, 'tpm', null, 60);
    const body = JSON.stringify({ messages });
    const first = await post(gateway.url, '/v1/chat/completions', { key, body });
    // No max_tokens: the request reserves what the window has left until its usage is known.
    expect(first.headers.get('x-ratelimit-remaining-tokens')).toBe('0');
    const used = ((await first.json()) as { usage: { total_tokens: number } }).usage.total_tokens;
    // Under the limit once, over it twice.
    expect(used).toBeGreaterThan(30);
    expect(used).toBeLessThan(60);
    // The client's very next request already sees the charge: admitted (the first settled to its usage), then the
    // window is spent.
    const second = await post(gateway.url, '/v1/chat/completions', { key, body });
    expect(second.status).toBe(200);
    expect(second.headers.get('x-ratelimit-remaining-tokens')).toBe('0');
    expect(second.headers.get('x-ratelimit-reset-tokens')).toMatch(RESET);
    await second.text();
    // 2 × used ≥ 60: spent.
    const third = await post(gateway.url, '/v1/chat/completions', { key, body });
    expect(third.status).toBe(429);
    expect(third.headers.get('x-ratelimit-remaining-tokens')).toBe('0');
    expect(((await third.json()) as { error: { type: string } }).error.type).toBe('tokens');
    const usage = await storedUsage(gateway, 'tpm', 2);
    expect(usage.promptTokens + usage.completionTokens).toBe(2 * used);
  });

  it('takes back the request of a key whose request was shed by a full queue (it never reached the model)', async () => {
    const sim = await simulator({ outputTokens: 20, itlMs: 20 });
    const gateway = await setup({ LIMIT_CONCURRENCY: '1', MAX_QUEUE: '0', USAGE_FLUSH_MS: '10' }, sim);
    const key = await keyWith(gateway, 'shed', 5, null);
    const first = post(gateway.url, '/v1/chat/completions', { key, body: JSON.stringify({ messages }) });
    // The second arrives while the first holds the only slot (at the model server), with no queue to wait in.
    await expect.poll(() => sim.stats().running).toBe(1);
    const [a, b] = await Promise.all([first, post(gateway.url, '/v1/chat/completions', { key })]);
    expect([a.status, b.status]).toEqual([200, 503]);
    await a.text();
    await b.text();
    const next = await post(gateway.url, '/v1/chat/completions', { key });
    // Two admitted before this one, one refunded: 5 - 2 = 3 left after it.
    expect(next.headers.get('x-ratelimit-remaining-requests')).toBe('3');
    await next.text();
  });
});

describe('usage from streams', () => {
  it('asks vLLM for usage and strips it: each client gets exactly the stream it asked for', async () => {
    const sim = await simulator({ outputTokens: 12 });
    const gateway = await setup({ USAGE_FLUSH_MS: '10' }, sim);
    for (const streamOptions of [
      undefined,
      { include_usage: true },
      { include_usage: true, continuous_usage_stats: true },
      { include_usage: false },
    ]) {
      const body = streamOptions === undefined ? {} : { stream_options: streamOptions };
      const direct = await streamText(sim.url, body);
      const through = await streamText(gateway.url, body, gateway.key);
      expect(normalise(through)).toBe(normalise(direct));
    }
    // Charged from the usage the gateway asked for, whatever the client saw.
    const usage = await storedUsage(gateway, 'alice', 4);
    expect(usage.completionTokens).toBe(4 * 12);
    expect(usage.promptTokens).toBeGreaterThan(0);
  });

  it('charges a stream the client abandons halfway the prompt plus the tokens generated until then (±1)', async () => {
    // 25 ms a token: the client's leaving reaches the simulator well within one token, even on a busy machine.
    const sim = await simulator({ outputTokens: 200, itlMs: 25 });
    const gateway = await setup({ USAGE_FLUSH_MS: '10' }, sim);
    const res = await post(gateway.url, '/v1/chat/completions', {
      key: gateway.key,
      body: JSON.stringify({ messages, stream: true }),
    });
    const reader = res.body!.getReader();
    let text = '';
    while ((text.match(/"content":"[^"]/g) ?? []).length < 100)
      text += new TextDecoder().decode((await reader.read()).value);
    await reader.cancel();
    // The client's leaving reaches the simulator, which stops generating.
    await expect.poll(() => sim.stats().aborted, { timeout: 5000 }).toBe(1);
    const generated = sim.stats().generationTokens;
    expect(generated).toBeGreaterThanOrEqual(100);
    expect(generated).toBeLessThan(200);
    const usage = await storedUsage(gateway, 'alice', 1);
    expect(Math.abs(usage.completionTokens - generated)).toBeLessThanOrEqual(1);
    expect(usage.promptTokens).toBe(sim.stats().promptTokens);
    // Never 0, never max_tokens: and the client saw no usage.
    expect(text).not.toContain('usage');
  });

  it('charges an upstream that reports no usage from the chunks it streamed, and counts it; malformed usage never crashes', async () => {
    let mode: 'none' | 'malformed' = 'none';
    const upstream = createServer((req, res) => {
      req.resume();
      if (req.url === '/health') return res.end('ok');
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const chunk = (content: string, extra = '') =>
        `data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"${content}"},"finish_reason":null}]${extra}}\n\n`;
      const usage = mode === 'malformed' ? ',"usage":{"prompt_tokens":"many","completion_tokens":{}}' : '';
      res.end(
        `${chunk('')}${['a', 'b', 'c', 'd', 'e'].map((c) => chunk(c, usage)).join('')}data: [DONE]\n\n`,
      );
    });
    await new Promise<void>((done) => upstream.listen(0, '127.0.0.1', done));
    onCleanup(() => new Promise((done) => upstream.close(done)));
    const gateway = await setup(
      { USAGE_FLUSH_MS: '10' },
      {
        url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      },
    );
    const body = JSON.stringify({ messages, stream: true });
    const first = await post(gateway.url, '/v1/chat/completions', { key: gateway.key, body });
    expect(first.status).toBe(200);
    expect(await first.text()).toContain('data: [DONE]');
    mode = 'malformed';
    const second = await post(gateway.url, '/v1/chat/completions', { key: gateway.key, body });
    const text = await second.text();
    expect(second.status).toBe(200);
    // The unreadable usage is stripped like any other the client did not ask for.
    expect(text).not.toContain('usage');
    const usage = await storedUsage(gateway, 'alice', 2);
    expect(usage.completionTokens).toBe(10);
    // The prompt is estimated: 4 tokens of template + ceil(27 characters / 4).
    expect(usage.promptTokens).toBe(2 * (4 + Math.ceil(messages[0]!.content.length / 4)));
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    expect(metrics).toContain('gateway_usage_missing_total{reason="absent"} 1');
    expect(metrics).toContain('gateway_usage_missing_total{reason="malformed"} 1');
  });

  it('counts tokens in Prometheus by key name and type, never by key, and only behind the admin key', async () => {
    const sim = await simulator({ outputTokens: 7 });
    const gateway = await setup({ ADMIN_KEY, METRICS_PER_KEY: 'true' }, sim);
    const res = await post(gateway.url, '/v1/chat/completions', {
      key: gateway.key,
      body: JSON.stringify({ messages }),
    });
    const { usage } = (await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
    expect((await fetch(`${gateway.url}/metrics`)).status).toBe(401);
    const metrics = await (await fetch(`${gateway.url}/metrics`, admin)).text();
    expect(metrics).toContain(`gateway_key_tokens_total{key="alice",type="prompt"} ${usage.prompt_tokens}`);
    expect(metrics).toContain(
      `gateway_key_tokens_total{key="alice",type="completion"} ${usage.completion_tokens}`,
    );
    expect(metrics).toContain(`gateway_tokens_total{type="prompt"} ${usage.prompt_tokens}`);
    expect(metrics).not.toContain(gateway.key);
    const limited = await keyWith(gateway, 'tight', null, 1);
    // Its worst case (prompt + max_tokens) is more than the whole tpm: refused at once, whatever the window holds.
    const refused = await post(gateway.url, '/v1/chat/completions', { key: limited });
    expect(refused.status).toBe(429);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(
      /^Request too large for tokens per minute: limit 1, requested \d+/,
    );
    expect((await post(gateway.url, '/v1/chat/completions', { key: limited })).status).toBe(429);
    expect(await (await fetch(`${gateway.url}/metrics`, admin)).text()).toContain(
      'gateway_budget_refusals_total{type="tokens"} 2',
    );
  });
});
