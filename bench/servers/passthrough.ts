// Benchmark child: the limit of any Node gateway — a bare node:http server piping each request to the upstream
// (argv[2]) through one undici Pool and the answer back, with nothing else: no auth, no limits, no logs, no checks.
// As fast as such a proxy gets: the request body streamed up as it arrives, the response piped back with
// `pipe` (no stream.pipeline and its per-call AbortController), headers as undici's flat array.
import { createServer } from 'node:http';
import { Pool } from 'undici';
import { serveInChild } from '../lib/child.js';

const pool = new Pool(process.argv[2]!, { connections: 1024, pipelining: 1 });
const JSON_HEADERS = ['content-type', 'application/json'];
const server = createServer((req, res) => {
  pool
    .request({
      path: req.url ?? '/',
      method: req.method as 'POST',
      headers: JSON_HEADERS,
      body: req.method === 'GET' || req.method === 'HEAD' ? null : req,
    })
    .then(
      (upstream) => {
        res.writeHead(upstream.statusCode, { 'content-type': String(upstream.headers['content-type']) });
        upstream.body.on('error', () => res.destroy());
        res.on('close', () => upstream.body.destroy());
        upstream.body.pipe(res);
      },
      () => {
        if (!res.headersSent) res.writeHead(502).end();
        else res.destroy();
      },
    );
});
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  serveInChild(`http://127.0.0.1:${port}`, async () => {
    await new Promise((done) => server.close(done));
    await pool.close();
  });
});
