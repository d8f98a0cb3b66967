// A permit pool (and a client using it) in its own process on the shared Redis. Commands over IPC:
// { hold: n } takes n permits and keeps them; { load: n, url } runs n concurrent streamed chats to the simulator.
import { Redis } from 'ioredis';
import { createPermitPool, createVllmClient, type Permit } from '../../src/index.js';

const [redisUrl, name, permits, leaseMs, upstream] = process.argv.slice(2) as [
  string,
  string,
  string,
  string,
  string,
];
const redis = new Redis(redisUrl);
await new Promise((ready) => redis.once('ready', ready));
const pool = createPermitPool({ permits: Number(permits), store: redis, name, leaseMs: Number(leaseMs) });
const client = createVllmClient({ baseUrl: upstream, permits: pool });
const held: Permit[] = [];
process.on('message', async (message: { hold?: number; load?: number; close?: boolean }) => {
  if (message.hold !== undefined) {
    for (let i = 0; i < message.hold; i++) held.push(await pool.acquire(upstream));
    process.send?.({ held: pool.stats().held });
  }
  if (message.load !== undefined) {
    const results = await Promise.allSettled(
      Array.from({ length: message.load }, async () => {
        let tokens = 0;
        for await (const _ of client.streamChatCompletion({ messages: [{ role: 'user', content: 'hi' }] }))
          tokens++;
        return tokens;
      }),
    );
    process.send?.({ ok: results.filter((r) => r.status === 'fulfilled').length, held: pool.stats().held });
  }
  if (message.close) {
    for (const permit of held) permit.release();
    await client.close();
    await pool.close();
    await redis.quit();
    process.exit(0);
  }
});
process.send?.({ ready: true });
