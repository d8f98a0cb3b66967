// Three projects: `unit` (every piece, against real loopback servers and services), `processes` (the gateway as
// `npm start` runs it: workers, signals, dependencies cut mid-run — the slow ones, `npm run test:processes`) and
// `package` (what ships). `npm test` runs `unit` and `package`; CI runs all three.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (path: string) => fileURLToPath(new URL(`./src/${path}`, import.meta.url));

/** Examples import the package by name; in these tests that means its sources, not a (maybe stale) build. */
const SOURCES = {
  alias: [
    { find: /^vllm-kit\/testing$/, replacement: src('testing/index.ts') },
    { find: /^vllm-kit\/browser$/, replacement: src('browser/index.ts') },
    { find: /^vllm-kit$/, replacement: src('index.ts') },
  ],
};

/** Tests that start the gateway as processes (primary and workers) and kill, signal or cut what they depend on. */
const PROCESS_TESTS = [
  'test/gateway/budgets-processes.test.ts',
  'test/gateway/cluster.test.ts',
  'test/gateway/faults-*.test.ts',
  'test/gateway/lora.test.ts',
  'test/gateway/operations.test.ts',
  'test/gateway/permits-processes.test.ts',
  'test/gateway/signals.test.ts',
  'test/gateway/telemetry.test.ts',
];

export default defineConfig({
  test: {
    projects: [
      {
        resolve: SOURCES,
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          // VK_LIBRARY_ONLY (the Node 22/24 runs in CI): the library's tests only; the example gateway's tests need
          // better-sqlite3 built for the Node that installed it.
          exclude: [
            'test/package/**',
            '**/node_modules/**',
            ...PROCESS_TESTS,
            ...(process.env.VK_LIBRARY_ONLY ? ['test/gateway/**'] : []),
          ],
          testTimeout: 20_000,
          hookTimeout: 20_000,
          setupFiles: ['test/helpers/no-warnings.ts'],
        },
      },
      {
        resolve: SOURCES,
        test: {
          name: 'processes',
          include: PROCESS_TESTS,
          testTimeout: 20_000,
          hookTimeout: 20_000,
          setupFiles: ['test/helpers/no-warnings.ts'],
        },
      },
      {
        test: {
          name: 'package',
          include: ['test/package/**/*.test.ts'],
          testTimeout: 240_000,
          hookTimeout: 240_000,
        },
      },
    ],
  },
});
