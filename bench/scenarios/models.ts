// Scenario: several models behind one gateway. Two base models with two replicas each, an embedding-only replica, and
// six LoRA adapters (three per base) on replicas that hold at most two adapters in a batch (max_loras 2; swapping one
// in costs 40 ms of first-token time, and a third adapter waits for a slot). Clients send a mix — adapters, base
// models, embeddings — through the gateway (2 workers), in three set-ups:
// - static, adapter-unaware: every adapter preloaded on both replicas of its base, no LoRA signals (routing by prompt);
// - static, adapter-aware: the same, with the replicas' vllm:lora_requests_info read every 100 ms;
// - on demand: no adapter loaded at start; LORA_ADAPTERS declares them and the gateway loads each on first use.
// Reported: misrouted requests (a replica answering 404/400 for a model it does not serve; must be 0), adapter TTFT
// aware vs unaware, and adapter loads per minute.
// Run: npx tsx bench/scenarios/models.ts [--quick]
import { resolve } from 'node:path';
import { Pool } from 'undici';
import { type ChildServer, startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const DURATION_MS = quick ? 3000 : 20_000;
const CLIENTS = 24;
const ADAPTERS: Record<string, string> = {
  'a-sql': 'model-a',
  'a-legal': 'model-a',
  'a-code': 'model-a',
  'b-sql': 'model-b',
  'b-legal': 'model-b',
  'b-code': 'model-b',
};
const replicaOptions = {
  task: 'generate',
  ttftMs: 5,
  itlMs: 2,
  maxNumSeqs: 32,
  maxLoras: 2,
  loraSwapMs: 40,
  runtimeLoraUpdating: true,
  loraLoadMs: 500,
  keepAliveTimeoutMs: 60_000,
};

/** A deterministic stream of draws (the same mix in every set-up). */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

interface Sample {
  kind: 'adapter' | 'base' | 'embedding';
  status: number;
  ttftMs: number;
}

async function drive(url: string, key: string): Promise<Sample[]> {
  const pool = new Pool(url, { connections: CLIENTS });
  const samples: Sample[] = [];
  const deadline = performance.now() + DURATION_MS;
  const adapters = Object.keys(ADAPTERS);
  const client = async (id: number) => {
    const draw = random(id + 1);
    for (let n = 0; performance.now() < deadline; n++) {
      const roll = draw();
      const kind: Sample['kind'] = roll < 0.6 ? 'adapter' : roll < 0.85 ? 'base' : 'embedding';
      const model =
        kind === 'adapter'
          ? adapters[Math.floor(draw() * adapters.length)]!
          : kind === 'base'
            ? draw() < 0.5
              ? 'model-a'
              : 'model-b'
            : 'embedder';
      const text = `client ${id} request ${n}: summarise item ${n * 31 + id}`;
      const embedding = kind === 'embedding';
      const started = performance.now();
      const response = await pool.request({
        path: embedding ? '/v1/embeddings' : '/v1/chat/completions',
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify(
          embedding
            ? { model, input: text }
            : { model, messages: [{ role: 'user', content: text }], max_tokens: 8, stream: true },
        ),
      });
      let ttftMs = Number.NaN;
      for await (const _chunk of response.body) {
        if (Number.isNaN(ttftMs)) ttftMs = performance.now() - started;
      }
      samples.push({ kind, status: response.statusCode, ttftMs });
    }
  };
  await Promise.all(Array.from({ length: CLIENTS }, (_, id) => client(id)));
  await pool.close();
  return samples;
}

interface Result {
  setup: string;
  requests: number;
  errors: number;
  misrouted: number;
  adapterTtftP50Ms: number;
  adapterTtftP99Ms: number;
  baseTtftP50Ms: number;
  adapterLoads: number;
  adapterLoadsPerMinute: number;
  swaps: number;
}

async function measure(setup: 'unaware' | 'aware' | 'on demand'): Promise<Result> {
  const preload = setup !== 'on demand';
  const adaptersOf = (base: string) =>
    preload ? Object.keys(ADAPTERS).filter((name) => ADAPTERS[name] === base) : [];
  const specs = [
    { model: 'model-a', ...replicaOptions, loraAdapters: adaptersOf('model-a') },
    { model: 'model-a', ...replicaOptions, loraAdapters: adaptersOf('model-a') },
    { model: 'model-b', ...replicaOptions, loraAdapters: adaptersOf('model-b') },
    { model: 'model-b', ...replicaOptions, loraAdapters: adaptersOf('model-b') },
    { model: 'embedder', task: 'embed', ttftMs: 2, keepAliveTimeoutMs: 60_000 },
  ];
  const sims: ChildServer[] = [];
  for (const spec of specs) {
    sims.push(
      await startChild(resolve(import.meta.dirname, '../servers/simulator.ts'), [JSON.stringify(spec)]),
    );
  }
  const gateway = await startGateway(sims.map((s) => s.url).join(','), {
    WORKERS: '2',
    RATE_LIMIT_POINTS: '2000000',
    LOAD_SIGNALS_INTERVAL_MS: setup === 'unaware' ? '0' : '100',
    ...(setup === 'on demand'
      ? {
          LORA_ADAPTERS: JSON.stringify(
            Object.fromEntries(
              Object.entries(ADAPTERS).map(([name, base]) => [name, { base, path: `/lora/${name}` }]),
            ),
          ),
        }
      : {}),
  });
  let samples: Sample[];
  const started = performance.now();
  try {
    samples = await drive(gateway.url, gateway.key);
  } finally {
    await gateway.stop();
  }
  const minutes = (performance.now() - started) / 60_000;
  const stats = (await Promise.all(sims.map((s) => s.ask('stats')))) as {
    stats: { loraLoads: number; loraSwaps: number };
  }[];
  await Promise.all(sims.map((s) => s.stop()));
  const ok = samples.filter((s) => s.status === 200);
  const adapter = summarize(ok.filter((s) => s.kind === 'adapter').map((s) => s.ttftMs));
  const base = summarize(ok.filter((s) => s.kind === 'base').map((s) => s.ttftMs));
  const loads = stats.reduce((sum, s) => sum + s.stats.loraLoads, 0);
  return {
    setup,
    requests: samples.length,
    errors: samples.length - ok.length,
    // A replica's 404 (a model it does not serve) or 400 (a route its task does not serve).
    misrouted: samples.filter((s) => s.status === 404 || s.status === 400).length,
    adapterTtftP50Ms: Number(adapter.p50.toFixed(1)),
    adapterTtftP99Ms: Number(adapter.p99.toFixed(1)),
    baseTtftP50Ms: Number(base.p50.toFixed(1)),
    adapterLoads: loads,
    adapterLoadsPerMinute: Number((loads / minutes).toFixed(1)),
    swaps: stats.reduce((sum, s) => sum + s.stats.loraSwaps, 0),
  };
}

const results: Result[] = [];
for (const setup of ['unaware', 'aware', 'on demand'] as const) results.push(await measure(setup));
const [unaware, aware] = results as [Result, Result, Result];
const ratios = {
  misrouted: results.reduce((sum, r) => sum + r.misrouted, 0),
  adapterTtftP50AwareVsUnaware: Number((aware.adapterTtftP50Ms / unaware.adapterTtftP50Ms).toFixed(2)),
  adapterTtftP99AwareVsUnaware: Number((aware.adapterTtftP99Ms / unaware.adapterTtftP99Ms).toFixed(2)),
  swapsAwareVsUnaware: Number((aware.swaps / Math.max(1, unaware.swaps)).toFixed(2)),
  onDemandLoads: results[2]!.adapterLoads,
};
console.table(results);
console.table(ratios);
console.log(JSON.stringify({ bench: 'models', durationMs: DURATION_MS, clients: CLIENTS, results, ratios }));
if (results.some((r) => r.errors > 0)) process.exitCode = 1;
