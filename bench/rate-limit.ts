// Bench: rate-limit checks — memory (1M distinct keys: heap and µs per check, against rate-limiter-flexible's memory
// store), the cluster path (IPC to the primary) and the Redis path. Run: npm run build && npx tsx bench/rate-limit.ts
import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';
import { Redis } from 'ioredis';
import { kit } from './lib/kit.js';

const quick = process.argv.includes('--quick');
const keys = quick ? 50_000 : 1_000_000;
const child = resolve(import.meta.dirname, 'rate-limit-child.ts');
const measure = (impl: string, n: number) =>
  JSON.parse(
    execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', child, impl, String(n)], {
      encoding: 'utf8',
    })
      .trim()
      .split('\n')
      .at(-1)!,
  ) as { impl: string; keys: number; microsPerCheck: number; hotMicrosPerCheck?: number; heapMb?: number };

const ours = measure('vllm-kit', keys);
const theirs = measure('rate-limiter-flexible', keys);
const clusterPath = measure('cluster', quick ? 2000 : 20_000);

const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
await new Promise((ready) => redis.once('ready', ready));
const limiter = kit.createIpRateLimiter({ store: redis, name: `bench-${process.pid}`, points: 1_000_000 });
const n = quick ? 2000 : 20_000;
for (let i = 0; i < 500; i++) await limiter.check('10.0.0.1');
const started = process.hrtime.bigint();
for (let i = 0; i < n; i++) await limiter.check('10.0.0.1');
const redisMicros = Number(process.hrtime.bigint() - started) / n / 1000;
await limiter.close();
await redis.quit();

const r = (x: number | undefined) => (x === undefined ? undefined : Number(x.toFixed(3)));
console.table({
  'vllm-kit memory store': {
    keys: ours.keys,
    heapMb: r(ours.heapMb),
    microsPerCheck: r(ours.microsPerCheck),
  },
  'rate-limiter-flexible memory': {
    keys: theirs.keys,
    heapMb: r(theirs.heapMb),
    microsPerCheck: r(theirs.microsPerCheck),
  },
  'cluster store (IPC to primary)': {
    keys: 1,
    heapMb: undefined,
    microsPerCheck: r(clusterPath.microsPerCheck),
  },
  'Redis store (local Redis)': { keys: 1, heapMb: undefined, microsPerCheck: r(redisMicros) },
});
console.log(
  JSON.stringify({ bench: 'rate-limit', node: process.version, ours, theirs, clusterPath, redisMicros }),
);
