// The package as it ships: benchmarks load the built `dist/` (npm run bench builds it first), so they measure the
// code users run rather than the TypeScript sources under a dev-time transpiler.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';

const dist = resolve(import.meta.dirname, '../../dist');
if (!existsSync(resolve(dist, 'index.js'))) {
  throw new Error('bench: dist/ is missing; run `npm run build` first (npm run bench does it for you)');
}
const server: string = resolve(dist, 'index.js');
const testingEntry: string = resolve(dist, 'testing.js');

export const kit = (await import(server)) as typeof import('../../src/index.js');
export const testing = (await import(testingEntry)) as typeof import('../../src/testing/index.js');
