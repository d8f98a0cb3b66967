// The gateway against what an attacker or a careless operator sends: each test here failed before its fix
// (issue 13's items, numbered as there).
import { createServer } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { ADMIN_KEY, admin, generations, post, trackGateways } from '../helpers/gateway.js';

const { setup, simulator, onCleanup } = trackGateways();

/** A bare upstream answering every request with `status`, `headers` and an OpenAI-style error body. */
async function fixedUpstream(status: number, headers: Record<string, string> = {}) {
  const paths: string[] = [];
  const server = createServer((req, res) => {
    paths.push(req.url!);
    req.resume();
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify({ error: { message: 'nope', type: 'x', param: null, code: status } }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onCleanup(() => new Promise((resolve) => server.close(resolve)));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    /** Requests other than the gateway's background health probe (GET /health, /v1/models). */
    requests: () => paths.filter((p) => p !== '/health' && p !== '/v1/models').length,
    paths,
  };
}

describe('client addresses behind a proxy (1)', () => {
  it('a client-sent Forwarded header cannot pick its rate-limit key (TRUST_PROXY=1)', async () => {
    const { url, key } = await setup({ TRUST_PROXY: '1', RATE_LIMIT_POINTS: '20' });
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) {
      const reply = await post(url, '/v1/chat/completions', {
        key,
        headers: { forwarded: `for=198.51.100.${i}`, 'x-forwarded-for': '203.0.113.9' },
      });
      await reply.arrayBuffer();
      statuses.push(reply.status);
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(20);
    expect(statuses.slice(20).every((s) => s === 429)).toBe(true);
  });

  it('TRUST_PROXY_HEADER=forwarded reads Forwarded and ignores X-Forwarded-For', async () => {
    const { url, key } = await setup({
      TRUST_PROXY: '1',
      TRUST_PROXY_HEADER: 'forwarded',
      RATE_LIMIT_POINTS: '1',
    });
    const status = async (headers: Record<string, string>) => {
      const reply = await post(url, '/v1/chat/completions', { key, headers });
      await reply.arrayBuffer();
      return reply.status;
    };
    expect(await status({ forwarded: 'for=198.51.100.1' })).toBe(200);
    expect(await status({ forwarded: 'for=198.51.100.2' })).toBe(200);
    expect(await status({ forwarded: 'for=198.51.100.1' })).toBe(429);
    expect(await status({ 'x-forwarded-for': '198.51.100.3' })).toBe(200);
    expect(await status({ 'x-forwarded-for': '198.51.100.4' })).toBe(429);
  });
});

describe('upstream refusals (4, 5)', () => {
  it('an upstream 429 is answered at once with its Retry-After, and the slot is free for the next request', async () => {
    const sim = await simulator({ faults: { status: { status: 429, retryAfterSec: 7, times: 1 } } });
    const { url, key } = await setup({ LIMIT_CONCURRENCY: '1', MAX_QUEUE: '0' }, sim);
    const refused = await post(url, '/v1/chat/completions', { key });
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('7');
    await refused.arrayBuffer();
    expect(generations(sim)).toBe(1);
    // With one slot and no queue, this would be a 503 queue_full if the 429 still held the slot.
    const next = await post(url, '/v1/chat/completions', { key });
    expect(next.status).toBe(200);
    await next.arrayBuffer();
  });

  it('passes retry-after-ms through on a 503', async () => {
    const upstream = await fixedUpstream(503, { 'retry-after': '2', 'retry-after-ms': '1500' });
    const { url, key } = await setup({}, upstream);
    const reply = await post(url, '/v1/chat/completions', { key });
    expect(reply.status).toBe(503);
    expect(reply.headers.get('retry-after')).toBe('2');
    expect(reply.headers.get('retry-after-ms')).toBe('1500');
    await reply.arrayBuffer();
    expect(upstream.requests()).toBe(1);
  });

  it('/health answers from the background probe: each replica asked once per probe, a flood costs them nothing', async () => {
    const a = await fixedUpstream(503);
    const b = await fixedUpstream(503);
    const sim = await simulator();
    const { url } = await setup({ ADMIN_KEY, HEALTH_INTERVAL_MS: '60000' }, sim, [a.url, b.url]);
    const reply = await fetch(`${url}/health`, admin);
    expect(reply.status).toBe(200);
    expect(await reply.json()).toMatchObject({
      upstreams: [
        { url: sim.url, healthy: true },
        { url: a.url, healthy: false },
        { url: b.url, healthy: false },
      ],
    });
    // 200 calls (the flood once made 6 upstream requests each): no upstream request at all. (Each replica was asked
    // once by the probe, /health and /v1/models, and once more for its models by the client's model discovery.)
    const before = [a.paths.length, b.paths.length];
    await Promise.all(Array.from({ length: 200 }, () => fetch(`${url}/health`).then((r) => r.arrayBuffer())));
    expect([a.paths.length, b.paths.length]).toEqual(before);
    expect(a.paths.filter((p) => p === '/health')).toEqual(['/health']);
  });
});

/** A pino logger whose lines the test can read. */
function capturedLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: 'info' },
    { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, lines };
}

describe('an upstream that dies mid-stream (6)', () => {
  it('is logged and counted as an upstream failure (502), not as a 200', async () => {
    const sim = await simulator({ itlMs: 5, faults: { resetMidStream: { afterTokens: 3, times: 1 } } });
    const { logger, lines } = capturedLogger();
    const { url, key } = await setup({}, sim, [], logger);
    const reply = await post(url, '/v1/chat/completions', {
      key,
      body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 50, stream: true }),
    });
    expect(reply.status).toBe(200);
    // The client sees the cut: its body ends in an error, without [DONE].
    await expect(reply.text()).rejects.toThrow();
    await expect.poll(() => lines.find((l) => l.msg === 'request')).toMatchObject({ status: 502 });
    expect(lines.find((l) => l.msg === 'upstream failed mid-response')).toMatchObject({ level: 40 });
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toContain('gateway_requests_total{route="/v1/chat/completions",status="502"} 1');
    expect(metrics).not.toContain('status="200"');
    expect(metrics).toContain('gateway_upstream_failures_total{kind="mid_response"} 1');
  });
});

describe('a wrong VLLM_API_KEY (8)', () => {
  it('answers 502 naming the gateway credentials, logs it, and /health reports it', async () => {
    const sim = await simulator({ apiKey: 'sk-upstream-right' });
    const { logger, lines } = capturedLogger();
    const { url, key } = await setup({ VLLM_API_KEY: 'sk-upstream-wrong', ADMIN_KEY }, sim, [], logger);
    const reply = await post(url, '/v1/chat/completions', { key });
    expect(reply.status).toBe(502);
    const body = (await reply.json()) as { error: Record<string, unknown> };
    expect(body.error).toMatchObject({ type: 'upstream_error', code: 'upstream_credentials_rejected' });
    expect(String(body.error.message)).toContain('VLLM_API_KEY');
    expect(JSON.stringify(body)).not.toContain('sk-upstream');
    expect(lines.some((l) => String(l.msg).includes('VLLM_API_KEY') && l.level === 50)).toBe(true);
    expect(JSON.stringify(lines)).not.toContain('sk-upstream');
    const health = await fetch(`${url}/health`, admin);
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({
      status: 'degraded',
      upstreams: [{ url: sim.url, healthy: true, credentials: 'rejected' }],
    });
    const metrics = await (await fetch(`${url}/metrics`, admin)).text();
    expect(metrics).toContain('gateway_upstream_failures_total{kind="credentials"} 1');
  });

  it('with the right key, /health says the credentials are accepted', async () => {
    const sim = await simulator({ apiKey: 'sk-upstream-right' });
    const { url } = await setup({ VLLM_API_KEY: 'sk-upstream-right', ADMIN_KEY }, sim);
    expect(await (await fetch(`${url}/health`, admin)).json()).toMatchObject({
      status: 'ok',
      upstreams: [{ credentials: 'ok' }],
    });
  });
});

describe('browsers: CORS and HEAD (9)', () => {
  const app = 'https://app.example.com';
  const preflight = (url: string, origin: string, path = '/v1/chat/completions') =>
    fetch(`${url}${path}`, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    });

  it('answers a preflight from an allowed origin, and refuses others', async () => {
    const { url, key } = await setup({
      CORS_ORIGINS: `${app},http://localhost:5173`,
      RATE_LIMIT_POINTS: '2',
    });
    // Preflights are neither rate limited nor authenticated (browsers send no credentials with them).
    for (let i = 0; i < 3; i++) {
      const ok = await preflight(url, app);
      expect(ok.status).toBe(204);
      expect(ok.headers.get('access-control-allow-origin')).toBe(app);
      expect(ok.headers.get('access-control-allow-methods')).toBe('POST, OPTIONS');
      expect(ok.headers.get('access-control-allow-headers')).toContain('authorization');
      expect(ok.headers.get('access-control-max-age')).toBe('600');
      expect(ok.headers.get('access-control-allow-credentials')).toBeNull();
      expect(ok.headers.get('vary')).toBe('origin');
    }
    const refused = await preflight(url, 'https://evil.example');
    expect(refused.status).toBe(403);
    expect(refused.headers.get('access-control-allow-origin')).toBeNull();
    expect(await refused.json()).toMatchObject({ error: { code: 'cors_origin_not_allowed' } });
    // The real request carries the allow-origin and exposes the headers a front end reads.
    const real = await post(url, '/v1/chat/completions', { key, headers: { origin: app } });
    expect(real.status).toBe(200);
    expect(real.headers.get('access-control-allow-origin')).toBe(app);
    expect(real.headers.get('access-control-expose-headers')).toContain('retry-after');
    await real.arrayBuffer();
    const other = await fetch(`${url}/health`, { headers: { origin: 'https://evil.example' } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('without CORS_ORIGINS refuses preflights; a plain OPTIONS lists the methods', async () => {
    const { url } = await setup();
    expect((await preflight(url, app)).status).toBe(403);
    const plain = await fetch(`${url}/v1/models`, { method: 'OPTIONS' });
    expect(plain.status).toBe(204);
    expect(plain.headers.get('allow')).toBe('GET, HEAD, OPTIONS');
  });

  it('CORS_ORIGINS=* allows any origin, never with credentials', async () => {
    const { url } = await setup({ CORS_ORIGINS: '*' });
    const ok = await preflight(url, 'https://anyone.example');
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe('*');
    expect(ok.headers.get('access-control-allow-credentials')).toBeNull();
  });

  it('answers HEAD on GET routes, without a body', async () => {
    const { url, key } = await setup();
    const health = await fetch(`${url}/health`, { method: 'HEAD' });
    expect(health.status).toBe(200);
    expect(health.headers.get('content-type')).toBe('application/json');
    expect(await health.text()).toBe('');
    const models = await fetch(`${url}/v1/models`, {
      method: 'HEAD',
      headers: { authorization: `Bearer ${key}` },
    });
    expect(models.status).toBe(200);
    expect(await models.text()).toBe('');
    expect((await fetch(`${url}/v1/chat/completions`, { method: 'HEAD' })).status).toBe(405);
  });
});

/** Sends raw bytes on a new connection; resolves with what came back and how long until the server closed it. */
function rawExchange(url: string, bytes: string | Buffer): Promise<{ text: string; ms: number }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const socket = connect(Number(port), hostname);
    let text = '';
    socket.on('data', (chunk) => (text += chunk));
    socket.on('close', () => resolve({ text, ms: performance.now() - started }));
    socket.on('error', reject);
    socket.write(bytes);
  });
}

describe('slow clients (10)', () => {
  it('HEADERS_TIMEOUT_MS fires within a second or two of its value, not at the next 30 s check', async () => {
    const { url } = await setup({ HEADERS_TIMEOUT_MS: '1000', REQUEST_TIMEOUT_MS: '2000' });
    // Headers that never finish.
    const { text, ms } = await rawExchange(url, 'GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    expect(text).toMatch(/^HTTP\/1\.1 408/);
    // A bound, not a speed target: Node's default 30 s check interval would close it after ~30 s.
    expect(ms).toBeLessThan(10_000);
  }, 20_000);
});

describe('hostile bodies and request lines (13, 15)', () => {
  it('refuses invalid UTF-8 as invalid_json, before it goes upstream', async () => {
    const { url, key, sim } = await setup();
    const bytes = Buffer.concat([
      Buffer.from('{"messages":[{"role":"user","content":"'),
      Buffer.from([0xc3, 0x28, 0xff]),
      Buffer.from('"}],"max_tokens":1}'),
    ]);
    const reply = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: bytes,
    });
    expect(reply.status).toBe(400);
    expect(await reply.json()).toMatchObject({ error: { code: 'invalid_json' } });
    expect(generations(sim)).toBe(0);
  });

  it('routes an absolute-form request line by its path, and never echoes request text beyond a plain path', async () => {
    const { url } = await setup();
    const routed = await rawExchange(
      url,
      'GET http://gateway.example/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(routed.text).toMatch(/^HTTP\/1\.1 200/);
    const hostile = await rawExchange(
      url,
      'GET http://evil.example/<script>alert(1)</script> HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(hostile.text).toMatch(/^HTTP\/1\.1 404/);
    expect(hostile.text).not.toContain('evil.example');
    expect(hostile.text).not.toContain('<script>');
    expect(hostile.text).toContain('"message":"Unknown route"');
    const plain = await fetch(`${url}/v2/nothing`);
    expect(await plain.json()).toMatchObject({ error: { message: 'Unknown route /v2/nothing' } });
  });

  it('malformed keys cost no lookup; repeats of a well-formed wrong key are answered from the negative cache', async () => {
    const { url } = await setup({ RATE_LIMIT_POINTS: '1000' });
    const statuses: number[] = [];
    for (let i = 0; i < 50; i++) {
      const reply = await post(url, '/v1/chat/completions', { key: `garbage-${i}` });
      statuses.push(reply.status);
      await reply.arrayBuffer();
    }
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 20; i++) {
        const reply = await post(url, '/v1/chat/completions', { key: `vk-${String(i).padStart(43, 'x')}` });
        statuses.push(reply.status);
        await reply.arrayBuffer();
      }
    }
    expect(statuses.every((s) => s === 401)).toBe(true);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toContain('gateway_token_cache_total{outcome="miss"} 20');
    expect(metrics).toContain('gateway_token_cache_total{outcome="negative_hit"} 20');
  });
});
