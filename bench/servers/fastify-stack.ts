// Benchmark child: what a Node team would assemble from Fastify plugins in front of vLLM (argv[2]) — @fastify/http-proxy,
// @fastify/rate-limit (per IP, its budget raised: cost, not policy, is measured), an onRequest key check against
// SHA-256 hashes of the keys (argv[3]), logger off. The peer the reference gateway is compared with.
import { createHash } from 'node:crypto';
import proxy from '@fastify/http-proxy';
import rateLimit from '@fastify/rate-limit';
import Fastify from 'fastify';
import { serveInChild } from '../lib/child.js';

const [upstream, key] = process.argv.slice(2) as [string, string];
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
const keys = new Set([sha256(key)]);

const app = Fastify({ logger: false });
await app.register(rateLimit, { max: 2_000_000, timeWindow: 60_000 });
app.addHook('onRequest', async (request, reply) => {
  const header = request.headers.authorization;
  const token = header?.startsWith('Bearer ') ? header.slice(7) : undefined;
  if (token === undefined || !keys.has(sha256(token))) {
    return reply.code(401).send({ error: { message: 'Invalid API key', type: 'invalid_request_error' } });
  }
});
await app.register(proxy, { upstream, prefix: '/v1', rewritePrefix: '/v1', http: {} });
const url = await app.listen({ port: 0, host: '127.0.0.1' });
serveInChild(url, () => app.close());
