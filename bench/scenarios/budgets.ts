// Scenario: what per-key accounting costs. (1) The accounting of one request in µs, piece by piece, on real simulator
// responses: asking for usage (requestUsage), reading it (UsageMeter on a whole body, on a 200-token stream with
// continuous usage stripped, on one with only the final usage chunk), and the budget's admit + charge (memory store).
// (2) The gateway's throughput for a key with limits (rpm and tpm checked and charged on every request, through the
// cluster primary with 2 workers) against a key without (usage still read and recorded: what every key pays), with
// autocannon, short answers and streams, ABBA rounds, median of per-round ratios.
// Run: npm run build && npx tsx bench/scenarios/budgets.ts [--quick]
import { resolve } from 'node:path';
import { runAutocannon } from '../lib/autocannon.js';
import { type ChildServer, startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { kit, testing } from '../lib/kit.js';
import { median, microsPerCall } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const rounds = quick ? 1 : 8;
const autocannonSec = quick ? 1 : 2;
const iterations = quick ? 200 : 5000;

// ── (1) the accounting of one request, µs ───────────────────────────────────────────────────────────────────────

const sim = await testing.startVllmSimulator({ model: 'm', outputTokens: 200 });
const messages = [{ role: 'user', content: 'Tell me about the history of lighthouses in a few paragraphs.' }];
async function capture(body: object): Promise<Buffer[]> {
  const res = await fetch(`${sim.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages, ...body }),
  });
  // As vLLM writes them: one event per write (one token per chunk).
  const text = await res.text();
  if (!(body as { stream?: boolean }).stream) return [Buffer.from(text)];
  return text
    .split('\n\n')
    .filter(Boolean)
    .map((event) => Buffer.from(`${event}\n\n`));
}
const wholeBody = await capture({ max_tokens: 16 });
const continuous = await capture({
  stream: true,
  stream_options: { include_usage: true, continuous_usage_stats: true },
});
const finalOnly = await capture({ stream: true, stream_options: { include_usage: true } });
await sim.close();

const micros = (fn: () => void) => microsPerCall(fn, iterations);
const meterOver = (chunks: Buffer[], options: ConstructorParameters<typeof kit.UsageMeter>[0]) => () => {
  const meter = new kit.UsageMeter(options);
  for (const chunk of chunks) meter.write(chunk);
  meter.end();
  meter.usage();
};
const requestText = JSON.stringify({ model: 'm', messages, stream: true, max_tokens: 200 });
const requestBytes = Buffer.from(requestText);
const budgets = kit.createKeyBudgets();
let k = 0;
// Admit and charge are synchronous on the memory store: awaited once per batch of one (the gateway awaits each).
async function budgetMicros(): Promise<number> {
  const n = iterations * 4;
  const started = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const key = `key-${k++ % 1000}`;
    await budgets.admit(key, { requests: 1_000_000_000, tokens: 1_000_000_000_000 });
    await budgets.charge(key, 300);
  }
  return Number(process.hrtime.bigint() - started) / n / 1000;
}
const accounting = {
  requestUsageMicros: micros(() =>
    kit.requestUsage(requestBytes, JSON.parse(requestText), { continuous: true }),
  ),
  meterWholeBodyMicros: micros(meterOver(wholeBody, { stream: false })),
  meterStream200ContinuousStrippedMicros: micros(meterOver(continuous, { stream: true, strip: 'all' })),
  meterStream200FinalUsageMicros: micros(meterOver(finalOnly, { stream: true })),
  budgetAdmitAndChargeMicros: median([await budgetMicros(), await budgetMicros(), await budgetMicros()]),
  streamEvents: continuous.length,
};
await budgets.close();
console.table(accounting);

// ── (2) the gateway with and without a budget on the key ────────────────────────────────────────────────────────

const servers = resolve(import.meta.dirname, '../servers');
const upstream: ChildServer = await startChild(resolve(servers, 'simulator.ts'));
const limited = [{ name: 'budgeted', rpm: 2_000_000, tpm: 1_000_000_000_000 }];
const workers = process.env.BENCH_WORKERS ?? '2';
const gatewayEnv = { RATE_LIMIT_POINTS: '2000000', WORKERS: workers };
const gateway = await startGateway(upstream.url, gatewayEnv, [], limited);
const bodies = {
  short: JSON.stringify({ messages, max_tokens: 16 }),
  stream: JSON.stringify({ messages, max_tokens: 64, stream: true }),
};
const run = (key: string, body: string) =>
  runAutocannon({
    url: gateway.url,
    path: '/v1/chat/completions',
    body,
    headers: { authorization: `Bearer ${key}` },
    connections: 32,
    durationSec: autocannonSec,
  });
const keys = { free: gateway.key, budgeted: gateway.keys.budgeted! };
for (const key of Object.values(keys)) for (const body of Object.values(bodies)) await run(key, body);
const ratios: Record<string, number[]> = { short: [], stream: [] };
const rps: Record<string, number[]> = {
  'short free': [],
  'short budgeted': [],
  'stream free': [],
  'stream budgeted': [],
};
let errors = 0;
for (let round = 0; round < rounds; round++) {
  for (const [shape, body] of Object.entries(bodies)) {
    // ABBA (BAAB on odd rounds): each side's two runs straddle the other's, so a drift of the machine's speed during
    // the round cancels out of the ratio.
    const order =
      round % 2 === 0 ? ['free', 'budgeted', 'budgeted', 'free'] : ['budgeted', 'free', 'free', 'budgeted'];
    const sum: Record<string, number> = { free: 0, budgeted: 0 };
    for (const name of order as ('free' | 'budgeted')[]) {
      const r = await run(keys[name], body);
      errors += r.errors + r.non2xx;
      sum[name]! += r.rps;
      rps[`${shape} ${name}`]!.push(r.rps);
    }
    ratios[shape]!.push(sum.budgeted! / sum.free!);
  }
}
await gateway.stop();
await upstream.stop();

const r3 = (n: number) => Number(n.toFixed(3));
const throughput = {
  workers: Number(workers),
  rps: Object.fromEntries(Object.entries(rps).map(([name, list]) => [name, Math.round(median(list))])),
  budgetedVsFree: { short: r3(median(ratios.short!)), stream: r3(median(ratios.stream!)) },
  errors,
};
console.table(throughput.rps);
console.log(JSON.stringify(throughput.budgetedVsFree));
const result = {
  bench: 'budgets',
  rounds,
  accounting: Object.fromEntries(Object.entries(accounting).map(([name, v]) => [name, r3(v)])),
  throughput,
};
console.log(JSON.stringify(result));
if (errors > 0) process.exitCode = 1;
