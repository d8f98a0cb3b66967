// Budgets as an attacker would test them, against the gateway as `npm start` runs it: requests cut before their
// answer, completions with lists of prompts, `n` and `max_tokens` far beyond the key's tpm. What the model server
// processed is measured by the simulator itself and compared with what the key was charged.
import { request } from 'node:http';
import { describe, expect, it } from 'vitest';
import { startVllmSimulator } from '../../src/testing/index.js';
import { generations } from '../helpers/gateway.js';
import { type GatewayProcess, trackGatewayProcesses } from '../helpers/gateway-process.js';

const { start, onCleanup } = trackGatewayProcesses();
const env = { WORKERS: '2', RATE_LIMIT_POINTS: '100000', USAGE_FLUSH_MS: '50' };

/** POSTs JSON; resolves with status and text, or leaves after `leaveAfterMs` (resolving with what it had). */
function post(
  url: string,
  path: string,
  key: string,
  body: object,
  leaveAfterMs?: number,
): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  return new Promise((done, fail) => {
    const req = request(`${url}${path}`, {
      method: 'POST',
      agent: false,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    });
    let status = 0;
    let text = '';
    let headers: Record<string, unknown> = {};
    req.on('response', (res) => {
      status = res.statusCode!;
      headers = res.headers;
      res.on('data', (c) => (text += c));
      res.on('end', () => done({ status, text, headers }));
      res.on('error', () => done({ status, text, headers }));
    });
    req.on('error', (error) => (leaveAfterMs === undefined ? fail(error) : done({ status, text, headers })));
    req.end(JSON.stringify(body));
    if (leaveAfterMs !== undefined) setTimeout(() => req.destroy(), leaveAfterMs);
  });
}

/** The key's lifetime usage, from `keys usage --json`, once `check` holds (usage is written in batches). */
async function usageOf(gateway: GatewayProcess, check: (tokens: number) => boolean) {
  for (let i = 0; ; i++) {
    const rows = JSON.parse(gateway.keys('usage', 'test', '--json').stdout) as {
      requests: number;
      promptTokens: number;
      completionTokens: number;
    }[];
    const row = rows[0]!;
    if (check(row.promptTokens + row.completionTokens) || i === 50) return row;
    await new Promise((r) => setTimeout(r, 100));
  }
}

const messages = [{ role: 'user', content: 'Write a long story about the sea.' }];

describe('budgets against hostile requests', () => {
  it('refuses a request whose worst case exceeds the tpm, and reserves max_tokens × choices at admission', async () => {
    const sim = await startVllmSimulator({ model: 'm', itlMs: 10, outputTokens: 40 });
    onCleanup(() => sim.close());
    const gateway = await start(sim.url, { env, keyArgs: ['--tpm', '1000'] });
    const huge = await post(gateway.url, '/v1/chat/completions', gateway.key, {
      messages,
      n: 64,
      max_tokens: 4000,
    });
    expect(huge.status).toBe(429);
    expect(JSON.parse(huge.text).error).toMatchObject({ type: 'tokens', code: 'rate_limit_exceeded' });
    expect(JSON.parse(huge.text).error.message).toMatch(
      /^Request too large for tokens per minute: limit 1000, requested 25\d{4} /,
    );
    expect(generations(sim)).toBe(0);
    // A stream reserving its prompt + 900 leaves no room for another + 100 while it runs.
    const long = post(
      gateway.url,
      '/v1/chat/completions',
      gateway.key,
      { messages, max_tokens: 900, stream: true },
      400,
    );
    // Admitted (its reservation made) and generating before the next one is asked for.
    await expect.poll(() => sim.stats().running).toBe(1);
    const meanwhile = await post(gateway.url, '/v1/chat/completions', gateway.key, {
      messages,
      max_tokens: 100,
    });
    expect(meanwhile.status).toBe(429);
    expect(JSON.parse(meanwhile.text).error.message).toMatch(/^Rate limit reached for tokens per minute/);
    await long;
    // Cut after ~40 tokens, it is settled to what it used: the reservation is released, the next one admitted (a
    // refused request is not counted: asking again until the settlement has landed costs nothing).
    await expect
      .poll(
        async () =>
          (await post(gateway.url, '/v1/chat/completions', gateway.key, { messages, max_tokens: 100 }))
            .status,
      )
      .toBe(200);
    const processed = sim.stats().promptTokens + sim.stats().generationTokens;
    expect(processed).toBeLessThanOrEqual(1000);
  }, 60_000);

  it('charges a non-streamed request cut before its answer for its prompt and the tokens generated meanwhile', async () => {
    const sim = await startVllmSimulator({ model: 'm', itlMs: 5 });
    onCleanup(() => sim.close());
    const gateway = await start(sim.url, { env: { ...env, WORKERS: '1' }, keyArgs: ['--tpm', '100000'] });
    // Two complete answers teach the gateway the decode rate.
    for (let i = 0; i < 2; i++) {
      expect(
        (await post(gateway.url, '/v1/chat/completions', gateway.key, { messages, max_tokens: 150 })).status,
      ).toBe(200);
    }
    const before = await usageOf(gateway, (t) => t > 0);
    const generatedBefore = sim.stats().generationTokens;
    const promptBefore = sim.stats().promptTokens;
    // Three requests for 2000 tokens each, cut after 600 ms: vLLM stops generating when the gateway aborts.
    for (let i = 0; i < 3; i++) {
      await post(gateway.url, '/v1/chat/completions', gateway.key, { messages, max_tokens: 2000 }, 600);
    }
    // The model server has stopped generating for them.
    await expect.poll(() => sim.stats().running + sim.stats().waiting).toBe(0);
    const generated = sim.stats().generationTokens - generatedBefore;
    const prompts = sim.stats().promptTokens - promptBefore;
    expect(generated).toBeGreaterThan(150);
    const after = await usageOf(gateway, (t) => t > before.promptTokens + before.completionTokens + 150);
    const charged = after.completionTokens - before.completionTokens;
    // Estimated from the elapsed time at the measured rate: within a factor of 2 of what was generated (it was 0).
    expect(charged).toBeGreaterThan(generated / 2);
    expect(charged).toBeLessThan(generated * 2);
    expect(after.promptTokens - before.promptTokens).toBeGreaterThan(prompts / 2);
  }, 60_000);

  it('charges a streamed completion with 50 prompts, cut mid-way, for every choice', async () => {
    const sim = await startVllmSimulator({ model: 'm', itlMs: 10 });
    onCleanup(() => sim.close());
    const gateway = await start(sim.url, { env: { ...env, WORKERS: '1' } });
    const prompt = Array.from({ length: 50 }, (_, i) => `Prompt number ${i} about the sea and its tides`);
    await post(gateway.url, '/v1/completions', gateway.key, { prompt, max_tokens: 200, stream: true }, 500);
    await expect.poll(() => sim.stats().running + sim.stats().waiting).toBe(0);
    const processed = sim.stats().promptTokens + sim.stats().generationTokens;
    expect(sim.stats().generationTokens).toBeGreaterThan(50);
    const usage = await usageOf(gateway, (t) => t >= processed * 0.9);
    const charged = usage.promptTokens + usage.completionTokens;
    // It was charged as one choice: 207 of 10,252.
    expect(charged).toBeGreaterThanOrEqual(processed * 0.9);
    expect(charged).toBeLessThanOrEqual(processed * 1.1);
  }, 60_000);
});
