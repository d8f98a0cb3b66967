// Build: ESM + CommonJS with declarations for every public entry, plus the simulator's CLI.
import { defineConfig, type Options } from 'tsup';

const entry = {
  index: 'src/index.ts',
  testing: 'src/testing/index.ts',
  browser: 'src/browser/index.ts',
};
const shared: Options = {
  entry,
  dts: true,
  splitting: true,
  sourcemap: true,
  target: 'node20',
  platform: 'node',
  treeshake: true,
};

export default defineConfig([
  { ...shared, format: ['esm'] },
  // p-limit (and its yocto-queue) ship as ESM only; Node 20.18 cannot require() ESM, so the CommonJS build carries
  // its own copy of them.
  { ...shared, format: ['cjs'], noExternal: ['p-limit', 'yocto-queue'] },
  {
    entry: { 'sim-cli': 'src/testing/cli.ts' },
    format: ['esm'],
    dts: false,
    sourcemap: true,
    target: 'node20',
    platform: 'node',
  },
]);
