// Per-key budgets in the gateway as `npm start` runs it: exact admission at the boundary across 4 cluster workers and
// across two gateway processes on Redis, usage persisted on SIGTERM, and the keys CLI's limits and usage.
import { describe, expect, it } from 'vitest';
import { startVllmSimulator } from '../../src/testing/index.js';
import { chat, trackGatewayProcesses } from '../helpers/gateway-process.js';
import { REDIS_URL } from '../helpers/services.js';

const { start, onCleanup } = trackGatewayProcesses();
const body = { messages: [{ role: 'user', content: 'Count to ten.' }] };

async function simulator(outputTokens: number) {
  const sim = await startVllmSimulator({ model: 'm', outputTokens });
  onCleanup(() => sim.close());
  return sim;
}

/** Tokens one request of `body` uses, asked of the simulator directly. */
async function tokensPerRequest(url: string): Promise<number> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return ((await res.json()) as { usage: { total_tokens: number } }).usage.total_tokens;
}

describe('budgets across workers and hosts', () => {
  it('admits exactly rpm requests across 4 cluster workers', async () => {
    const sim = await simulator(3);
    const gateway = await start(sim.url, { env: { WORKERS: '4' }, keyArgs: ['--rpm', '10'] });
    const statuses = [];
    for (let i = 0; i < 14; i++) statuses.push((await chat(gateway.url, gateway.key, body)).status);
    expect(statuses).toEqual([...Array(10).fill(200), ...Array(4).fill(429)]);
  }, 60_000);

  it('admits while the minute’s tokens are under tpm, one token from the edge, across 4 workers', async () => {
    const sim = await simulator(20);
    const perRequest = await tokensPerRequest(sim.url);
    // Two requests leave exactly one token: the third is admitted (charged after), the fourth refused.
    const gateway = await start(sim.url, {
      env: { WORKERS: '4' },
      keyArgs: ['--tpm', String(2 * perRequest + 1)],
    });
    const replies = [];
    for (let i = 0; i < 6; i++) replies.push(await chat(gateway.url, gateway.key, body));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 429, 429, 429]);
    expect(JSON.parse(replies[3]!.text).error).toMatchObject({ type: 'tokens', code: 'rate_limit_exceeded' });
  }, 60_000);

  it('gives a key one budget across two gateway processes on Redis', async () => {
    const sim = await simulator(3);
    // A per-IP budget of this test's own in the shared Redis (other tests' requests from 127.0.0.1 count elsewhere).
    const env = { WORKERS: '2', REDIS_URL, RATE_LIMIT_NAME: `budgets-${process.pid}-${Date.now()}` };
    const first = await start(sim.url, { env, keyArgs: ['--rpm', '10'] });
    const second = await start(sim.url, {
      env: { ...env, DATABASE_URL: first.databaseUrl },
      keyName: 'second',
    });
    const statuses = [];
    for (let i = 0; i < 14; i++) {
      const gateway = i % 2 === 0 ? first : second;
      statuses.push((await chat(gateway.url, first.key, body)).status);
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(10);
    expect(statuses.slice(10)).toEqual([429, 429, 429, 429]);
  }, 60_000);
});

describe('usage in the key store', () => {
  it('is written on SIGTERM, before the workers exit (the 5 s batch timer never fired)', async () => {
    const sim = await simulator(9);
    const gateway = await start(sim.url, { env: { WORKERS: '4', USAGE_FLUSH_MS: '5000' }, detached: true });
    let prompt = 0;
    let completion = 0;
    for (let i = 0; i < 8; i++) {
      const reply = await chat(gateway.url, gateway.key, body);
      const { usage } = JSON.parse(reply.text) as {
        usage: { prompt_tokens: number; completion_tokens: number };
      };
      prompt += usage.prompt_tokens;
      completion += usage.completion_tokens;
    }
    process.kill(-gateway.child.pid!, 'SIGTERM');
    expect(await gateway.exited).toBe(0);
    const usage = gateway.keys('usage', 'test', '--json');
    expect(usage.status).toBe(0);
    expect(JSON.parse(usage.stdout)).toEqual([
      { name: 'test', requests: 8, promptTokens: prompt, completionTokens: completion },
    ]);
  }, 60_000);

  it('keys CLI: limits validated, updated, shown; usage as a table or JSON', async () => {
    const sim = await simulator(3);
    const gateway = await start(sim.url, { env: { ENV: 'development' } });
    for (const bad of [
      ['create', '--name', 'x', '--rpm', '-5'],
      ['create', '--name', 'x', '--tpm', '1.5'],
      ['create', '--name', 'x', '--rpm', 'none'],
      ['update', 'test', '--tpm', 'lots'],
      ['update', 'test'],
      ['update', 'test', '--priority', '1.5'],
      ['create', '--name', 'x', '--priority', '-5000'],
      ['create', '--name', 'x', '--models', 'not a model!'],
    ]) {
      const run = gateway.keys(...bad);
      expect(run.status, bad.join(' ')).toBe(2);
      expect(run.stderr).toMatch(
        /^keys: (--(rpm|tpm) must be a whole number of at least 1|--priority must be|--models must be|update needs)/,
      );
    }
    expect(gateway.keys('create', '--name', 'x', '--rpm', '-5').stderr).toContain('got "-5"');
    // Nothing was created by the refused commands.
    expect(JSON.parse(gateway.keys('usage', '--json').stdout)).toHaveLength(1);
    const created = gateway.keys('create', '--name', 'team', '--rpm', '60', '--tpm', '100000');
    expect(created.stdout).toContain('rpm 60, tpm 100000');
    expect(
      gateway.keys('update', 'team', '--rpm', 'none', '--tpm', '5000', '--priority', '-2').stdout,
    ).toContain('rpm unlimited, tpm 5000, priority -2');
    expect(gateway.keys('list').stdout).toMatch(
      /\tteam\t.*\trpm unlimited\ttpm 5000\tpriority -2\tmodels all/,
    );
    expect(gateway.keys('update', 'team', '--models', 'model-a,b-sql').stdout).toContain(
      'models model-a,b-sql',
    );
    expect(gateway.keys('list').stdout).toMatch(/\tteam\t.*\tmodels model-a,b-sql\n/);
    expect(gateway.keys('update', 'team', '--models', 'all').stdout).toContain('models all');
    expect(gateway.keys('update', 'nobody', '--rpm', '1')).toMatchObject({
      status: 1,
      stderr: 'keys: no active key with id or name "nobody"\n',
    });
    await chat(gateway.url, gateway.key, body);
    await expect
      .poll(() => JSON.parse(gateway.keys('usage', 'test', '--json').stdout)[0].requests, { timeout: 10_000 })
      .toBe(1);
    const table = gateway.keys('usage').stdout.split('\n');
    expect(table[0]).toBe('name\trequests\tprompt_tokens\tcompletion_tokens');
    expect(table[1]).toMatch(/^test\t1\t\d+\t3$/);
    expect(table[2]).toBe('team\t0\t0\t0');
    expect(gateway.keys('usage', 'nobody').status).toBe(1);
    const help = gateway.keys('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('usage [NAME] [--json]');
  }, 60_000);
});
