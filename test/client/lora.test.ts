// LoRA adapters and aliases: the simulator's runtime adapter routes, max_loras and lora_requests_info; the client's
// on-demand loads (one per adapter, another replica when one fails), adapter-aware placement, and aliases rewritten
// up and renamed down on every path (typed, streamed, raw, fetch).
import { describe, expect, it } from 'vitest';
import { ModelRenamer } from '../../src/client/model-alias.js';
import { parseLoraInfo } from '../../src/client/replica-pool.js';
import { isAdapterLoadError, isModelNotFoundError } from '../../src/index.js';
import { parseSimulatorArgs } from '../../src/testing/cli-args.js';
import { Engine, type EngineJob } from '../../src/testing/engine.js';
import { generations, trackResources } from '../helpers/fixtures.js';

const use = trackResources();
const ask = (model: string, text: string) => ({
  model,
  messages: [{ role: 'user' as const, content: text }],
  max_tokens: 2,
});
const post = (url: string, path: string, body: unknown) =>
  fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

describe('simulator: LoRA at run time', () => {
  it('refuses the adapter routes unless runtime updating is on, as vLLM does', async () => {
    const sim = await use.simulator({ model: 'base' });
    const res = await post(sim.url, '/v1/load_lora_adapter', { lora_name: 'a', lora_path: '/a' });
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ detail: 'Not Found' });
  });

  it('loads after its load time, lists the adapter with parent and root, serves it in its name, and unloads', async () => {
    const sim = await use.simulator({ model: 'base', runtimeLoraUpdating: true, loraLoadMs: 30 });
    expect((await post(sim.url, '/v1/load_lora_adapter', { lora_name: 'a' })).status).toBe(400);
    const started = performance.now();
    const loaded = await post(sim.url, '/v1/load_lora_adapter', { lora_name: 'sql', lora_path: '/lora/sql' });
    expect(loaded.status).toBe(200);
    expect(await loaded.text()).toBe("Success: LoRA adapter 'sql' added successfully.");
    expect(performance.now() - started).toBeGreaterThanOrEqual(25);
    const again = await post(sim.url, '/v1/load_lora_adapter', { lora_name: 'sql', lora_path: '/lora/sql' });
    expect(again.status).toBe(400);
    expect(((await again.json()) as { error: { message: string } }).error.message).toBe(
      "The lora adapter 'sql' has already been loaded.",
    );
    const models = (await (await fetch(`${sim.url}/v1/models`)).json()) as {
      data: { id: string; parent: string | null; root: string }[];
    };
    expect(models.data.map((m) => [m.id, m.parent, m.root])).toEqual([
      ['base', null, 'base'],
      ['sql', 'base', '/lora/sql'],
    ]);
    const reply = (await (await post(sim.url, '/v1/chat/completions', ask('sql', 'hi'))).json()) as {
      model: string;
    };
    expect(reply.model).toBe('sql');
    expect(sim.stats().loraLoads).toBe(1);
    expect((await post(sim.url, '/v1/unload_lora_adapter', { lora_name: 'sql' })).status).toBe(200);
    expect((await post(sim.url, '/v1/unload_lora_adapter', { lora_name: 'sql' })).status).toBe(404);
    expect((await post(sim.url, '/v1/chat/completions', ask('sql', 'hi'))).status).toBe(404);
  });

  it('swaps adapters beyond max_loras and reports them in vllm:lora_requests_info (newest series)', async () => {
    const sim = await use.simulator({ model: 'base', loraAdapters: ['a', 'b', 'c'], maxLoras: 2, itlMs: 5 });
    for (const name of ['a', 'b', 'a', 'b']) await post(sim.url, '/v1/chat/completions', ask(name, 'x'));
    expect(sim.stats().loraSwaps).toBe(2);
    await post(sim.url, '/v1/chat/completions', ask('c', 'x'));
    await post(sim.url, '/v1/chat/completions', ask('a', 'x'));
    // c evicted a (least recently used), so a swaps in again.
    expect(sim.stats().loraSwaps).toBe(4);
    // A stream holds adapter b running while its gauge is read.
    const streaming = post(sim.url, '/v1/chat/completions', {
      ...ask('b', 'long'),
      max_tokens: 40,
      stream: true,
    });
    const res = await streaming;
    const reader = res.body!.getReader();
    await reader.read();
    const text = await (await fetch(`${sim.url}/metrics`)).text();
    const lines = text.split('\n');
    expect(lines.filter((l) => l.startsWith('vllm:lora_requests_info{')).length).toBeGreaterThan(1);
    expect(parseLoraInfo(lines)).toEqual({ running: new Set(['b']), waiting: new Set(), maxLora: 2 });
    await reader.cancel();
  });

  it('runs at most max_loras adapters at once: another waits, and requests behind it run first', () => {
    const engine = new Engine(8, 100, 2);
    const started: string[] = [];
    const job = (name: string, adapter?: string): EngineJob => ({
      state: 'new',
      enqueuedAt: 0,
      adapter,
      start: () => started.push(name),
    });
    const [a1, b1, c1, a2] = [job('a1', 'a'), job('b1', 'b'), job('c1', 'c'), job('a2', 'a')];
    for (const j of [a1, b1, c1, a2, job('base')]) engine.submit(j, 0);
    // c waits for an adapter slot; the second a and the base request pass it.
    expect(started).toEqual(['a1', 'b1', 'a2', 'base']);
    expect([...engine.adapterWaiting.keys()]).toEqual(['c']);
    // a still runs (a2): c keeps waiting.
    engine.finish(a1);
    expect(started).toEqual(['a1', 'b1', 'a2', 'base']);
    // No request of a runs any more: its slot goes to c.
    engine.finish(a2);
    expect(started).toEqual(['a1', 'b1', 'a2', 'base', 'c1']);
    expect([...engine.adapterRunning.keys()].sort()).toEqual(['b', 'c']);
    expect(c1.state).toBe('running');
  });

  it('serves only embeddings with task embed, and only generations with task generate', async () => {
    const embed = await use.simulator({ model: 'embedder', task: 'embed' });
    const chat = await post(embed.url, '/v1/chat/completions', ask('embedder', 'x'));
    expect(chat.status).toBe(400);
    expect(((await chat.json()) as { error: { message: string } }).error.message).toBe(
      'The model does not support Chat Completions API',
    );
    expect((await post(embed.url, '/v1/embeddings', { model: 'embedder', input: 'x' })).status).toBe(200);
    const generate = await use.simulator({ model: 'g', task: 'generate' });
    expect((await post(generate.url, '/v1/embeddings', { model: 'g', input: 'x' })).status).toBe(400);
  });

  it('takes every LoRA flag on the command line', () => {
    expect(
      parseSimulatorArgs([
        '--runtime-lora-updating',
        '--lora-load-ms',
        '200',
        '--max-loras',
        '2',
        '--lora-swap-ms',
        '15',
        '--task',
        'embed',
      ]),
    ).toEqual({
      port: 8000,
      runtimeLoraUpdating: true,
      loraLoadMs: 200,
      maxLoras: 2,
      loraSwapMs: 15,
      task: 'embed',
    });
  });
});

describe('client: adapters loaded on demand', () => {
  it('loads a declared adapter once under 20 concurrent first requests, on another replica when one fails', async () => {
    // Replica 1 cannot load adapters at run time (vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING): its load fails.
    const refusing = await use.simulator({ model: 'base' });
    const loading = await use.simulator({ model: 'base', runtimeLoraUpdating: true, loraLoadMs: 100 });
    const client = use.client({
      baseUrls: [refusing.url, loading.url],
      loraAdapters: { sql: { base: 'base', path: '/lora/sql' } },
      // The refusing replica first: it has no requests, the other is given some load.
      routing: 'least-outstanding',
    });
    await client.models();
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => client.chatCompletion(ask('sql', `first ${i}`))),
    );
    expect(replies.every((r) => r.model === 'sql')).toBe(true);
    expect(loading.stats().loraLoads).toBe(1);
    expect(generations(loading)).toBe(20);
    expect(generations(refusing)).toBe(0);
    // The refusing replica was tried first (free of load) and failed; the second load succeeded.
    expect(client.stats().adapterLoads).toEqual({ sql: { sent: 2, failed: 1 } });
    // Loaded: no more loads.
    await client.chatCompletion(ask('sql', 'later'));
    expect(loading.stats().loraLoads).toBe(1);
    // models() lists it with its parent now, and a declared adapter not loaded yet with no replica.
    const listed = await client.models();
    expect(listed.data.find((m) => m.id === 'sql')).toMatchObject({
      parent: 'base',
      replicas: [loading.url],
    });
  });

  it('fails with AdapterLoadError when no replica can load it, without sending the request', async () => {
    const sim = await use.simulator({ model: 'base' });
    const client = use.client({ baseUrls: [sim.url], loraAdapters: { sql: { base: 'base', path: '/x' } } });
    const error = await client.chatCompletion(ask('sql', 'x')).catch((e: unknown) => e);
    expect(isAdapterLoadError(error)).toBe(true);
    expect((error as Error).message).toContain(sim.url);
    expect(generations(sim)).toBe(0);
  });

  it('waits for a load no longer than the call’s timeout', async () => {
    const sim = await use.simulator({ model: 'base', runtimeLoraUpdating: true, loraLoadMs: 2000 });
    const client = use.client({ baseUrls: [sim.url], loraAdapters: { sql: { base: 'base', path: '/x' } } });
    const error = await client.chatCompletion(ask('sql', 'x'), { timeoutMs: 100 }).catch((e: unknown) => e);
    expect((error as { code?: string }).code).toBe('ERR_VK_TOTAL_TIMEOUT');
  });
});

describe('client: adapter-aware placement', () => {
  it('sends an adapter to the replica where it runs (vllm:lora_requests_info), not by prompt alone', async () => {
    const options = { model: 'base', loraAdapters: ['x', 'y'], maxLoras: 1, itlMs: 20 };
    const a = await use.simulator(options);
    const b = await use.simulator(options);
    const client = use.client({ baseUrls: [a.url, b.url], loadSignalsIntervalMs: 20 });
    // x runs on a, y on b (held by long streams).
    const holdX = client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      replica: a.url,
      body: JSON.stringify({ ...ask('x', 'hold'), max_tokens: 100, stream: true }),
      headers: { 'content-type': 'application/json' },
    });
    const holdY = client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      replica: b.url,
      body: JSON.stringify({ ...ask('y', 'hold'), max_tokens: 100, stream: true }),
      headers: { 'content-type': 'application/json' },
    });
    const held = await Promise.all([holdX, holdY]);
    await expect
      .poll(() => client.stats().upstreams.map((u) => u.loraRunning?.join()), { timeout: 5000 })
      .toEqual(['x', 'y']);
    const before = [generations(a), generations(b)];
    for (let i = 0; i < 8; i++) await client.chatCompletion({ ...ask('x', `prompt ${i}`), max_tokens: 1 });
    for (let i = 0; i < 8; i++) await client.chatCompletion({ ...ask('y', `prompt ${i}`), max_tokens: 1 });
    expect([generations(a) - before[0]!, generations(b) - before[1]!]).toEqual([8, 8]);
    expect(a.stats().loraSwaps + b.stats().loraSwaps).toBe(2);
    for (const response of held) response.body.destroy();
  });

  it('parses the newest lora_requests_info series', () => {
    const lines = [
      'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters="c"} 1700000005',
      'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1700000009',
      'vllm:lora_requests_info{max_lora="2",running_lora_adapters="d",waiting_lora_adapters=""} 1700000001',
    ];
    expect(parseLoraInfo(lines)).toEqual({ running: new Set(), waiting: new Set(), maxLora: 2 });
    expect(parseLoraInfo(lines.slice(0, 1))).toEqual({
      running: new Set(['a', 'b']),
      waiting: new Set(['c']),
      maxLora: 2,
    });
    expect(parseLoraInfo(['vllm:num_requests_waiting 0'])).toBeUndefined();
  });
});

describe('client: aliases', () => {
  const served = 'meta-llama/Llama-3.1-8B-Instruct';

  it('rewrites the model up and names the alias in replies, chunks, raw bodies and fetch responses', async () => {
    const sim = await use.simulator({ model: served });
    const client = use.client({ baseUrls: [sim.url], aliases: { 'gpt-4o-mini': served } });
    // The simulator serves only the served name: a request that went up unrewritten would get its 404.
    const reply = await client.chatCompletion(ask('gpt-4o-mini', 'hi'));
    expect(reply.model).toBe('gpt-4o-mini');
    const chunks: string[] = [];
    for await (const chunk of client.streamChatCompletion({
      ...ask('gpt-4o-mini', 'hi'),
      stream_options: { include_usage: true },
    }))
      chunks.push(chunk.model);
    expect(chunks.length).toBeGreaterThan(2);
    expect(new Set(chunks)).toEqual(new Set(['gpt-4o-mini']));
    const body = ask('gpt-4o-mini', 'raw');
    const raw = await client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      routingBody: body,
    });
    expect(raw.headers['content-length']).toBeUndefined();
    let text = '';
    for await (const chunk of raw.body) text += chunk.toString();
    expect(JSON.parse(text).model).toBe('gpt-4o-mini');
    const fetched = await client.fetch(`${sim.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...body, stream: true }),
    });
    const sse = await fetched.text();
    expect(sse).toContain('"model":"gpt-4o-mini"');
    expect(sse).not.toContain(served);
    expect(generations(sim)).toBe(4);
  });

  it('routes fetch by model and answers an unknown one with OpenAI’s 404, sending nothing', async () => {
    const a = await use.simulator({ model: 'model-a' });
    const b = await use.simulator({ model: 'model-b' });
    const client = use.client({ baseUrls: [a.url, b.url] });
    for (let i = 0; i < 6; i++) {
      const res = await client.fetch(`${a.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(ask('model-b', `q${i}`)),
      });
      expect(res.status).toBe(200);
      await res.text();
    }
    expect([generations(a), generations(b)]).toEqual([0, 6]);
    const received = () => a.stats().requestsReceived + b.stats().requestsReceived;
    const before = received();
    const missing = await client.fetch(`${a.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(ask('model-c', 'x')),
    });
    expect(missing.status).toBe(404);
    expect(await missing.json()).toEqual({
      error: {
        message: 'The model `model-c` does not exist or you do not have access to it.',
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
      },
    });
    expect(received()).toBe(before);
    expect(
      isModelNotFoundError(await client.chatCompletion(ask('model-c', 'x')).catch((e: unknown) => e)),
    ).toBe(true);
  });

  it('renames across chunk boundaries without holding back an event’s end', () => {
    const renamer = new ModelRenamer({ alias: 'short', served: 'a/long-name' });
    const input = 'data: {"id":1,"model":"a/long-name","x":1}\n\ndata: {"model":"a/long-name"}\n\n';
    let out = '';
    for (let cut = 0; cut < input.length; cut += 7)
      out += renamer.push(Buffer.from(input.slice(cut, cut + 7))).toString();
    out += renamer.flush().toString();
    expect(out).toBe(input.replaceAll('"model":"a/long-name"', '"model":"short"'));
    // A chunk that ends an event comes out whole at once.
    expect(renamer.push(Buffer.from('data: {}\n\n')).toString()).toBe('data: {}\n\n');
  });

  it('validates the new options', () => {
    expect(() => use.client({ baseUrls: ['http://127.0.0.1:1'], aliases: { a: 'b', b: 'c' } })).toThrow(
      /aliases\.a.*not another alias/,
    );
    expect(() =>
      use.client({ baseUrls: ['http://127.0.0.1:1'], loraAdapters: { x: { base: 'b' } as never } }),
    ).toThrow(/loraAdapters\.x/);
    expect(() => use.client({ baseUrls: ['http://127.0.0.1:1'], singleFlight: 3 as never })).toThrow(
      /singleFlight/,
    );
  });
});
