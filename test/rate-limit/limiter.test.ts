// The limiter with the memory store: window arithmetic, the exact budget, headers, skip rules, node:http.
import { createServer, type Server } from 'node:http';
import { type AddressInfo, createConnection } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createIpRateLimiter, type IpRateLimiter, isInvalidOptionError } from '../../src/index.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()));
});
function limiter(options: Parameters<typeof createIpRateLimiter>[0] = {}): IpRateLimiter {
  const l = createIpRateLimiter(options);
  cleanups.push(() => l.close());
  return l;
}

describe('createIpRateLimiter (memory)', () => {
  it('lets exactly 20 of 25 requests through', async () => {
    const l = limiter();
    const decisions = [];
    for (let i = 0; i < 25; i++) decisions.push(await l.check('203.0.113.7'));
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
    expect(decisions.slice(0, 20).every((d) => d.allowed)).toBe(true);
    expect(decisions[19]).toMatchObject({ remaining: 0, limit: 20 });
    expect(decisions[20]).toMatchObject({ allowed: false, remaining: 0 });
    // Another client has its own budget.
    expect((await l.check('203.0.113.8')).allowed).toBe(true);
  });

  it('does its window arithmetic on the injected clock: the window starts at the first request', async () => {
    let now = 1_000_000;
    const l = limiter({ points: 3, windowSec: 60, now: () => now });
    expect(await l.check('1.1.1.1')).toMatchObject({ allowed: true, remaining: 2, resetMs: 60_000 });
    now += 10_000;
    await l.check('1.1.1.1');
    const third = await l.check('1.1.1.1');
    expect(third).toMatchObject({ allowed: true, remaining: 0, resetMs: 50_000 });
    const denied = await l.check('1.1.1.1');
    expect(denied).toMatchObject({ allowed: false, retryAfterSec: 50, resetMs: 50_000 });
    now += 49_999;
    expect((await l.check('1.1.1.1')).allowed).toBe(false);
    now += 1;
    expect(await l.check('1.1.1.1')).toMatchObject({ allowed: true, remaining: 2, resetMs: 60_000 });
    // Long after, across several generations, it starts afresh.
    now += 10 * 61_000;
    expect(await l.check('1.1.1.1')).toMatchObject({ allowed: true, remaining: 2 });
  });

  it('produces exact header values', async () => {
    let now = 5_000_000;
    const l = limiter({ points: 2, windowSec: 60, legacyHeaders: true, name: 'ip', now: () => now });
    const first = await l.check('1.1.1.1');
    expect(l.headers(first)).toEqual({
      'ratelimit-policy': '"ip";q=2;w=60',
      ratelimit: '"ip";r=1;t=60',
      'ratelimit-limit': '2',
      'ratelimit-remaining': '1',
      'ratelimit-reset': '60',
    });
    now += 15_500;
    await l.check('1.1.1.1');
    const denied = await l.check('1.1.1.1');
    expect(l.headers(denied)).toEqual({
      'ratelimit-policy': '"ip";q=2;w=60',
      ratelimit: '"ip";r=0;t=45',
      'ratelimit-limit': '2',
      'ratelimit-remaining': '0',
      'ratelimit-reset': '45',
      'retry-after': '45',
    });
    const quiet = limiter({ standardHeaders: false });
    expect(quiet.headers(await quiet.check('1.1.1.1'))).toEqual({});
  });

  it('keys IPv6 clients by /64 and IPv4-mapped addresses as IPv4', async () => {
    const l = limiter({ points: 2 });
    await l.check('2001:db8:1:2::1');
    await l.check('2001:db8:1:2:dead:beef::9');
    expect((await l.check('2001:db8:1:2:ffff::ffff')).allowed).toBe(false);
    await l.check('::ffff:192.0.2.1');
    await l.check('192.0.2.1');
    expect((await l.check('192.0.2.1')).allowed).toBe(false);
  });

  it('honours keyGenerator, skip and the allowlist', async () => {
    const l = limiter({
      points: 1,
      keyGenerator: (req) => (req.headers['x-api-key'] as string | undefined) ?? undefined,
      skip: (req) => req.headers['x-internal'] === '1',
      allowlist: ['10.0.0.0/8'],
    });
    const req = (headers: Record<string, string>, address = '198.51.100.1') =>
      ({ headers, socket: { remoteAddress: address } }) as never;
    expect((await l.check(req({ 'x-api-key': 'a' }))).key).toBe('a');
    expect((await l.check(req({ 'x-api-key': 'a' }))).allowed).toBe(false);
    expect((await l.check(req({ 'x-api-key': 'b' }))).allowed).toBe(true);
    expect(await l.check(req({ 'x-internal': '1' }))).toMatchObject({ allowed: true, key: undefined });
    expect((await l.check(req({}, '10.1.2.3'))).key).toBeUndefined();
    await l.reset('a');
    expect((await l.check(req({ 'x-api-key': 'a' }))).allowed).toBe(true);
  });

  it('consume() charges a cost', async () => {
    const l = limiter({ points: 10 });
    expect(await l.consume('k', 7)).toMatchObject({ allowed: true, remaining: 3 });
    expect(await l.consume('k', 4)).toMatchObject({ allowed: false, remaining: 0 });
  });

  it('refuses bad options, and trustProxy: true in particular', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ trustProxy: true }, 'trusting every X-Forwarded-For lets any client choose its own IP'],
      [{ points: 0 }, 'Expected `points` to be an integer >= 1'],
      [{ windowSec: 0.5 }, 'Expected `windowSec` to be an integer >= 1'],
      [
        { trustProxy: ['10.0.0.0/33'] },
        'Expected `trustProxy` entries to be IP addresses or CIDRs, got "10.0.0.0/33"',
      ],
      [{ allowlist: ['nope'] }, 'Expected `allowlist` entries'],
      [{ store: 'postgres' }, 'Expected `store` to be "memory", "cluster" or an ioredis client'],
      [{ store: 'cluster' }, 'in a node:cluster worker'],
      [{ onStoreError: 'maybe' }, 'Expected `onStoreError` to be one of "insurance", "open", "closed"'],
      [{ ipv6Subnet: 0 }, 'Expected `ipv6Subnet` to be an integer >= 1'],
      [
        { proxyHeader: 'x-real-ip' },
        'Expected `proxyHeader` to be one of "x-forwarded-for", "forwarded", got `"x-real-ip"` (string)',
      ],
      [{ limit: 5 }, 'Unknown option `limit`'],
    ];
    for (const [options, message] of cases) {
      let error: unknown;
      try {
        createIpRateLimiter(options as never);
      } catch (e) {
        error = e;
      }
      expect((error as Error)?.message, JSON.stringify(options)).toContain(message);
      expect(isInvalidOptionError(error)).toBe(true);
    }
  });
});

describe('node:http adapter', () => {
  async function serve(l: IpRateLimiter): Promise<string> {
    const server: Server = createServer(async (req, res) => {
      if (!(await l.handle(req, res))) return;
      res.end('ok');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => server.close(resolve)));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  it('answers 429 with Retry-After and an OpenAI-style body; a spoofed X-Forwarded-For is ignored', async () => {
    const url = await serve(limiter({ points: 2 }));
    const statuses: number[] = [];
    let last: Response | undefined;
    for (let i = 0; i < 3; i++) {
      last = await fetch(url, { headers: { 'x-forwarded-for': `1.2.3.${i}` } });
      statuses.push(last.status);
    }
    expect(statuses).toEqual([200, 200, 429]);
    expect(last!.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(last!.headers.get('ratelimit')).toMatch(/^"default";r=0;t=\d+$/);
    expect(await last!.json()).toEqual({
      error: {
        message: expect.stringContaining('Rate limit exceeded: 2 requests per 60 seconds'),
        type: 'rate_limit_exceeded',
        param: null,
        code: 'rate_limit_exceeded',
      },
    });
  });

  it('honours X-Forwarded-For through exactly the trusted hops', async () => {
    const url = await serve(limiter({ points: 1, trustProxy: ['127.0.0.1/32'] }));
    const send = (xff: string) => fetch(url, { headers: { 'x-forwarded-for': xff } }).then((r) => r.status);
    expect(await send('198.51.100.1')).toBe(200);
    expect(await send('198.51.100.2')).toBe(200);
    expect(await send('198.51.100.1')).toBe(429);
    // An extra hop the client wrote itself is not believed: 198.51.100.2 is what the trusted proxy saw.
    expect(await send('6.6.6.6, 198.51.100.2')).toBe(429);
  });

  it('cannot be escaped with a client-sent Forwarded header behind a proxy that appends X-Forwarded-For', async () => {
    const url = await serve(limiter({ points: 20, trustProxy: 1 }));
    // An nginx-like proxy: appends the client's address to X-Forwarded-For and passes every other header through.
    const proxy = createServer((req, res) => {
      const headers = { ...req.headers } as Record<string, string>;
      const peer = req.socket.remoteAddress!.replace('::ffff:', '');
      headers['x-forwarded-for'] = headers['x-forwarded-for']
        ? `${headers['x-forwarded-for']}, ${peer}`
        : peer;
      fetch(url + req.url, { headers }).then(async (reply) => {
        res.writeHead(reply.status);
        res.end(await reply.text());
      });
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => proxy.close(resolve)));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) {
      const reply = await fetch(proxyUrl, { headers: { forwarded: `for=198.51.100.${i}` } });
      statuses.push(reply.status);
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(20);
    expect(statuses.slice(20).every((s) => s === 429)).toBe(true);
  });

  it("reads Forwarded only when it is the operator's proxyHeader", async () => {
    const url = await serve(limiter({ points: 1, trustProxy: 1, proxyHeader: 'forwarded' }));
    const send = (headers: Record<string, string>) => fetch(url, { headers }).then((r) => r.status);
    expect(await send({ forwarded: 'for=198.51.100.1' })).toBe(200);
    expect(await send({ forwarded: 'for=198.51.100.2' })).toBe(200);
    expect(await send({ forwarded: 'for=198.51.100.1' })).toBe(429);
    // X-Forwarded-For is not read now: both requests count against the peer, 127.0.0.1.
    expect(await send({ 'x-forwarded-for': '198.51.100.3' })).toBe(200);
    expect(await send({ 'x-forwarded-for': '198.51.100.4' })).toBe(429);
  });

  it('counts a client that sends no headers at all by its socket address', async () => {
    const url = new URL(await serve(limiter({ points: 1 })));
    const raw = () =>
      new Promise<string>((resolve) => {
        const socket = createConnection(Number(url.port), '127.0.0.1');
        let data = '';
        socket.on('data', (chunk) => (data += chunk));
        socket.on('end', () => resolve(data.split('\r\n')[0]!));
        socket.write('GET / HTTP/1.0\r\n\r\n');
      });
    expect(await raw()).toBe('HTTP/1.1 200 OK');
    expect(await raw()).toBe('HTTP/1.1 429 Too Many Requests');
  });
});
