// Benchmark child: the seed's backend before its optimisations, rebuilt in Node — one process, no limiter, the API
// key checked against the database on every request with a 50 ms query, and a new upstream connection per request.
// The seed's SQLite driver is synchronous (its own notes say so), so the query blocks the process for its 50 ms, as
// it blocked the Python worker; `--async-db` makes it a non-blocking 50 ms wait instead (kinder to the "before").
// argv[2]: the upstream URL.
import { createServer } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Client } from 'undici';
import { serveInChild } from '../lib/child.js';

const upstream = process.argv[2]!;
const asyncDb = process.argv.includes('--async-db');
const blocker = new Int32Array(new SharedArrayBuffer(4));
const checkKey = async (authorization: string | undefined): Promise<boolean> => {
  if (asyncDb) await new Promise((resolve) => setTimeout(resolve, 50));
  else Atomics.wait(blocker, 0, 0, 50);
  return typeof authorization === 'string' && authorization.startsWith('Bearer ');
};

const server = createServer(async (req, res) => {
  if (!(await checkKey(req.headers.authorization))) {
    res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{"message":"Invalid API key"}}');
    return;
  }
  const client = new Client(upstream);
  try {
    const answer = await client.request({
      path: req.url ?? '/',
      method: req.method as 'POST',
      headers: { 'content-type': 'application/json' },
      body: req.method === 'GET' ? null : req,
    });
    res.writeHead(answer.statusCode, { 'content-type': String(answer.headers['content-type']) });
    await pipeline(answer.body, res);
  } catch {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  } finally {
    await client.close();
  }
});
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  serveInChild(`http://127.0.0.1:${port}`, () => new Promise((done) => server.close(() => done())));
});
