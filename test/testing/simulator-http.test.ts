// HTTP behaviour clients depend on: the idle keep-alive timeout without a hint header, and connection reuse.
import { connect } from 'node:net';
import { Client } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startVllmSimulator, type VllmSimulator } from '../../src/testing/index.js';
import { chatBody, sseData } from '../helpers/http.js';

let sim: VllmSimulator | undefined;
afterEach(async () => {
  await sim?.close();
  sim = undefined;
});

/** Sends one raw HTTP/1.1 request on a fresh socket; resolves with the response head and when the server closed. */
function rawExchange(port: number, request: string) {
  return new Promise<{ head: string; answeredAt: number; closedAt: number }>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let data = '';
    let answeredAt = 0;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      data += chunk;
      if (answeredAt === 0 && data.includes('\r\n\r\n')) answeredAt = performance.now();
    });
    socket.on('error', reject);
    socket.on('close', () =>
      resolve({ head: data.split('\r\n\r\n')[0]!, answeredAt, closedAt: performance.now() }),
    );
    socket.write(request);
  });
}

describe('keep-alive', () => {
  it('closes an idle connection after keepAliveTimeoutMs and sends no Keep-Alive hint', async () => {
    sim = await startVllmSimulator({ keepAliveTimeoutMs: 150 });
    const result = await rawExchange(sim.port, 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(result.head).toMatch(/^HTTP\/1\.1 200/);
    expect(result.head.toLowerCase()).not.toContain('keep-alive: timeout');
    const idle = result.closedAt - result.answeredAt;
    expect(idle).toBeGreaterThanOrEqual(140);
  });

  it('reuses one connection for sequential requests and does not cut a long stream', async () => {
    sim = await startVllmSimulator({ keepAliveTimeoutMs: 100, itlMs: 60 });
    const client = new Client(sim.url, { keepAliveTimeout: 60_000 });
    try {
      // The stream lasts about 300 ms, three times the idle timeout: it must not be cut.
      const response = await client.request({
        path: '/v1/chat/completions',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(chatBody({ max_tokens: 6, stream: true })),
      });
      const events = sseData(await response.body.text());
      expect(events.at(-1)).toBe('[DONE]');
      for (let i = 0; i < 3; i++) {
        const again = await client.request({ path: '/health', method: 'GET' });
        await again.body.dump();
      }
      expect(sim.stats().connectionsAccepted).toBe(1);
    } finally {
      await client.destroy();
    }
  });
});
