// The README's TypeScript is real: every ```ts block type-checks as written (strict, NodeNext, an ES module project
// with @types/node, `vllm-kit` resolved to this checkout's sources), and the first one — the library example — runs.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { buildSync } from 'esbuild';
import { afterAll, describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
// Inside the checkout, so that `openai` and @types/node resolve from its node_modules.
const work = join(root, 'node_modules/.cache/vllm-kit-readme');
const blocks = [...readFileSync(join(root, 'README.md'), 'utf8').matchAll(/```ts\n([\s\S]*?)```/g)].map(
  (m) => m[1]!,
);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('README', () => {
  it('has TypeScript blocks, and each type-checks as written', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(2);
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true });
    writeFileSync(join(work, 'package.json'), JSON.stringify({ type: 'module' }));
    const files = blocks.map((code, i) => {
      const file = `block-${i + 1}.ts`;
      // Each block is its own module (top-level await, its own imports).
      writeFileSync(join(work, file), `${code}\nexport {};\n`);
      return file;
    });
    writeFileSync(
      join(work, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          target: 'ES2022',
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          types: ['node'],
          paths: {
            'vllm-kit': [join(root, 'src/index.ts')],
            'vllm-kit/testing': [join(root, 'src/testing/index.ts')],
            'vllm-kit/browser': [join(root, 'src/browser/index.ts')],
          },
        },
        files,
      }),
    );
    const tsc = join(root, 'node_modules/typescript/bin/tsc');
    let output = '';
    try {
      execFileSync(process.execPath, [tsc, '-p', work], { encoding: 'utf8', timeout: 120_000 });
    } catch (error) {
      output = `${(error as { stdout?: string }).stdout ?? ''}${(error as Error).message}`;
    }
    expect(output).toBe('');
  });

  it('its library example runs and prints a reply, its usage and a stream', () => {
    mkdirSync(work, { recursive: true });
    writeFileSync(join(work, 'package.json'), JSON.stringify({ type: 'module' }));
    // The published names, mapped to the sources for tsx (as the paths above for tsc).
    const example = blocks[0]!
      .replace("from 'vllm-kit/testing'", `from '${join(root, 'src/testing/index.ts')}'`)
      .replace("from 'vllm-kit'", `from '${join(root, 'src/index.ts')}'`);
    writeFileSync(join(work, 'hello.ts'), example);
    const out = execFileSync(process.execPath, ['--import', 'tsx', join(work, 'hello.ts')], {
      cwd: root,
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(out).toMatch(/prompt_tokens: \d+/);
    expect(out.trim().split('\n').at(-1)!.split(' ').filter(Boolean)).toHaveLength(16);
  });
});

describe('the docs', () => {
  it('link only to files that exist in the repository (no link leaves it but to the web)', () => {
    const pages = [
      'README.md',
      'examples/gateway/README.md',
      ...readdirSync(join(root, 'docs'))
        .filter((f) => f.endsWith('.md'))
        .map((f) => `docs/${f}`),
    ];
    const broken: string[] = [];
    for (const page of pages) {
      const text = readFileSync(join(root, page), 'utf8');
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^(https?:|mailto:)/.test(target!)) continue;
        const [path, anchor] = target!.split('#') as [string, string | undefined];
        const file = path === '' ? join(root, page) : resolve(dirname(join(root, page)), path);
        if (!file.startsWith(root) || !existsSync(file)) broken.push(`${page}: ${target}`);
        // An anchor into a Markdown page must name one of its headings, as GitHub makes their ids.
        else if (anchor !== undefined && file.endsWith('.md') && !headingIds(file).has(anchor))
          broken.push(`${page}: ${target} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('state the browser module’s size as measured (min+gzip, as bench/browser-size.ts measures it)', () => {
    const code = buildSync({
      entryPoints: [join(root, 'src/browser/index.ts')],
      bundle: true,
      minify: true,
      format: 'esm',
      platform: 'browser',
      write: false,
    }).outputFiles[0]!.contents;
    const measured = gzipSync(code, { level: 9 }).length;
    const claims = ['README.md', 'docs/browser.md', 'docs/performance.md'].flatMap((page) =>
      [
        ...readFileSync(join(root, page), 'utf8').matchAll(
          /([\d,]+) bytes(?:\*\*)? min\+gzip|min\+gzip \| ([\d,]+) bytes/g,
        ),
      ].map((m) => ({ page, bytes: Number((m[1] ?? m[2])!.replaceAll(',', '')) })),
    );
    expect(claims.length).toBeGreaterThanOrEqual(3);
    // Within 1% (zlib's output may differ by a few bytes between Node versions).
    for (const claim of claims)
      expect(Math.abs(claim.bytes - measured) / measured, claim.page).toBeLessThan(0.01);
  });
});

/** The ids GitHub gives a Markdown page's headings: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats. */
function headingIds(file: string): Set<string> {
  const ids = new Set<string>();
  const seen = new Map<string, number>();
  let fenced = false;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const heading = fenced ? null : /^#{1,6}\s+(.*)$/.exec(line);
    if (heading === null) continue;
    const base = heading[1]!
      .trim()
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const count = seen.get(base) ?? 0;
    seen.set(base, count + 1);
    ids.add(count === 0 ? base : `${base}-${count}`);
  }
  return ids;
}
