// Bench: createVllmClient against raw undici Pool.request (the limit), global fetch, the openai npm client and a new
// connection per request (the seed's "before"), side by side against the zero-latency simulator in its own process.
// Every contender serialises the request body and parses the response, as any real caller does.
// Run: npm run build && npx tsx bench/client.ts [--quick]
import { resolve } from 'node:path';
import OpenAI from 'openai';
import { Client, Pool } from 'undici';
import { startChild } from './lib/child.js';
import { kit } from './lib/kit.js';
import { closedLoopCalls, median } from './lib/load.js';

const quick = process.argv.includes('--quick');
const rounds = quick ? 1 : 3;
const durationMs = quick ? 400 : 3000;
const warmupMs = quick ? 100 : 700;
const concurrency = 32;
const body = { messages: [{ role: 'user' as const, content: 'Say something short.' }], max_tokens: 16 };
const headers = { 'content-type': 'application/json' };

const server = await startChild(resolve(import.meta.dirname, 'servers/simulator.ts'));
const url = server.url;

type Contender = { name: string; setup: () => { call: () => Promise<unknown>; close: () => Promise<void> } };
const contenders: Contender[] = [
  {
    name: 'vllm-kit client',
    setup: () => {
      const client = kit.createVllmClient({ baseUrl: url });
      return { call: () => client.chatCompletion(body), close: () => client.close() };
    },
  },
  {
    name: 'raw undici Pool.request',
    setup: () => {
      const pool = new Pool(url, { connections: 100 });
      return {
        call: async () => {
          const res = await pool.request({
            path: '/v1/chat/completions',
            method: 'POST',
            headers,
            body: JSON.stringify(body),
          });
          return res.body.json();
        },
        close: () => pool.close(),
      };
    },
  },
  {
    name: 'global fetch',
    setup: () => ({
      call: async () => {
        const res = await fetch(`${url}/v1/chat/completions`, {
          method: 'POST',
          headers,
          body: JSON.stringify(body),
        });
        return res.json();
      },
      close: async () => {},
    }),
  },
  {
    name: 'openai npm client',
    setup: () => {
      const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
      return {
        call: () => openai.chat.completions.create({ model: 'meta-llama/Llama-3.1-8B-Instruct', ...body }),
        close: async () => {},
      };
    },
  },
  {
    name: 'new connection per request',
    setup: () => ({
      call: async () => {
        const client = new Client(url);
        try {
          const res = await client.request({
            path: '/v1/chat/completions',
            method: 'POST',
            headers,
            body: JSON.stringify(body),
          });
          return await res.body.json();
        } finally {
          await client.close();
        }
      },
      close: async () => {},
    }),
  },
];

const results: Record<
  string,
  { rps: number[]; p50: number[]; p99: number[]; serial: number[]; errors: number }
> = {};
for (let round = 0; round < rounds; round++) {
  for (let i = 0; i < contenders.length; i++) {
    const contender = contenders[(i + round) % contenders.length]!;
    const { call, close } = contender.setup();
    const loaded = await closedLoopCalls(call, { concurrency, durationMs, warmupMs });
    // One caller at a time: the latency a single request pays, where connection reuse shows most.
    const serial = await closedLoopCalls(call, {
      concurrency: 1,
      durationMs: durationMs / 2,
      warmupMs: warmupMs / 2,
    });
    await close();
    const entry = (results[contender.name] ??= { rps: [], p50: [], p99: [], serial: [], errors: 0 });
    entry.rps.push(loaded.requestsPerSec);
    entry.p50.push(loaded.p50Ms);
    entry.p99.push(loaded.p99Ms);
    entry.serial.push(serial.p50Ms);
    entry.errors += loaded.errors + serial.errors;
  }
}
await server.stop();

const summary = Object.fromEntries(
  Object.entries(results).map(([name, r]) => [
    name,
    {
      rps: Math.round(median(r.rps)),
      p50Ms: Number(median(r.p50).toFixed(2)),
      p99Ms: Number(median(r.p99).toFixed(2)),
      serialP50Ms: Number(median(r.serial).toFixed(3)),
      errors: r.errors,
    },
  ]),
);
console.table(summary);
const ours = summary['vllm-kit client']!;
const ratio = (name: string) => Number((ours.rps / summary[name]!.rps).toFixed(2));
console.log(
  JSON.stringify({
    bench: 'client',
    rounds,
    concurrency,
    durationMs,
    node: process.version,
    summary,
    vsRawUndici: ratio('raw undici Pool.request'),
    vsFetch: ratio('global fetch'),
    vsOpenai: ratio('openai npm client'),
    vsNewConnection: ratio('new connection per request'),
    reuseSavesMsPerRequest: Number(
      (summary['new connection per request']!.serialP50Ms - ours.serialP50Ms).toFixed(3),
    ),
  }),
);
if (Object.values(summary).some((s) => s.errors > 0)) process.exitCode = 1;
