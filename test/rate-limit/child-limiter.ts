// A rate limiter in its own process on the shared Redis; the parent asks it to check an IP over IPC.
import { Redis } from 'ioredis';
import { createIpRateLimiter } from '../../src/index.js';

const [redisUrl, name] = process.argv.slice(2) as [string, string];
const redis = new Redis(redisUrl);
await new Promise((ready) => redis.once('ready', ready));
const limiter = createIpRateLimiter({ store: redis, name, points: 20, windowSec: 60 });
process.on('message', async (message: { check?: string; close?: boolean }) => {
  if (message.check !== undefined) process.send?.(await limiter.check(message.check));
  if (message.close) {
    await limiter.close();
    await redis.quit();
    process.exit(0);
  }
});
process.send?.({ ready: true });
