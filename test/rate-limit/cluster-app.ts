// A node:cluster app for the cluster-store test: the primary holds the counts, four workers serve one port. With
// SERVE_RATE_LIMITS=0 the primary does not serve the counts (a primary that never answers).
import cluster from 'node:cluster';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createIpRateLimiter, serveClusterRateLimits } from '../../src/index.js';

const WORKERS = 4;

if (cluster.isPrimary) {
  if (process.env.SERVE_RATE_LIMITS !== '0') serveClusterRateLimits();
  let listening = 0;
  let port = 0;
  for (let i = 0; i < WORKERS; i++) {
    const worker = cluster.fork();
    worker.on('message', (message: { port?: number }) => {
      if (message.port === undefined) return;
      port = message.port;
      if (++listening === WORKERS) process.stdout.write(`${JSON.stringify({ port })}\n`);
    });
  }
  process.on('SIGTERM', () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill();
    process.exit(0);
  });
} else {
  const limiter = createIpRateLimiter({ store: 'cluster', points: 20, windowSec: 60, storeTimeoutMs: 300 });
  const server = createServer(async (req, res) => {
    res.setHeader('x-worker', String(process.pid));
    if (req.url === '/burst') {
      // 50 checks of one key in one event-loop turn (they travel to the primary as one batch).
      const decisions = await Promise.all(Array.from({ length: 50 }, () => limiter.consume('burst')));
      res.end(
        JSON.stringify(
          decisions.map((d) => ({ allowed: d.allowed, remaining: d.remaining, degraded: d.degraded })),
        ),
      );
      return;
    }
    if (!(await limiter.handle(req, res))) return;
    res.end('ok');
  });
  server.listen(0, '127.0.0.1', () => {
    process.send?.({ port: (server.address() as AddressInfo).port });
  });
}
