// A/B: the gateway before this session's work (9eb400a) against now, same simulator, autocannon, ABBA rounds.
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runAutocannon } from '../bench/lib/autocannon.js';
import { startChild } from '../bench/lib/child.js';
import { freePort, waitForOk } from '../bench/lib/gateway.js';
import { median } from '../bench/lib/load.js';
import { openKeyStore } from '../examples/gateway/key-store.js';

const sim = await startChild(resolve('bench/servers/simulator.ts'));
async function start(root: string, env: Record<string, string> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ab-'));
  const databaseUrl = `sqlite:${join(dir, 'keys.db')}`;
  const store = await openKeyStore(databaseUrl);
  const { key } = await store.create('bench');
  await store.close();
  const port = await freePort();
  const child = spawn(process.execPath, [join(root, 'examples/gateway/dist/main.js')], {
    cwd: root,
    env: { ...process.env, ENV: 'production', HOST: '127.0.0.1', PORT: String(port), VLLM_BASE_URL: sim.url, DATABASE_URL: databaseUrl, REDIS_URL: '', WORKERS: '1', RATE_LIMIT_POINTS: '2000000', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForOk(`${url}/health`);
  return { url, key, child };
}
const targets = {
  old: await start('/tmp/old-gw'),
  new: await start('/work/main'),
  newFifo: await start('/work/main', { QUEUE_POLICY: 'fifo' }),
};
const body = JSON.stringify({ messages: [{ role: 'user', content: 'Say something short.' }], max_tokens: 16 });
const run = (t: { url: string; key: string }) => runAutocannon({ url: t.url, path: '/v1/chat/completions', body, headers: { authorization: `Bearer ${t.key}` }, connections: 32, durationSec: 2 });
for (const t of Object.values(targets)) await run(t);
const rps: Record<string, number[]> = { old: [], new: [], newFifo: [] };
for (let round = 0; round < 6; round++) {
  const order = round % 2 ? ['newFifo', 'new', 'old'] : ['old', 'new', 'newFifo'];
  for (const name of order) rps[name]!.push((await run(targets[name as keyof typeof targets])).rps);
}
for (const t of Object.values(targets)) t.child.kill('SIGTERM');
await sim.stop();
const ratio = (a: string) => median(rps[a]!.map((v, i) => v / rps.old![i]!));
console.log(JSON.stringify({ medians: Object.fromEntries(Object.entries(rps).map(([k, v]) => [k, Math.round(median(v))])), newVsOld: ratio('new'), newFifoVsOld: ratio('newFifo') }));
process.exit(0);
