// The gateway at another git revision against the working tree, side by side: the same zero-latency simulator,
// autocannon (32 connections, short answers), rounds alternating the order, median of per-round ratios. Answers "did
// this change make the gateway slower?" on a machine whose speed drifts, where comparing two reports cannot.
// Run: npx tsx bench/compare.ts <git revision> [--rounds N]
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { openKeyStore } from '../examples/gateway/key-store.js';
import { runAutocannon } from './lib/autocannon.js';
import { startChild } from './lib/child.js';
import { freePort, waitForOk } from './lib/gateway.js';
import { median } from './lib/load.js';

const root = resolve(import.meta.dirname, '..');
const revision = process.argv[2];
if (revision === undefined || revision.startsWith('-'))
  throw new Error('usage: npx tsx bench/compare.ts <git revision>');
const roundsAt = process.argv.indexOf('--rounds');
const rounds = roundsAt === -1 ? 6 : Number(process.argv[roundsAt + 1]);

// The other revision, built as `npm start` builds it, in a temporary worktree sharing this checkout's node_modules.
const other = mkdtempSync(join(tmpdir(), 'vllm-kit-compare-'));
execFileSync('git', ['worktree', 'add', '--detach', other, revision], { cwd: root, stdio: 'ignore' });
symlinkSync(join(root, 'node_modules'), join(other, 'node_modules'));
for (const dir of [other, root])
  execFileSync('npm', ['run', '-s', 'build:gateway'], { cwd: dir, stdio: 'inherit' });

const sim = await startChild(resolve(import.meta.dirname, 'servers/simulator.ts'));
async function start(dir: string) {
  const data = mkdtempSync(join(tmpdir(), 'vllm-kit-compare-db-'));
  const databaseUrl = `sqlite:${join(data, 'keys.db')}`;
  const store = await openKeyStore(databaseUrl);
  const { key } = await store.create('bench');
  await store.close();
  const port = await freePort();
  const child = spawn(process.execPath, [join(dir, 'examples/gateway/dist/main.js')], {
    cwd: dir,
    env: {
      ...process.env,
      ENV: 'production',
      HOST: '127.0.0.1',
      PORT: String(port),
      VLLM_BASE_URL: sim.url,
      DATABASE_URL: databaseUrl,
      REDIS_URL: '',
      WORKERS: '1',
      RATE_LIMIT_POINTS: '2000000',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForOk(`${url}/health`);
  return { url, key, stop: () => child.kill('SIGTERM'), data };
}
const targets = { [revision]: await start(other), 'working tree': await start(root) };
const names = Object.keys(targets);
const body = JSON.stringify({
  messages: [{ role: 'user', content: 'Say something short.' }],
  max_tokens: 16,
});
const run = (name: string) =>
  runAutocannon({
    url: targets[name]!.url,
    path: '/v1/chat/completions',
    body,
    headers: { authorization: `Bearer ${targets[name]!.key}` },
    connections: 32,
    durationSec: 2,
  });
for (const name of names) await run(name);
const rps: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
for (let round = 0; round < rounds; round++) {
  for (const name of round % 2 ? [...names].reverse() : names) rps[name]!.push((await run(name)).rps);
}
for (const target of Object.values(targets)) {
  target.stop();
  rmSync(target.data, { recursive: true, force: true });
}
await sim.stop();
execFileSync('git', ['worktree', 'remove', '--force', other], { cwd: root, stdio: 'ignore' });
if (existsSync(other)) rmSync(other, { recursive: true, force: true });
const ratio = median(rps['working tree']!.map((v, i) => v / rps[revision]![i]!));
const result = {
  revision,
  rounds,
  rps: Object.fromEntries(names.map((n) => [n, Math.round(median(rps[n]!))])),
  workingTreeVsRevision: Number(ratio.toFixed(3)),
};
console.log(JSON.stringify(result));
process.exit(0);
