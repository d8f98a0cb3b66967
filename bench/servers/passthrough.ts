// Benchmark child: the limit of any Node gateway — a bare node:http server piping each request to the upstream
// (argv[2]) through one undici Pool and the answer back, with nothing else: no auth, no limits, no logs, no checks.
import { createServer } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'undici';
import { serveInChild } from '../lib/child.js';

const pool = new Pool(process.argv[2]!, { connections: 1024, pipelining: 1 });
const server = createServer(async (req, res) => {
  try {
    const upstream = await pool.request({
      path: req.url ?? '/',
      method: req.method as 'POST',
      headers: { 'content-type': req.headers['content-type'] ?? 'application/json' },
      body: req.method === 'GET' ? null : req,
    });
    res.writeHead(upstream.statusCode, { 'content-type': String(upstream.headers['content-type']) });
    await pipeline(upstream.body, res);
  } catch {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  }
});
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  serveInChild(`http://127.0.0.1:${port}`, async () => {
    await new Promise((done) => server.close(done));
    await pool.close();
  });
});
