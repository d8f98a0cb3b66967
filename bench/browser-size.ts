// The browser module's size as a bundler would ship it: minified, then gzipped. Run: npx tsx bench/browser-size.ts
import { resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { buildSync } from 'esbuild';

const result = buildSync({
  entryPoints: [resolve(import.meta.dirname, '../src/browser/index.ts')],
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  write: false,
});
const code = result.outputFiles[0]!.contents;
const gzip = gzipSync(code, { level: 9 }).length;
console.log(`vllm-kit/browser: ${code.length} bytes minified, ${gzip} bytes min+gzip`);
console.log(JSON.stringify({ bench: 'browser-size', minBytes: code.length, minGzipBytes: gzip }));
