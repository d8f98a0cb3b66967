// Benchmark child: the Express version of the same assembly — express-rate-limit (per IP, budget raised),
// http-proxy-middleware to vLLM (argv[2]), and a key check against SHA-256 hashes of the keys (argv[3]).
import { createHash } from 'node:crypto';
import express from 'express';
import { rateLimit } from 'express-rate-limit';
import { createProxyMiddleware } from 'http-proxy-middleware';
import { serveInChild } from '../lib/child.js';

const [upstream, key] = process.argv.slice(2) as [string, string];
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
const keys = new Set([sha256(key)]);

const app = express();
app.use(rateLimit({ windowMs: 60_000, limit: 2_000_000, standardHeaders: 'draft-8', legacyHeaders: false }));
app.use((req, res, next) => {
  const header = req.headers.authorization;
  const token = header?.startsWith('Bearer ') ? header.slice(7) : undefined;
  if (token === undefined || !keys.has(sha256(token))) {
    res.status(401).json({ error: { message: 'Invalid API key', type: 'invalid_request_error' } });
    return;
  }
  next();
});
app.use('/v1', createProxyMiddleware({ target: `${upstream}/v1` }));
const server = app.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  serveInChild(`http://127.0.0.1:${port}`, () => new Promise((done) => server.close(() => done())));
});
