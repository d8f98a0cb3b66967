// Benchmark child: an OTLP/HTTP collector stand-in that reads every export (traces, metrics) and answers 200, so a
// traced gateway pays for building, serialising and sending its batches but nothing waits on a real backend.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serveInChild } from '../lib/child.js';

let exports = 0;
let bytes = 0;
const server = createServer((req, res) => {
  req.on('data', (chunk: Buffer) => (bytes += chunk.length));
  req.on('end', () => {
    exports++;
    res.writeHead(200, { 'content-type': 'application/x-protobuf' });
    res.end();
  });
});
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
serveInChild(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, async () => {
  server.close();
});
process.on('message', (message) => {
  if (message === 'stats') process.send?.({ stats: { exports, bytes } });
});
