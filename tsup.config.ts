// Build: ESM + CommonJS with declarations for every public entry, plus the simulator's CLI.
import { defineConfig } from 'tsup';

export default defineConfig([
  {
    entry: {
      index: 'src/index.ts',
      testing: 'src/testing/index.ts',
      browser: 'src/browser/index.ts',
    },
    format: ['esm', 'cjs'],
    dts: true,
    clean: true,
    splitting: true,
    sourcemap: true,
    target: 'node20',
    platform: 'node',
    treeshake: true,
  },
  {
    entry: { 'sim-cli': 'src/testing/cli.ts' },
    format: ['esm'],
    dts: false,
    clean: false,
    sourcemap: true,
    target: 'node20',
    platform: 'node',
  },
]);
