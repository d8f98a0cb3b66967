import { UsageMeter } from '../src/key-budgets/usage.js';
import { startVllmSimulator } from '../src/testing/index.js';

const sim = await startVllmSimulator({ model: 'm', outputTokens: 200 });
const res = await fetch(`${sim.url}/v1/chat/completions`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({
    messages: [{ role: 'user', content: 'hi there friend' }],
    stream: true,
    stream_options: { include_usage: true, continuous_usage_stats: true },
  }),
});
const text = await res.text();
await sim.close();
const chunks = text
  .split('\n\n')
  .filter(Boolean)
  .map((e) => Buffer.from(`${e}\n\n`));
const plain = chunks.map((c) => Buffer.from(c.toString().replace(/,"usage":\{[^}]*\}/, '')));
for (const [name, list, strip] of [
  ['continuous strip all', chunks, 'all'],
  ['continuous keep', chunks, 'none'],
  ['no usage', plain, 'none'],
] as const) {
  const run = () => {
    const m = new UsageMeter({ stream: true, strip });
    for (const c of list) m.write(c);
    m.end();
    m.usage();
  };
  for (let i = 0; i < 2000; i++) run();
  const t = process.hrtime.bigint();
  for (let i = 0; i < 5000; i++) run();
  console.log(name, (Number(process.hrtime.bigint() - t) / 5000 / 1000 / list.length).toFixed(3), 'µs/event');
}
