// The gateway against what an attacker or a careless operator sends: each test here failed before its fix
// (issue 13's items, numbered as there).
import { describe, expect, it } from 'vitest';
import { post, trackGateways } from '../helpers/gateway.js';

const { setup } = trackGateways();

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
