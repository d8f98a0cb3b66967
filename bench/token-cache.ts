// Bench: the token cache's hit path (µs per verify, hashing included), and the seed's "50–100 ms → <1 ms": a 50 ms
// database at 1,000 requests/s, with and without the cache. Run: npm run build && npx tsx bench/token-cache.ts [--quick]
import { kit } from './lib/kit.js';
import { median, percentile } from './lib/load.js';

const quick = process.argv.includes('--quick');

async function hitPath(): Promise<number> {
  const cache = kit.createTokenCache({ verify: async () => ({ id: 'k1' }) });
  const token = 'sk-live-0123456789abcdef0123456789abcdef';
  await cache.verify(token);
  const n = quick ? 20_000 : 1_000_000;
  const started = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await cache.verify(token);
  const ns = Number(process.hrtime.bigint() - started) / n;
  await cache.close();
  return ns / 1000;
}

/** Open loop: `rate` requests/s for `seconds`, over `tokens` distinct keys, each verified against a 50 ms "database". */
async function database(useCache: boolean, rate: number, seconds: number, tokens: number) {
  let lookups = 0;
  const db = async (_token: string) => {
    lookups++;
    await new Promise((resolve) => setTimeout(resolve, 50));
    return { id: 'k' };
  };
  const cache = kit.createTokenCache({ verify: db });
  const verify = useCache ? (token: string) => cache.verify(token) : db;
  const latencies: number[] = [];
  const pending: Promise<void>[] = [];
  const total = rate * seconds;
  const started = performance.now();
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    const t0 = performance.now();
    pending.push(verify(`sk-token-${i % tokens}`).then(() => void latencies.push(performance.now() - t0)));
  }
  await Promise.all(pending);
  await cache.close();
  latencies.sort((a, b) => a - b);
  return { requests: total, lookups, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99) };
}

const hits: number[] = [];
for (let i = 0; i < (quick ? 1 : 5); i++) hits.push(await hitPath());
const seconds = quick ? 1 : 5;
const without = await database(false, 1000, seconds, 100);
const withCache = await database(true, 1000, seconds, 100);
const round = (n: number) => Number(n.toFixed(3));
console.table({
  'no cache': { ...without, p50Ms: round(without.p50Ms), p99Ms: round(without.p99Ms) },
  'token cache': { ...withCache, p50Ms: round(withCache.p50Ms), p99Ms: round(withCache.p99Ms) },
});
console.log(
  JSON.stringify({
    bench: 'token-cache',
    node: process.version,
    hitMicrosPerVerify: round(median(hits)),
    hitRuns: hits.map(round),
    database: { without, withCache },
    lookupReduction: round(without.lookups / withCache.lookups),
  }),
);
