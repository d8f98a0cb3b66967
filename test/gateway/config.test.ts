// The gateway's configuration and keys CLI: bad values stop start-up with a message naming the variable.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../examples/gateway/config.js';

const root = resolve(import.meta.dirname, '../..');

describe('loadConfig', () => {
  it('has the documented defaults', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      env: 'production',
      host: '0.0.0.0',
      port: 8000,
      limitConcurrency: 200,
      maxQueue: 400,
      // One per request the limiter may admit: the limit and its fair-share headroom.
      poolConnections: 240,
      rateLimitPoints: 20,
      rateLimitWindowSec: 60,
      trustProxy: false,
      trustProxyHeader: 'x-forwarded-for',
      tokenCacheTtlSec: 300,
      tokenCacheSweepSec: 60,
      databaseUrl: 'sqlite:./data/keys.db',
      vllmBaseUrls: [],
      metrics: true,
      corsOrigins: [],
      headersTimeoutMs: 15_000,
      requestTimeoutMs: 60_000,
      telemetryUpstreamSpan: false,
    });
    expect(loadConfig({ OTEL_GENAI_UPSTREAM_SPAN: 'TRUE' }).telemetryUpstreamSpan).toBe(true);
    expect(loadConfig({ CORS_ORIGINS: 'https://a.example, http://localhost:5173' }).corsOrigins).toEqual([
      'https://a.example',
      'http://localhost:5173',
    ]);
    expect(config.workers).toBeGreaterThanOrEqual(1);
    // Every request the limiter admits has an upstream connection of its own (vLLM serves one request per connection).
    expect(loadConfig({ LIMIT_CONCURRENCY: '1000' }).poolConnections).toBe(1200);
    expect(loadConfig({ LIMIT_CONCURRENCY: '1000', QUEUE_POLICY: 'fifo' }).poolConnections).toBe(1000);
    expect(loadConfig({ ENV: 'development', WORKERS: '8' }).workers).toBe(1);
    // Fair admission's headroom for keys below their share: a fifth of the limit, none with FIFO.
    expect(config.limitConcurrencyHeadroom).toBe(40);
    expect(loadConfig({ LIMIT_CONCURRENCY: '32' }).limitConcurrencyHeadroom).toBe(7);
    expect(loadConfig({ QUEUE_POLICY: 'fifo' }).limitConcurrencyHeadroom).toBe(0);
    expect(loadConfig({ LIMIT_CONCURRENCY_HEADROOM: '0' }).limitConcurrencyHeadroom).toBe(0);
    expect(loadConfig({ VLLM_BASE_URL: 'http://a:8000, http://b:8000' }).vllmBaseUrls).toEqual([
      'http://a:8000',
      'http://b:8000',
    ]);
    expect(loadConfig({ TRUST_PROXY: '2' }).trustProxy).toBe(2);
    expect(loadConfig({ TRUST_PROXY_HEADER: 'Forwarded' }).trustProxyHeader).toBe('forwarded');
    expect(loadConfig({ TRUST_PROXY: '10.0.0.0/8,192.168.0.0/16' }).trustProxy).toEqual([
      '10.0.0.0/8',
      '192.168.0.0/16',
    ]);
  });

  it.each([
    [{ ENV: 'staging' }, 'ENV', 'ENV must be "development" or "production", got "staging"'],
    [{ PORT: '80x' }, 'PORT', 'PORT must be an integer from 0 to 65535, got "80x"'],
    [{ WORKERS: '0' }, 'WORKERS', 'WORKERS must be an integer from 1 to 256, got "0"'],
    [{ VLLM_BASE_URL: 'ftp://x' }, 'VLLM_BASE_URL', 'VLLM_BASE_URL must be an http(s) URL, got "ftp://x"'],
    [{ TRUST_PROXY: 'true' }, 'TRUST_PROXY', 'TRUST_PROXY=true would let any client pick its IP'],
    [
      { TRUST_PROXY_HEADER: 'x-real-ip' },
      'TRUST_PROXY_HEADER',
      'TRUST_PROXY_HEADER must be "x-forwarded-for" or "forwarded", got "x-real-ip"',
    ],
    [{ REDIS_URL: 'localhost:6379' }, 'REDIS_URL', 'REDIS_URL must be a redis:// or rediss:// URL'],
    [{ RATE_LIMIT_NAME: 'a b' }, 'RATE_LIMIT_NAME', 'RATE_LIMIT_NAME must be 1-64 letters'],
    [{ QUEUE_POLICY: 'lifo' }, 'QUEUE_POLICY', 'QUEUE_POLICY must be "fair" or "fifo", got "lifo"'],
    [{ STREAM_USAGE: 'never' }, 'STREAM_USAGE', 'STREAM_USAGE must be "continuous" or "final"'],
    [{ UPSTREAM_CONCURRENCY: '0' }, 'UPSTREAM_CONCURRENCY', 'UPSTREAM_CONCURRENCY must be an integer from 1'],
    [{ USAGE_FLUSH_MS: '60000' }, 'USAGE_FLUSH_MS', 'USAGE_FLUSH_MS must be an integer from 10 to 5000'],
    [{ MAX_QUEUE_PER_KEY: '-1' }, 'MAX_QUEUE_PER_KEY', 'MAX_QUEUE_PER_KEY must be an integer from 1'],
    [
      { DATABASE_URL: 'mysql://u:secret@h/db' },
      'DATABASE_URL',
      'DATABASE_URL must be sqlite:PATH or postgres://',
    ],
    [
      { RATE_LIMIT_POINTS: '10000000' },
      'RATE_LIMIT_POINTS',
      'RATE_LIMIT_POINTS must be an integer from 1 to 2000000, got "10000000"',
    ],
    [{ METRICS: 'yes' }, 'METRICS', 'METRICS must be "true" or "false", got "yes"'],
    [
      { OTEL_TRACES_SAMPLER_ARG: '10%' },
      'OTEL_TRACES_SAMPLER_ARG',
      'OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, got "10%"',
    ],
    [{ OTEL_GENAI_UPSTREAM_SPAN: 'yes' }, 'OTEL_GENAI_UPSTREAM_SPAN', 'OTEL_GENAI_UPSTREAM_SPAN must be'],
    [
      { CORS_ORIGINS: 'https://app.example.com/path' },
      'CORS_ORIGINS',
      'CORS_ORIGINS must be exact origins like https://app.example.com (comma-separated) or *, got "https://app.example.com/path"',
    ],
    [
      { HEADERS_TIMEOUT_MS: '500' },
      'HEADERS_TIMEOUT_MS',
      'HEADERS_TIMEOUT_MS must be an integer from 1000 to 600000, got "500"',
    ],
    [
      { HEADERS_TIMEOUT_MS: '20000', REQUEST_TIMEOUT_MS: '10000' },
      'REQUEST_TIMEOUT_MS',
      'REQUEST_TIMEOUT_MS must be at least HEADERS_TIMEOUT_MS (20000), got "10000"',
    ],
  ])('refuses %j', (env, variable, message) => {
    let error: unknown;
    try {
      loadConfig(env);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).variable).toBe(variable);
    expect((error as Error).message).toContain(message);
    expect((error as Error).message).not.toContain('secret');
  });

  it('stops `npm start` with the message and exit code 2', () => {
    const result = spawnSync(process.execPath, ['--import', 'tsx', 'examples/gateway/main.ts'], {
      cwd: root,
      env: { ...process.env, PORT: 'eighty' },
      encoding: 'utf8',
    });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('PORT must be an integer');
  });
});

describe('keys CLI', () => {
  it('creates (key printed once, last line), lists and revokes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vllm-kit-cli-'));
    try {
      const env = { ...process.env, DATABASE_URL: `sqlite:${join(dir, 'keys.db')}`, REDIS_URL: '' };
      const run = (...args: string[]) =>
        spawnSync(process.execPath, ['--import', 'tsx', 'examples/gateway/keys-cli.ts', ...args], {
          cwd: root,
          env,
          encoding: 'utf8',
        });
      const created = run('create', '--name', 'alice');
      expect(created.status).toBe(0);
      const key = created.stdout.trim().split('\n').at(-1)!;
      expect(key).toMatch(/^vk-/);
      const listed = run('list');
      expect(listed.stdout).toMatch(/key_[0-9a-f]+\talice\tvk-\S+…\t\S+\tactive/);
      expect(listed.stdout).not.toContain(key);
      expect(run('revoke', 'alice').stdout).toContain('Revoked');
      expect(run('list').stdout).toContain('revoked');
      const again = run('revoke', 'alice');
      expect(again.status).toBe(1);
      expect(again.stderr).toBe('keys: no active key with id or name "alice"\n');
      const duplicate = run('create', '--name', 'alice');
      expect(duplicate.status).toBe(1);
      expect(duplicate.stderr).toBe('keys: a key named "alice" already exists\n');
      expect(run('bogus').status).toBe(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
