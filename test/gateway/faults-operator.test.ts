// What an operator sees on a bad day, against real processes and servers: every variable validated and named, a
// port in use, Redis down at start, an abandoned stream counted as 499, an upstream 5xx body never relayed, the
// shutdown lines, and a 413 the client can read while it is still uploading.
import { spawn } from 'node:child_process';
import { createServer as createHttpServer, request } from 'node:http';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../examples/gateway/config.js';
import { startVllmSimulator } from '../../src/testing/index.js';
import { trackGateways } from '../helpers/gateway.js';
import { trackGatewayProcesses } from '../helpers/gateway-process.js';

const root = resolve(import.meta.dirname, '../..');
const { onCleanup } = trackGatewayProcesses();
const { setup, simulator, onCleanup: onGatewayCleanup } = trackGateways();

async function freePort(): Promise<{ port: number; close(): Promise<void> }> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return {
    port: (server.address() as { port: number }).port,
    close: () => new Promise((done) => server.close(() => done())),
  };
}

/** Runs main.ts with `env` until it exits (or `until` matches its output: then SIGTERM); resolves code and output. */
async function runGateway(
  env: Record<string, string>,
  until?: RegExp,
): Promise<{ code: unknown; out: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'examples/gateway/main.ts'], {
    cwd: root,
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('npm_'))),
      ENV: 'production',
      WORKERS: '2',
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_LEVEL: 'info',
      DATABASE_URL: 'sqlite::memory:',
      ...env,
    },
  });
  let out = '';
  const exited = new Promise((done) => child.once('exit', (code) => done(code)));
  const watch = (c: Buffer) => {
    out += c;
    if (until?.test(out)) {
      until = undefined;
      setTimeout(() => child.kill('SIGTERM'), 1500);
    }
  };
  child.stdout.on('data', watch);
  child.stderr.on('data', watch);
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const code = await exited;
  clearTimeout(timer);
  return { code, out };
}

describe('/health, /metrics and the probes', () => {
  it('serves the details and metrics on METRICS_PORT only, and status-only probes on the public port', async () => {
    const sim = await simulator();
    const { gateway, url } = await setup({ METRICS_PORT: '0', METRICS_PER_KEY: 'true' }, sim);
    const admin = gateway.metricsUrl!;
    expect(admin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    // Public: liveness and readiness (status only); no details, no metrics.
    expect(await (await fetch(`${url}/livez`)).json()).toEqual({ status: 'ok' });
    expect(await (await fetch(`${url}/readyz`)).json()).toEqual({ status: 'ready' });
    for (const path of ['/health', '/metrics']) {
      const refused = await fetch(`${url}${path}`);
      expect(refused.status).toBe(404);
      expect(await refused.text()).not.toContain(sim.url);
    }
    // Private: everything, without a key.
    expect(await (await fetch(`${admin}/health`)).json()).toMatchObject({
      status: 'ok',
      upstreams: [{ url: sim.url }],
    });
    expect(await (await fetch(`${admin}/metrics`)).text()).toContain('gateway_requests_total');
    expect((await fetch(`${admin}/v1/chat/completions`)).status).toBe(404);
    expect((await fetch(`${admin}/metrics`, { method: 'POST' })).status).toBe(405);
    expect((await fetch(`${admin}/nope`)).status).toBe(404);
  });
});

describe('a replica answering 5xx', () => {
  it('is retried elsewhere, ejected, and /health says so', async () => {
    const good = await simulator();
    const bad = await simulator({ faults: { status: { status: 500 } } });
    const { url, key } = await setup(
      { ROUTING: 'least-outstanding', ADMIN_KEY: 'admin-key-for-this-test', RATE_LIMIT_POINTS: '1000' },
      bad,
      [good.url],
    );
    const statuses = [];
    for (let i = 0; i < 30; i++) {
      const reply = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: `q${i}` }], max_tokens: 2 }),
      });
      await reply.arrayBuffer();
      statuses.push(reply.status);
    }
    // It once got 81 of 90 (failing fast, it looked the least loaded); now: retried on the other, then ejected.
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(bad.stats().failed).toBeLessThanOrEqual(5);
    const health = await fetch(`${url}/health`, {
      headers: { authorization: 'Bearer admin-key-for-this-test' },
    });
    expect(await health.json()).toMatchObject({
      status: 'ok',
      upstreams: [
        { url: bad.url, ejected: true },
        { url: good.url, ejected: false },
      ],
    });
  });
});

describe('operator clarity', () => {
  it('validates every variable at start and names it', () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ SHUTDOWN_GRACE_MS: 'abc' }, /^SHUTDOWN_GRACE_MS must be an integer/],
      [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'not-a-url' }, /^OTEL_EXPORTER_OTLP_ENDPOINT must be an http\(s\) URL/],
      [{ OTEL_TRACES_SAMPLER: 'bogus' }, /^OTEL_TRACES_SAMPLER must be one of always_on/],
      [
        { KEEPALIVE_TIMEOUT_MS: '6000' },
        /^KEEPALIVE_TIMEOUT_MS must be under vLLM's own idle keep-alive of 5000 ms/,
      ],
      [
        { VLLM_BASE_URL: 'http://vllm:8000/api' },
        /^VLLM_BASE_URL must be a server's origin.*"\/api" would be ignored/,
      ],
      [{ LOG_LEVEL: 'verbose' }, /^LOG_LEVEL must be one of fatal, error, warn, info/],
      [{ HOST: 'not a host!' }, /^HOST must be an IP address or a host name/],
      [{ ADMIN_KEY: 'short' }, /^ADMIN_KEY must be at least 16 characters/],
      [
        { METRICS_PER_KEY: 'true' },
        /^METRICS_PER_KEY=true publishes key names .* set METRICS_PORT .* or ADMIN_KEY/,
      ],
    ];
    for (const [env, message] of bad) expect(() => loadConfig(env)).toThrow(message);
    // An OpenAI-style base URL with /v1 is accepted: the gateway adds /v1/... itself.
    expect(loadConfig({ VLLM_BASE_URL: 'http://vllm:8000/v1/' }).vllmBaseUrls).toEqual(['http://vllm:8000']);
  });

  it('says in one line that a port is in use, and starts with Redis down saying so once, without a flood', async () => {
    const taken = await freePort();
    const sim = await startVllmSimulator({ model: 'm' });
    onCleanup(() => sim.close());
    try {
      const busy = await runGateway({ PORT: String(taken.port), VLLM_BASE_URL: sim.url });
      expect(busy.code).not.toBe(0);
      expect(busy.out).toContain(`cannot listen on HOST:PORT (127.0.0.1:${taken.port}): the port is in use`);
      expect(busy.out).not.toMatch(/\n\s+at /); // no stack
    } finally {
      await taken.close();
    }
    const closed = await freePort();
    await closed.close();
    const down = await runGateway(
      { REDIS_URL: `redis://127.0.0.1:${closed.port}`, VLLM_BASE_URL: sim.url },
      /listening on/,
    );
    expect(down.out).toMatch(/listening on/);
    expect(down.out).not.toContain('Unhandled error event');
    // One line per worker when Redis is unreachable, however many reconnection attempts follow.
    expect(down.out.match(/redis unreachable/g)?.length ?? 0).toBeLessThanOrEqual(2);
    expect(down.out).toMatch(/redis unreachable/);
    // The shutdown lines: draining (with the open requests), then stopped.
    expect(down.out).toMatch(/gateway: draining: 0 open requests in 2 workers, up to 30 s\n/);
    expect(down.out).toMatch(/gateway: stopped\n/);
    expect(down.code).toBe(0);
  }, 60_000);

  it('counts a stream its client abandoned as 499, not 200', async () => {
    const sim = await simulator({ itlMs: 20, outputTokens: 200 });
    const { url, key } = await setup({}, sim);
    await new Promise<void>((done) => {
      const req = request(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      });
      req.on('response', (res) => {
        res.once('data', () => {
          req.destroy();
          done();
        });
      });
      req.on('error', () => {});
      req.end(JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], stream: true }));
    });
    await new Promise((r) => setTimeout(r, 200));
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/gateway_requests_total\{route="\/v1\/chat\/completions",status="499"\} 1/);
    expect(metrics).not.toMatch(/gateway_requests_total\{route="\/v1\/chat\/completions",status="200"\}/);
  });

  it('wraps an upstream 5xx in its own error shape and never relays the body (it may hold secrets)', async () => {
    const upstream = createHttpServer((req, res) => {
      req.resume();
      const status = req.url === '/v1/completions' ? 503 : 500;
      res.writeHead(status, {
        'content-type': 'text/html',
        ...(status === 503 ? { 'retry-after': '7' } : {}),
      });
      res.end('<html><pre>Traceback: db password=hunter2 at /srv/app.py</pre></html>');
    });
    await new Promise<void>((done) => upstream.listen(0, '127.0.0.1', done));
    onGatewayCleanup(() => new Promise((done) => upstream.close(done)));
    const { url, key } = await setup(
      {},
      { url: `http://127.0.0.1:${(upstream.address() as { port: number }).port}` },
    );
    const call = (path: string, body: object) =>
      fetch(`${url}${path}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const failed = await call('/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] });
    expect(failed.status).toBe(502);
    expect(failed.headers.get('content-type')).toBe('application/json');
    const text = await failed.text();
    expect(text).not.toContain('hunter2');
    expect(JSON.parse(text).error).toMatchObject({ type: 'upstream_error', code: 'upstream_server_error' });
    const busy = await call('/v1/completions', { prompt: 'hi' });
    expect(busy.status).toBe(503);
    expect(busy.headers.get('retry-after')).toBe('7');
    expect(((await busy.json()) as { error: { code: string } }).error.code).toBe('upstream_overloaded');
  });

  it('answers 413 to a client still uploading 64 MB, and it reads the answer (no connection reset)', async () => {
    const { url, key } = await setup({ MAX_BODY_BYTES: '1048576' });
    for (let run = 0; run < 3; run++) {
      const reply = await new Promise<{ status: number; body: string }>((done, fail) => {
        const req = request(`${url}/v1/chat/completions`, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${key}`,
            'content-type': 'application/json',
            // Chunked: the size is not declared, so the gateway finds out while the upload runs.
            ...(run === 2 ? { 'content-length': String(64 << 20) } : {}),
          },
        });
        req.on('response', (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => done({ status: res.statusCode!, body }));
          res.on('error', fail);
        });
        req.on('error', fail);
        const chunk = Buffer.alloc(1 << 20, 0x20);
        let sent = 0;
        const pump = () => {
          while (sent < 64) {
            sent++;
            if (!req.write(chunk)) return void req.once('drain', pump);
          }
          req.end();
        };
        pump();
      });
      expect(reply.status).toBe(413);
      expect(JSON.parse(reply.body).error.code).toBe('body_too_large');
    }
  }, 60_000);
});
