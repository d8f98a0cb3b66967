// LoRA adapters and aliases behind the gateway: a declared adapter loaded once across workers under a burst of first
// requests, an adapter loaded on a replica at run time routed to within 15 s, a replica removed mid-run moving only
// its own model's traffic, aliases end to end, and the metrics and /health by model.
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../examples/gateway/config.js';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';
import { ADMIN_KEY, admin, generations, post, postOwnConnection, trackGateways } from '../helpers/gateway.js';
import { trackGatewayProcesses } from '../helpers/gateway-process.js';

const { setup, simulator } = trackGateways();
const processes = trackGatewayProcesses();
const chat = (model: string, text: string, extra: object = {}) =>
  JSON.stringify({ model, messages: [{ role: 'user', content: text }], max_tokens: 2, ...extra });

const call = postOwnConnection;

describe('LoRA adapters behind the gateway', () => {
  it('loads a declared adapter once under 20 concurrent first requests across 2 workers, then serves it', async () => {
    const sims: VllmSimulator[] = [];
    for (let i = 0; i < 2; i++) {
      const sim = await startVllmSimulator({ model: 'base', runtimeLoraUpdating: true, loraLoadMs: 300 });
      processes.onCleanup(() => sim.close());
      sims.push(sim);
    }
    const gateway = await processes.start(sims.map((s) => s.url).join(','), {
      env: {
        WORKERS: '2',
        RATE_LIMIT_POINTS: '100000',
        LORA_ADAPTERS: JSON.stringify({ sql: { base: 'base', path: '/lora/sql' } }),
      },
    });
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => call(gateway.url, gateway.key, chat('sql', `first ${i}`))),
    );
    expect(replies.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(replies.every((r) => JSON.parse(r.body).model === 'sql')).toBe(true);
    expect(sims.map((s) => s.stats().loraLoads).reduce((a, b) => a + b, 0)).toBe(1);
    // Every request went to the replica that loaded it (the other does not serve it).
    const loaded = sims.find((s) => s.adapters.has('sql'))!;
    expect(generations(loaded)).toBe(20);
    // Served afterwards without another load; the load is counted by adapter (summed over workers).
    expect((await call(gateway.url, gateway.key, chat('sql', 'later'))).status).toBe(200);
    expect(sims.map((s) => s.stats().loraLoads).reduce((a, b) => a + b, 0)).toBe(1);
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    expect(metrics).toContain('gateway_adapter_loads_total{adapter="sql",outcome="ok"} 1');
    expect(metrics).toContain('gateway_model_requests_total{model="sql",outcome="ok"} 21');
  }, 60_000);

  it('routes to an adapter loaded on a replica at run time within 15 s (the default refresh)', async () => {
    const a = await simulator({ model: 'base' });
    const b = await simulator({ model: 'base', runtimeLoraUpdating: true });
    const { url, key } = await setup({ RATE_LIMIT_POINTS: '100000' }, a, [b.url]);
    const before = await post(url, '/v1/chat/completions', { key, body: chat('hot', 'x') });
    expect(before.status).toBe(404);
    await before.arrayBuffer();
    const loaded = await fetch(`${b.url}/v1/load_lora_adapter`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ lora_name: 'hot', lora_path: '/lora/hot' }),
    });
    expect(loaded.status).toBe(200);
    const started = performance.now();
    let status = 0;
    while (status !== 200 && performance.now() - started < 15_000) {
      await new Promise((r) => setTimeout(r, 250));
      const reply = await post(url, '/v1/chat/completions', { key, body: chat('hot', 'x') });
      status = reply.status;
      await reply.arrayBuffer();
    }
    expect(status).toBe(200);
    expect(performance.now() - started).toBeLessThan(15_000);
    for (let i = 0; i < 6; i++) {
      const reply = await post(url, '/v1/chat/completions', { key, body: chat('hot', `conversation ${i}`) });
      expect(reply.status).toBe(200);
      await reply.arrayBuffer();
    }
    // The replica without the adapter never got one of its requests.
    expect(generations(a)).toBe(0);
    expect(generations(b)).toBe(7);
  }, 30_000);

  it('moves only the removed replica’s model when one goes away mid-run', async () => {
    const a1 = await simulator({ model: 'model-a' });
    const a2 = await simulator({ model: 'model-a' });
    const b = await simulator({ model: 'model-b' });
    const { url, key } = await setup({ RATE_LIMIT_POINTS: '100000' }, a1, [a2.url, b.url]);
    const run = async (round: number) => {
      const statuses: number[] = [];
      for (let i = 0; i < 20; i++) {
        for (const model of ['model-a', 'model-b']) {
          const reply = await post(url, '/v1/chat/completions', {
            key,
            body: chat(model, `r${round} c${i}`),
          });
          statuses.push(reply.status);
          await reply.arrayBuffer();
        }
      }
      return statuses;
    };
    expect(new Set(await run(1))).toEqual(new Set([200]));
    const first = [generations(a1), generations(a2), generations(b)];
    expect(first[0]! > 0 && first[1]! > 0).toBe(true);
    expect(first[2]).toBe(20);
    await a2.close();
    // Every request still answered: model-a's go to a1 (a connection refused is retried on another replica of it).
    expect(new Set(await run(2))).toEqual(new Set([200]));
    expect(generations(a1) - first[0]!).toBe(20);
    // model-b's traffic did not move, and b got none of model-a's.
    expect(generations(b)).toBe(40);
  });

  it('serves aliases end to end: rewritten up, named in replies and streams, listed, allowed by the served name', async () => {
    const served = 'meta-llama/Llama-3.1-8B-Instruct';
    const sim = await simulator({ model: served });
    const { url, key, gateway } = await setup(
      { RATE_LIMIT_POINTS: '100000', MODEL_ALIASES: JSON.stringify({ 'gpt-4o-mini': served }), ADMIN_KEY },
      sim,
    );
    const reply = await post(url, '/v1/chat/completions', { key, body: chat('gpt-4o-mini', 'hi') });
    expect(reply.status).toBe(200);
    expect(((await reply.json()) as { model: string }).model).toBe('gpt-4o-mini');
    const stream = await post(url, '/v1/chat/completions', {
      key,
      body: chat('gpt-4o-mini', 'hi', { stream: true, max_tokens: 5 }),
    });
    const text = await stream.text();
    expect(text).toContain('"model":"gpt-4o-mini"');
    expect(text).not.toContain(served);
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    const models = (await (
      await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })
    ).json()) as { data: { id: string; root: string }[] };
    expect(models.data.map((m) => m.id)).toEqual([served, 'gpt-4o-mini']);
    // A key allowed the served model may use its alias (the same model), and sees both listed.
    const { key: limited } = await gateway.keyStore.create('limited', { models: [served] });
    const viaAlias = await post(url, '/v1/chat/completions', {
      key: limited,
      body: chat('gpt-4o-mini', 'y'),
    });
    expect(viaAlias.status).toBe(200);
    await viaAlias.arrayBuffer();
    const metrics = await (await fetch(`${url}/metrics`, admin)).text();
    expect(metrics).toContain('gateway_model_requests_total{model="gpt-4o-mini",outcome="ok"} 3');
    expect(metrics).toMatch(/gateway_model_tokens_total\{model="gpt-4o-mini",type="completion"\} \d+/);
    const health = (await (await fetch(`${url}/health`, admin)).json()) as {
      upstreams: { url: string; models: string[] }[];
    };
    expect(health.upstreams).toEqual([expect.objectContaining({ url: sim.url, models: [served] })]);
  });

  it('answers 503 model_unavailable when no replica can load a declared adapter, naming no replica', async () => {
    const sim = await simulator({ model: 'base' });
    const { url, key } = await setup(
      { RATE_LIMIT_POINTS: '100000', LORA_ADAPTERS: JSON.stringify({ sql: { base: 'base', path: '/x' } }) },
      sim,
    );
    const reply = await post(url, '/v1/chat/completions', { key, body: chat('sql', 'x') });
    expect(reply.status).toBe(503);
    expect(reply.headers.get('retry-after')).toBe('5');
    const body = (await reply.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('model_unavailable');
    expect(body.error.message).not.toContain(sim.url);
    expect(generations(sim)).toBe(0);
  });

  it('validates LORA_ADAPTERS and MODEL_ALIASES at start, naming the variable', () => {
    expect(() => loadConfig({ LORA_ADAPTERS: '{nope' })).toThrow(/LORA_ADAPTERS must be JSON/);
    expect(() => loadConfig({ LORA_ADAPTERS: '{"a":{"base":"b"}}' })).toThrow(
      /LORA_ADAPTERS\.a must be \{"base": "…", "path": "…"\}, got \{"base":"b"\}/,
    );
    expect(() => loadConfig({ MODEL_ALIASES: '["x"]' })).toThrow(/MODEL_ALIASES must be JSON/);
    expect(() => loadConfig({ MODEL_ALIASES: '{"a":"b","b":"c"}' })).toThrow(
      /MODEL_ALIASES\.a must name a served model/,
    );
    const config = loadConfig({
      LORA_ADAPTERS: '{"a":{"base":"b","path":"/p"}}',
      MODEL_ALIASES: '{"x":"y"}',
    });
    expect(config.loraAdapters).toEqual({ a: { base: 'b', path: '/p' } });
    expect(config.modelAliases).toEqual({ x: 'y' });
    // Adapter-aware placement reads the replicas' LoRA state once adapters are declared.
    expect(config.loadSignalsIntervalMs).toBe(1000);
    expect(loadConfig({}).loadSignalsIntervalMs).toBe(0);
  });
});
