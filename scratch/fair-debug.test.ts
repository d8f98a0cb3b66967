import { it } from 'vitest';
import { post, trackGateways } from '../helpers/gateway.js';
const gateways = trackGateways();
it('debug', async () => {
  const sim = await gateways.simulator({ ttftMs: 20, itlMs: 2, outputTokens: 20 });
  const g = await gateways.setup({ RATE_LIMIT_POINTS: '1000000', LIMIT_CONCURRENCY: '2', QUEUE_POLICY: 'fair' }, sim);
  const flood = (await g.gateway.keyStore.create('flood')).key;
  const a = (await g.gateway.keyStore.create('a')).key;
  const body = JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] });
  const t0 = performance.now();
  const log: string[] = [];
  await Promise.all([...Array(30).fill(['flood', flood]), ['a', a]].map(async ([label, key], i) => {
    await new Promise((r) => setTimeout(r, i));
    const sent = performance.now() - t0;
    const res = await post(g.url, '/v1/chat/completions', { key, body });
    await res.text();
    log.push(`${label} sent ${sent.toFixed(0)} done ${(performance.now() - t0).toFixed(0)} ${res.status}`);
  }));
  console.log(log.join('\n'));
}, 60000);
