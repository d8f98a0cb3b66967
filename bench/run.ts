// `npm run bench`: the capacity report. Runs every scenario and piece benchmark in its own process, one after the
// other, prints a summary table, and writes bench/results/<date>.json, <date>.md and the charts the report shows.
// `--quick` (CI) runs everything briefly to prove the suite works and writes to bench/results/quick/ instead: its
// figures mean nothing. `--only overhead,seed` runs a subset.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { resolve } from 'node:path';
import { renderReport, summarize } from './lib/report.js';

const SCRIPTS = {
  overhead: 'scenarios/overhead.ts',
  seed: 'scenarios/seed.ts',
  streaming: 'scenarios/streaming.ts',
  saturation: 'scenarios/saturation.ts',
  routing: 'scenarios/routing.ts',
  'routing-cost': 'routing-cost.ts',
  models: 'scenarios/models.ts',
  budgets: 'scenarios/budgets.ts',
  fairness: 'scenarios/fairness.ts',
  telemetry: 'scenarios/telemetry.ts',
  'token-cache': 'token-cache.ts',
  'rate-limit': 'rate-limit.ts',
  concurrency: 'concurrency.ts',
  client: 'client.ts',
  simulator: 'simulator.ts',
  'browser-size': 'browser-size.ts',
} as const;
type BenchName = keyof typeof SCRIPTS;

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const onlyArg = args.find((a) => a.startsWith('--only='))?.slice('--only='.length);
const names = (onlyArg ? onlyArg.split(',') : Object.keys(SCRIPTS)) as BenchName[];
for (const name of names) if (!(name in SCRIPTS)) throw new Error(`bench: unknown benchmark "${name}"`);

if (quick) {
  console.log(
    'bench --quick: every benchmark runs briefly to prove the suite works; its figures mean nothing and no target is judged (run `npm run bench` for the report).',
  );
}
const results: Partial<Record<BenchName, unknown>> = {};
const failed: string[] = [];
const started = Date.now();
/** Each benchmark's wall time: where a run's minutes go. */
const seconds: Partial<Record<BenchName, number>> = {};
for (const name of names) {
  const began = Date.now();
  console.log(`\n# ${name} (bench/${SCRIPTS[name]}${quick ? ' --quick' : ''})`);
  const run = spawnSync(
    process.execPath,
    ['--import', 'tsx', resolve(import.meta.dirname, SCRIPTS[name]), ...(quick ? ['--quick'] : [])],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * 1024 * 1024 },
  );
  process.stdout.write(run.stdout.split('\n').slice(0, -2).join('\n') + '\n');
  // Every script ends with one JSON line: its figures.
  const last = run.stdout.trim().split('\n').at(-1) ?? '';
  try {
    results[name] = JSON.parse(last);
  } catch {
    failed.push(`${name} (no result line)`);
  }
  if (run.status !== 0) failed.push(`${name} (exit ${run.status})`);
  seconds[name] = Math.round((Date.now() - began) / 1000);
  console.log(`# ${name}: ${seconds[name]} s`);
}

const date = new Date().toISOString().slice(0, 10);
const machine = {
  cpu: cpus()[0]?.model ?? 'unknown',
  cores: cpus().length,
  memoryGb: Math.round(totalmem() / 2 ** 30),
  node: process.version,
  kernel: release(),
};
const report = {
  date,
  quick,
  machine,
  minutes: Number(((Date.now() - started) / 60_000).toFixed(1)),
  seconds,
  results,
};
const dir = resolve(import.meta.dirname, quick ? 'results/quick' : 'results');
mkdirSync(dir, { recursive: true });
writeFileSync(resolve(dir, `${date}.json`), `${JSON.stringify(report, null, 2)}\n`);
const { markdown, charts } = renderReport(report, date);
writeFileSync(resolve(dir, `${date}.md`), markdown);
for (const [file, svg] of Object.entries(charts)) writeFileSync(resolve(dir, file), svg);

console.log(quick ? '\n# Summary (--quick: figures not meaningful, targets not judged)' : '\n# Summary');
console.table(summarize(report));
console.log(
  `\nwrote ${resolve(dir, `${date}.json`)} and ${resolve(dir, `${date}.md`)} (${Object.keys(charts).length} charts)`,
);
if (failed.length > 0) {
  console.error(`bench: failed: ${failed.join(', ')}`);
  process.exitCode = 1;
}
