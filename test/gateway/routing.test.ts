// The gateway routes by prefix across replicas: the body it parsed anyway gives the key, X-Session-Id overrides it,
// and /metrics counts what went where.
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../examples/gateway/config.js';
import { generations, post, trackGateways } from '../helpers/gateway.js';

const { setup, simulator } = trackGateways();
const conversation = (id: number, turn: number) =>
  JSON.stringify({
    messages: [
      { role: 'system', content: `Session ${id}. ${'Long instructions for this session. '.repeat(10)}` },
      ...Array.from({ length: turn }, (_, t) => [
        { role: 'user', content: `q${t}` },
        { role: 'assistant', content: `a${t}` },
      ]).flat(),
      { role: 'user', content: 'next' },
    ],
    max_tokens: 1,
  });

describe('gateway routing', () => {
  it('keeps each conversation on one replica and counts prefix-routed requests per upstream', async () => {
    const [a, b, c] = [await simulator(), await simulator(), await simulator()];
    const { url, key } = await setup({ RATE_LIMIT_POINTS: '1000' }, a, [b.url, c.url]);
    for (let turn = 0; turn < 3; turn++) {
      for (let id = 0; id < 9; id++) {
        const reply = await post(url, '/v1/chat/completions', { key, body: conversation(id, turn) });
        expect(reply.status).toBe(200);
        await reply.arrayBuffer();
      }
    }
    // Nine conversations placed three per replica, each whole on its replica.
    expect([a, b, c].map((sim) => generations(sim))).toEqual([9, 9, 9]);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const total = (how: string) =>
      [
        ...metrics.matchAll(
          new RegExp(`gateway_upstream_routed_total\\{upstream="[^"]+",how="${how}"\\} (\\d+)`, 'g'),
        ),
      ]
        .map((m) => Number(m[1]))
        .reduce((x, y) => x + y, 0);
    // Each first turn placed, the later turns following their conversation's cached prefix.
    expect([total('placed'), total('prefix'), total('fallback')]).toEqual([9, 18, 0]);
  });

  it('X-Session-Id keeps a session together whatever its prompts; ROUTING=least-outstanding ignores prefixes', async () => {
    const sims = [await simulator(), await simulator(), await simulator()];
    const { url, key } = await setup({ RATE_LIMIT_POINTS: '1000' }, sims[0], [sims[1]!.url, sims[2]!.url]);
    for (let i = 0; i < 6; i++) {
      const reply = await post(url, '/v1/chat/completions', {
        key,
        headers: { 'x-session-id': 'conversation-7' },
        body: JSON.stringify({ messages: [{ role: 'user', content: `unrelated ${i}` }], max_tokens: 1 }),
      });
      await reply.arrayBuffer();
    }
    expect(sims.map((s) => generations(s)).sort()).toEqual([0, 0, 6]);
    expect(loadConfig({ ROUTING: 'least-outstanding' }).routing).toBe('least-outstanding');
    expect(loadConfig({}).routing).toBe('prefix');
    expect(loadConfig({ ROUTING_LOAD_FACTOR: '1.5' }).routingLoadFactor).toBe(1.5);
    expect(() => loadConfig({ ROUTING: 'random' })).toThrow(ConfigError);
    expect(() => loadConfig({ ROUTING_LOAD_FACTOR: '0.9' })).toThrow(
      'ROUTING_LOAD_FACTOR must be a number from 1 to 100, got "0.9"',
    );
  });
});
