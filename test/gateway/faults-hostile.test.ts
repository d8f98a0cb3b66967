// Hostile input against the gateway as `npm start` runs it (real workers): bodies nested 100k levels deep, clients that
// leave at once, upstream bodies of 64 MB in one SSE event or one JSON body. Workers never die, and what they hold of
// an upstream body is bounded.
import { readFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startVllmSimulator } from '../../src/testing/index.js';
import { postOwnConnection } from '../helpers/gateway.js';
import { chat, trackGatewayProcesses, workerPids } from '../helpers/gateway-process.js';

const { start, onCleanup } = trackGatewayProcesses();
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
const env = { WORKERS: '2', RATE_LIMIT_POINTS: '100000' };

/** `{"messages":[{"role":"user","content":[[[…"x"…]]]}]}` nested `depth` arrays deep. */
function nested(depth: number): string {
  return `{"messages":[{"role":"user","content":${'['.repeat(depth)}"x"${']'.repeat(depth)}}],"max_tokens":4}`;
}

const post = postOwnConnection;

/** A worker's peak resident memory (VmHWM), bytes. */
function peakRss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/);
  return Number(line?.[1] ?? 0) * 1024;
}

describe('hostile input', () => {
  it('refuses bodies nested past 64 levels with a truthful 400, and no client leaving early kills a worker', async () => {
    const sim = await startVllmSimulator({ model: 'm', outputTokens: 3 });
    onCleanup(() => sim.close());
    const gateway = await start(sim.url, { env });
    const workers = workerPids(gateway.child.pid!);
    for (const depth of [65, 100_000, 400_000]) {
      const reply = await post(gateway.url, gateway.key, nested(depth));
      expect(reply.status).toBe(400);
      expect(JSON.parse(reply.body).error).toMatchObject({
        type: 'invalid_request_error',
        code: 'json_too_deep',
        message: 'The request body nests objects or arrays more than 64 levels deep',
      });
    }
    // Within the limit the body is not refused for its depth (the model server judges its content).
    const within = await post(gateway.url, gateway.key, nested(60));
    expect(within.status).not.toBe(0);
    expect(within.body).not.toContain('json_too_deep');
    // Clients that send a deep body and leave at once (the close handler once walked it, and threw).
    for (let i = 0; i < 20; i++) await post(gateway.url, gateway.key, nested(i % 2 ? 60 : 100_000), true);
    await new Promise((r) => setTimeout(r, 300));
    expect(workerPids(gateway.child.pid!)).toEqual(workers);
    expect(
      (await chat(gateway.url, gateway.key, { messages: [{ role: 'user', content: 'hi' }] })).status,
    ).toBe(200);
    expect(gateway.output()).not.toMatch(/RangeError|exited/);
  }, 60_000);

  it('passes a 64 MB SSE event and a 64 MB JSON body through, holding a bounded part of them', async () => {
    const MB = 1 << 20;
    const piece = Buffer.alloc(64 * 1024, 0x61);
    // An upstream that answers with one enormous event (or body), then usage.
    const upstream = createServer((req, res) => {
      // The gateway's background health probe.
      if (req.method === 'GET') {
        req.resume();
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(req.url === '/v1/models' ? '{"object":"list","data":[]}' : '{}');
        return;
      }
      let text = '';
      req.on('data', (c) => (text += c));
      req.on('end', async () => {
        const stream = JSON.parse(text).stream === true;
        res.writeHead(200, { 'content-type': stream ? 'text/event-stream' : 'application/json' });
        res.write(
          stream
            ? 'data: {"choices":[{"index":0,"delta":{"content":"'
            : '{"choices":[{"index":0,"message":{"content":"',
        );
        for (let i = 0; i < (64 * MB) / piece.length; i++) {
          if (!res.write(piece)) await new Promise((r) => res.once('drain', r));
        }
        res.end(
          stream
            ? '"}}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\ndata: [DONE]\n\n'
            : '"}}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}',
        );
      });
    });
    await new Promise<void>((done) => upstream.listen(0, '127.0.0.1', done));
    cleanups.push(() => new Promise((done) => upstream.close(done)));
    const gateway = await start(`http://127.0.0.1:${(upstream.address() as { port: number }).port}`, {
      env: { ...env, WORKERS: '1' },
    });
    const [worker] = workerPids(gateway.child.pid!);
    const before = peakRss(worker!);
    for (const shape of ['stream', 'body']) {
      const received = await new Promise<number>((done, fail) => {
        const req = request(`${gateway.url}/v1/chat/completions`, {
          method: 'POST',
          agent: false,
          headers: {
            authorization: `Bearer ${gateway.key}`,
            'content-type': 'application/json',
          },
        });
        req.on('response', (res) => {
          let bytes = 0;
          res.on('data', (c: Buffer) => (bytes += c.length));
          res.on('end', () => done(bytes));
          res.on('error', fail);
        });
        req.on('error', fail);
        req.end(JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], stream: shape === 'stream' }));
      });
      expect(received).toBeGreaterThan(64 * MB);
    }
    // What the worker held of 128 MB passed through: a bounded tail, not the bodies. Holding one whole body took a copy,
    // its concatenation and its text (3 × 64 MB); what remains is garbage not yet collected (about 50 MB measured).
    expect(peakRss(worker!) - before).toBeLessThan(100 * MB);
    expect(workerPids(gateway.child.pid!)).toEqual([worker]);
  }, 120_000);
});
