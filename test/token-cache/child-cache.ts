// A token cache in its own process, subscribed to the revocation channel; the parent asks it to verify over IPC.
import { Redis } from 'ioredis';
import { createTokenCache } from '../../src/index.js';

const [redisUrl, channel] = process.argv.slice(2) as [string, string];
const redis = new Redis(redisUrl);
let lookups = 0;
const cache = createTokenCache({
  verify: async () => {
    lookups++;
    return { id: 'k1' };
  },
  redis: { client: redis, channel },
});
await cache.ready();
process.on('message', async (message: { verify?: string; close?: boolean }) => {
  if (message.verify !== undefined) {
    await cache.verify(message.verify);
    process.send?.({ lookups });
  }
  if (message.close) {
    await cache.close();
    await redis.quit();
    process.exit(0);
  }
});
process.send?.({ ready: true });
