// Two projects: `unit` (every piece, against real loopback servers and services) and `package` (what ships).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (path: string) => fileURLToPath(new URL(`./src/${path}`, import.meta.url));

export default defineConfig({
  test: {
    projects: [
      {
        // Examples import the package by name; in the unit tests that means its sources, not a (maybe stale) build.
        resolve: {
          alias: [
            { find: /^vllm-kit\/testing$/, replacement: src('testing/index.ts') },
            { find: /^vllm-kit\/browser$/, replacement: src('browser/index.ts') },
            { find: /^vllm-kit$/, replacement: src('index.ts') },
          ],
        },
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          // VK_LIBRARY_ONLY (the Node 22/24 runs in CI): the library's tests only; the example gateway's tests need
          // better-sqlite3 built for the Node that installed it.
          exclude: [
            'test/package/**',
            '**/node_modules/**',
            ...(process.env.VK_LIBRARY_ONLY ? ['test/gateway/**'] : []),
          ],
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
