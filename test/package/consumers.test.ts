// Tests what ships: build, `npm pack`, install the tarball into throwaway consumer projects, and import it as ESM and
// CommonJS, from JavaScript and from TypeScript (tsc with NodeNext); and the README's first call, as a newcomer runs it
// in a fresh `npm init -y` project.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
const tsc = join(root, 'node_modules/typescript/bin/tsc');
let work: string;
let consumer: string;

const run = (cmd: string, args: string[], cwd: string) =>
  execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 180_000 });
const node = (args: string[], cwd = consumer) => run(process.execPath, args, cwd);

// Every public name of `vllm-kit`, sorted: an export added or lost by accident fails here.
const SERVER_NAMES = [
  'AdapterLoadError',
  'ClosedError',
  'ERROR_CODES',
  'InvalidOptionError',
  'LightAbortSignal',
  'MAX_JSON_DEPTH',
  'ModelNotFoundError',
  'NotClusterPrimaryError',
  'OverloadError',
  'PermitTimeoutError',
  'QueueFullError',
  'QueueTimeoutError',
  'RequestAbortedError',
  'StoreUnavailableError',
  'TokenVerificationError',
  'UpstreamAuthenticationError',
  'UpstreamBadRequestError',
  'UpstreamConnectionError',
  'UpstreamHttpError',
  'UpstreamNotFoundError',
  'UpstreamOverloadedError',
  'UpstreamRateLimitError',
  'UpstreamServerError',
  'UpstreamTimeoutError',
  'UsageMeter',
  'VllmKitError',
  'clusterRoutingSync',
  'createConcurrencyLimiter',
  'createIpRateLimiter',
  'createKeyBudgets',
  'createPermitPool',
  'createTokenCache',
  'createUsageMeter',
  'createVllmClient',
  'estimatePromptTokens',
  'exceedsJsonDepth',
  'formatResetDuration',
  'isAdapterLoadError',
  'isClosedError',
  'isInvalidOptionError',
  'isModelNotFoundError',
  'isOverloadError',
  'isPermitTimeoutError',
  'isQueueFullError',
  'isQueueTimeoutError',
  'isRequestAbortedError',
  'isTokenVerificationError',
  'isUpstreamConnectionError',
  'isUpstreamHttpError',
  'isUpstreamTimeoutError',
  'isVllmKitError',
  'redisRoutingSync',
  'refusalBody',
  'requestUsage',
  'reservationFor',
  'serveCluster',
  'serveClusterBudgets',
  'serveClusterPermits',
  'serveClusterRateLimits',
  'serveClusterRoutingSync',
];

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'vllm-kit-consumers-'));
  run('npm', ['run', 'build'], root);
  run('npm', ['pack', '--ignore-scripts', '--pack-destination', work], root);
  const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'));
  if (!tarball) throw new Error('npm pack produced no tarball');
  consumer = join(work, 'consumer');
  mkdirSync(consumer);
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));
  run(
    'npm',
    ['install', '--no-audit', '--no-fund', '--prefer-offline', join(work, tarball), '@types/node@20'],
    consumer,
  );
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** The README's "A first call": its shell lines and its code, as a newcomer copies them. */
function firstCall(): { commands: string[]; code: string } {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.slice(
    readme.indexOf('## A first call'),
    readme.indexOf('\n## ', readme.indexOf('## A first call') + 1),
  );
  const shell = /```sh\n([\s\S]*?)```/.exec(section)?.[1];
  const code = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  if (shell === undefined || code === undefined)
    throw new Error('README: "A first call" has no sh or ts block');
  const commands = shell
    .split('\n')
    .map((line) => line.replace(/\s+#.*$/, '').trim())
    .filter(Boolean);
  return { commands, code };
}

describe('the packed tarball', () => {
  it('ships only dist, package.json, README and licence files', () => {
    const files = run('tar', ['-tzf', join(work, readdirSync(work).find((f) => f.endsWith('.tgz'))!)], work)
      .trim()
      .split('\n')
      .map((f) => f.replace(/^package\//, ''));
    expect(
      files.every(
        (f) => f.startsWith('dist/') || /^(package\.json|README\.md|LICENSE|CHANGELOG\.md)$/.test(f),
      ),
    ).toBe(true);
    expect(files).toContain('dist/index.js');
    expect(files).toContain('dist/testing.cjs');
  });

  it('imports from ESM JavaScript, and the simulator answers', () => {
    writeFileSync(
      join(consumer, 'esm.mjs'),
      `import * as kit from 'vllm-kit';
import { startVllmSimulator } from 'vllm-kit/testing';
import * as browser from 'vllm-kit/browser';
import pkg from 'vllm-kit/package.json' with { type: 'json' };
const sim = await startVllmSimulator({ model: 'm' });
const res = await fetch(sim.url + '/v1/chat/completions', {
  method: 'POST', headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }) });
const body = await res.json();
await sim.close();
console.log(JSON.stringify({ names: Object.keys(kit).sort(), browser: Object.keys(browser), name: pkg.name,
  status: res.status, tokens: body.usage.completion_tokens, isError: kit.isVllmKitError(new kit.VllmKitError('x', 'ERR_VK_CLOSED')) }));
`,
    );
    const out = JSON.parse(node(['esm.mjs']));
    expect(out).toEqual({
      names: SERVER_NAMES,
      browser: ['createBrowserTokenCache'],
      name: 'vllm-kit',
      status: 200,
      tokens: 2,
      isError: true,
    });
  });

  it('requires from CommonJS JavaScript, and errors are shared with the testing entry', () => {
    writeFileSync(
      join(consumer, 'cjs.cjs'),
      `const kit = require('vllm-kit');
const { startVllmSimulator } = require('vllm-kit/testing');
// p-limit is ESM-only: the CommonJS build must carry it, or this require would fail on Node 20.18.
kit.createConcurrencyLimiter({ concurrency: 1 }).run(async () => 'limited').then((v) => console.error(v));
startVllmSimulator({ maxNumSeqs: 0 }).catch((error) => {
  console.log(JSON.stringify({ names: Object.keys(kit).sort(), guard: kit.isInvalidOptionError(error),
    instance: error instanceof kit.InvalidOptionError, message: error.message }));
});
`,
    );
    const out = JSON.parse(node(['cjs.cjs']));
    expect(out).toEqual({
      names: SERVER_NAMES,
      guard: true,
      instance: true,
      message: 'Expected `maxNumSeqs` to be an integer >= 1, got `0` (number)',
    });
  });

  it('starts no timers, sockets or servers on import', () => {
    // Module loading itself leaves transient file requests, and Node's own util/colors opens stderr (a PipeWrap when
    // stderr is a pipe, as here); neither is ours nor keeps the process alive. Timers, sockets and servers would.
    const script = `const ignored = new Set(['PipeWrap', 'TTYWrap', 'CloseReq', 'FSReqCallback', 'FSReqPromise']);
const before = process.getActiveResourcesInfo();
await import('vllm-kit'); await import('vllm-kit/testing'); await import('vllm-kit/browser');
const added = process.getActiveResourcesInfo().slice(before.length).filter((r) => !ignored.has(r));
console.log(JSON.stringify(added));`;
    writeFileSync(join(consumer, 'quiet.mjs'), script);
    expect(JSON.parse(node(['quiet.mjs']))).toEqual([]);
    // And nothing keeps the process alive: an import-only script exits at once by itself.
    writeFileSync(join(consumer, 'exits.mjs'), "await import('vllm-kit'); await import('vllm-kit/testing');");
    // (A timer or socket left behind would hold it until execFileSync's timeout kills it, failing the test.)
    const result = execFileSync(process.execPath, ['exits.mjs'], {
      cwd: consumer,
      timeout: 60_000,
      encoding: 'utf8',
    });
    expect(result).toBe('');
  });

  it.each([
    ['module', 'ts-esm'],
    ['commonjs', 'ts-cjs'],
  ])('type-checks from TypeScript (NodeNext, package type %s)', (type, dir) => {
    const project = join(consumer, dir);
    mkdirSync(project, { recursive: true });
    writeFileSync(join(project, 'package.json'), JSON.stringify({ type }));
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          target: 'ES2022',
          strict: true,
          exactOptionalPropertyTypes: true,
          noEmit: true,
          types: ['node'],
          typeRoots: [join(consumer, 'node_modules/@types')],
        },
        include: ['*.ts'],
      }),
    );
    writeFileSync(
      join(project, 'index.ts'),
      `import { isVllmKitError, VllmKitError, InvalidOptionError } from 'vllm-kit';
import { startVllmSimulator, type VllmSimulator, type VllmSimulatorOptions, type SimulatorStats } from 'vllm-kit/testing';
const options: VllmSimulatorOptions = { ttftMs: 5, faults: { status: { status: 503, times: 1 } } };
export async function main(): Promise<number> {
  const sim: VllmSimulator = await startVllmSimulator(options);
  const stats: SimulatorStats = sim.stats();
  await sim.close();
  const error: VllmKitError = new InvalidOptionError('x', 'bad');
  return isVllmKitError(error) ? stats.requestsReceived : -1;
}
// @ts-expect-error ttftMs is a number of milliseconds
const wrong: VllmSimulatorOptions = { ttftMs: '5' };
void wrong;
`,
    );
    expect(() => node([tsc, '-p', project])).not.toThrow();
  });

  it('ships a browser build with no Node built-ins, in it or in the chunks it imports', () => {
    const dist = join(consumer, 'node_modules/vllm-kit/dist');
    const seen = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const code = readFileSync(join(dist, file), 'utf8');
      expect(code, file).not.toMatch(
        /from\s*["']node:|require\(|from\s*["'](fs|net|http|crypto|os|path|stream|events|undici)["']/,
      );
      for (const match of code.matchAll(/from\s*["']\.\/([\w.-]+)["']|import\s*["']\.\/([\w.-]+)["']/g)) {
        visit(match[1] ?? match[2]!);
      }
    };
    visit('browser.js');
    expect(seen.size).toBeGreaterThanOrEqual(1);
  });

  // The client looks up @opentelemetry/api (an optional peer) from its own location: by `require` in the CommonJS
  // build, by a require made from import.meta.url in the ESM one. Absent, calls work and nothing is traced.
  const tracedCall = (format: 'esm' | 'cjs') => `${
    format === 'esm'
      ? "import { createVllmClient } from 'vllm-kit'; import { startVllmSimulator } from 'vllm-kit/testing';"
      : "const { createVllmClient } = require('vllm-kit'); const { startVllmSimulator } = require('vllm-kit/testing');"
  }
let provider, exporter;
try {
  const base = require('@opentelemetry/sdk-trace-base');
  exporter = new base.InMemorySpanExporter();
  provider = new base.BasicTracerProvider({ spanProcessors: [new base.SimpleSpanProcessor(exporter)] });
  require('@opentelemetry/api').trace.setGlobalTracerProvider(provider);
} catch {}
(async () => {
  const traceparents = [];
  const sim = await startVllmSimulator({ onRequest: (r) => traceparents.push(r.headers.traceparent ?? null) });
  const client = createVllmClient({ baseUrl: sim.url });
  const reply = await client.chatCompletion({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
  await client.close(); await sim.close();
  const spans = exporter ? exporter.getFinishedSpans().map((s) => s.name + ':' + s.attributes['gen_ai.usage.output_tokens']) : null;
  console.log(JSON.stringify({ tokens: reply.usage.completion_tokens, traceparent: traceparents[0], spans }));
})();
`;
  const writeTracedCall = (format: 'esm' | 'cjs') => {
    const file = format === 'esm' ? 'traced.mjs' : 'traced.cjs';
    const source = tracedCall(format);
    writeFileSync(
      join(consumer, file),
      format === 'esm'
        ? `import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);\n${source}`
        : source,
    );
    return file;
  };

  it.each(['esm', 'cjs'] as const)(
    'works without @opentelemetry/api installed (%s): no spans, no traceparent',
    (format) => {
      const out = JSON.parse(node([writeTracedCall(format)]));
      expect(out).toEqual({ tokens: 2, traceparent: null, spans: null });
    },
  );

  it('finds @opentelemetry/api once installed, from the ESM and the CommonJS build', () => {
    run(
      'npm',
      [
        'install',
        '--no-audit',
        '--no-fund',
        '--prefer-offline',
        '@opentelemetry/api@1',
        '@opentelemetry/sdk-trace-base@~2.12.0',
      ],
      consumer,
    );
    try {
      for (const format of ['esm', 'cjs'] as const) {
        const out = JSON.parse(node([writeTracedCall(format)]));
        expect(out.spans, format).toEqual(['chat:2']);
        expect(out.traceparent, format).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
      }
    } finally {
      run(
        'npm',
        ['uninstall', '--no-audit', '--no-fund', '@opentelemetry/api', '@opentelemetry/sdk-trace-base'],
        consumer,
      );
    }
  });

  it('installs the vllm-kit-sim bin', () => {
    const help = run(join(consumer, 'node_modules/.bin/vllm-kit-sim'), ['--help'], consumer);
    expect(help).toContain('Usage: vllm-kit-sim');
  });

  it("runs the README's first call as written in a fresh `npm init -y` project", () => {
    const { commands, code } = firstCall();
    const tarball = join(work, readdirSync(work).find((f) => f.endsWith('.tgz'))!);
    // The newcomer's lines, in order: a directory, npm init -y (npm writes "type": "commonjs"), type=module, the
    // install (the packed tarball standing in for the registry's vllm-kit), then tsx on the saved code.
    expect(commands[0]).toBe('mkdir hello && cd hello');
    expect(commands.some((c) => /^npm pkg set type=module$/.test(c))).toBe(true);
    expect(commands.at(-1)).toBe('npx tsx hello.ts');
    const dir = join(work, 'hello');
    mkdirSync(dir);
    writeFileSync(join(dir, 'hello.ts'), code);
    let output = '';
    for (const command of commands.slice(1)) {
      const line = command.replace(
        /^npm install vllm-kit\b/,
        `npm install --no-audit --no-fund --prefer-offline ${tarball}`,
      );
      output = run('bash', ['-c', line], dir);
    }
    expect(JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).type).toBe('module');
    // The reply's text and usage, then the streamed text.
    expect(output).toMatch(/prompt_tokens: \d+/);
    expect(output.trim().length).toBeGreaterThan(40);
  });
});
