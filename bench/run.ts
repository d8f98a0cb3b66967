// `npm run bench`: runs every benchmark script in turn (pass --quick for a short smoke run, as CI does).
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';

const SCRIPTS = [
  'simulator.ts',
  'client.ts',
  'token-cache.ts',
  'concurrency.ts',
  'rate-limit.ts',
  'browser-size.ts',
];
const args = process.argv.slice(2);
let failed = false;
for (const script of SCRIPTS) {
  console.log(`\n# bench/${script} ${args.join(' ')}`);
  const result = spawnSync(
    process.execPath,
    ['--import', 'tsx', resolve(import.meta.dirname, script), ...args],
    {
      stdio: 'inherit',
    },
  );
  if (result.status !== 0) failed = true;
}
process.exitCode = failed ? 1 : 0;
