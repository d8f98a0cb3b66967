// One rate-limit measurement in a fresh process (run with --expose-gc): heap for N distinct keys and time per check.
// argv: impl = 'vllm-kit' | 'rate-limiter-flexible' | 'cluster', count.
import cluster from 'node:cluster';
import { RateLimiterMemory } from 'rate-limiter-flexible';
import { kit } from './lib/kit.js';

const [impl = 'vllm-kit', countText = '1000000'] = process.argv.slice(2);
const count = Number(countText);
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error('run with --expose-gc');

async function clusterPath(): Promise<void> {
  // The cluster path: a worker asks the primary for every check.
  if (cluster.isPrimary) {
    kit.serveClusterRateLimits();
    const worker = cluster.fork();
    worker.on('message', (message: { impl?: string }) => {
      if (message.impl === undefined) return; // the store's own IPC traffic
      process.stdout.write(`${JSON.stringify(message)}\n`);
      worker.kill();
      process.exit(0);
    });
    return;
  }
  const limiter = kit.createIpRateLimiter({ store: 'cluster', points: 1_000_000 });
  for (let i = 0; i < 1000; i++) await limiter.check('10.0.0.1');
  const started = process.hrtime.bigint();
  for (let i = 0; i < count; i++) await limiter.check('10.0.0.1');
  const nsPerCheck = Number(process.hrtime.bigint() - started) / count;
  process.send?.({ impl, keys: 1, checks: count, microsPerCheck: nsPerCheck / 1000 });
}

/** Holds the limiter until the heap is measured (otherwise the collector may free it first). */
const keepAlive: unknown[] = [];

async function memoryPath(): Promise<void> {
  // Keys are made on the fly, so the heap growth is what the store keeps: its entries and the key strings.
  const keyOf = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
  gc!();
  const before = process.memoryUsage().heapUsed;
  let check: (key: string) => Promise<unknown>;
  if (impl === 'rate-limiter-flexible') {
    const limiter = new RateLimiterMemory({ points: 20, duration: 60 });
    keepAlive.push(limiter);
    check = (key) => limiter.consume(key).catch(() => undefined);
  } else {
    const limiter = kit.createIpRateLimiter({ points: 20, windowSec: 60 });
    keepAlive.push(limiter);
    check = (key) => limiter.check(key);
  }
  const started = process.hrtime.bigint();
  for (let i = 0; i < count; i++) await check(keyOf(i));
  const nsPerCheck = Number(process.hrtime.bigint() - started) / count;
  gc!();
  const heapMb = (process.memoryUsage().heapUsed - before) / 1024 / 1024;
  // Steady state: the same number of checks over 10,000 recurring clients, keys made beforehand.
  const hotKeys = Array.from({ length: 10_000 }, (_, i) => keyOf(i));
  const hotStarted = process.hrtime.bigint();
  for (let i = 0; i < count; i++) await check(hotKeys[i % 10_000]!);
  const hotNsPerCheck = Number(process.hrtime.bigint() - hotStarted) / count;
  const result = {
    impl,
    keys: count,
    microsPerCheck: nsPerCheck / 1000,
    hotMicrosPerCheck: hotNsPerCheck / 1000,
    heapMb,
    kept: keepAlive.length,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

if (impl === 'cluster') await clusterPath();
else await memoryPath();
