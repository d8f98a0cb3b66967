// Vite config for the protected-route example. `VITE_API_URL` points at the gateway (default: same origin).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  // In this repository the example uses the package's source; an app of your own imports the installed package.
  resolve: {
    alias: { 'vllm-kit/browser': fileURLToPath(new URL('../../src/browser/index.ts', import.meta.url)) },
  },
  oxc: { jsx: { runtime: 'automatic' } },
  build: { outDir: 'dist', emptyOutDir: true },
});
