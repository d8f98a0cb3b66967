// A node:cluster app for the key-budgets test: the primary holds the windows, four workers serve one port.
// GET /admit?key=K&requests=N&tokens=M admits one request; GET /charge?key=K&tokens=N charges tokens;
// GET /burst?key=K&requests=N admits 50 at once (one IPC batch).
import cluster from 'node:cluster';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createKeyBudgets, serveClusterBudgets } from '../../src/index.js';

const WORKERS = 4;

if (cluster.isPrimary) {
  serveClusterBudgets();
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
  const budgets = createKeyBudgets({ store: 'cluster', storeTimeoutMs: 1000 });
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const key = url.searchParams.get('key') ?? 'k';
    const limit = (name: string) => (url.searchParams.has(name) ? Number(url.searchParams.get(name)) : null);
    const limits = { requests: limit('requests'), tokens: limit('tokens') };
    res.setHeader('x-worker', String(process.pid));
    if (url.pathname === '/charge') {
      await budgets.charge(key, Number(url.searchParams.get('tokens')));
      res.end('{}');
      return;
    }
    if (url.pathname === '/burst') {
      const decisions = await Promise.all(Array.from({ length: 50 }, () => budgets.admit(key, limits)));
      res.end(JSON.stringify(decisions));
      return;
    }
    res.end(JSON.stringify(await budgets.admit(key, limits)));
  });
  server.listen(0, '127.0.0.1', () => {
    process.send?.({ port: (server.address() as AddressInfo).port });
  });
}
