// Stopping the gateway as production does: systemd (KillMode=control-group) and Ctrl-C signal the whole process
// group, a container runtime signals `npm start`, an operator may signal one worker, and signals repeat. Open streams
// must complete every time and the process exit 0; only a second Ctrl-C cuts them short.
import { describe, expect, it } from 'vitest';
import { trackResources } from '../helpers/fixtures.js';
import { alive, chat, groupMembers, trackGatewayProcesses } from '../helpers/gateway-process.js';

const { start } = trackGatewayProcesses();
const resources = trackResources();
// ~1 s streams: long enough to be mid-stream when the signal lands.
const streamBody = { messages: [{ role: 'user', content: 'x' }], max_tokens: 40, stream: true };
const completed = (text: string) => text.trimEnd().endsWith('data: [DONE]');

describe('stopping by process group', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`group ${signal} with open streams: every stream completes and the gateway exits 0, 10 times in a row`, async () => {
      const sim = await resources.simulator({ itlMs: 25 });
      for (let run = 0; run < 10; run++) {
        const gateway = await start(sim.url, { detached: true, env: { WORKERS: '2' } });
        const streams = [
          chat(gateway.url, gateway.key, streamBody),
          chat(gateway.url, gateway.key, streamBody),
        ];
        await expect.poll(() => sim.stats().running).toBe(2);
        // What systemd and a terminal do: every process of the group gets the signal (the workers then get
        // SIGTERM from the primary as well).
        process.kill(-gateway.child.pid!, signal);
        for (const result of await Promise.all(streams)) {
          expect(result.status, `run ${run}`).toBe(200);
          expect(completed(result.text), `run ${run}: ${gateway.output()}`).toBe(true);
        }
        expect(await gateway.exited, `run ${run}: ${gateway.output()}`).toBe(0);
        expect(gateway.output()).not.toMatch(/exited \(SIG/);
        await expect.poll(() => groupMembers(gateway.child.pid!)).toEqual([]);
      }
    }, 120_000);
  }

  it('a signal repeated to the group keeps draining (SIGTERM, then SIGTERM and SIGINT again)', async () => {
    const sim = await resources.simulator({ itlMs: 25 });
    const gateway = await start(sim.url, { detached: true, env: { WORKERS: '2' } });
    const stream = chat(gateway.url, gateway.key, streamBody);
    await expect.poll(() => sim.stats().running).toBe(1);
    process.kill(-gateway.child.pid!, 'SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 100));
    process.kill(-gateway.child.pid!, 'SIGTERM');
    const result = await stream;
    expect(completed(result.text)).toBe(true);
    expect(await gateway.exited).toBe(0);
  }, 60_000);

  it('a second Ctrl-C (group SIGINT twice) exits at once with 130, cutting the stream', async () => {
    const sim = await resources.simulator({ itlMs: 50 });
    const gateway = await start(sim.url, { detached: true, env: { WORKERS: '2' } });
    const stream = chat(gateway.url, gateway.key, { ...streamBody, max_tokens: 2000 });
    await expect.poll(() => sim.stats().running).toBe(1);
    process.kill(-gateway.child.pid!, 'SIGINT');
    await new Promise((resolve) => setTimeout(resolve, 200));
    process.kill(-gateway.child.pid!, 'SIGINT');
    expect(await gateway.exited).toBe(130);
    const result = await stream;
    expect(completed(result.text)).toBe(false);
    await expect.poll(() => groupMembers(gateway.child.pid!)).toEqual([]);
  }, 60_000);

  it('Ctrl-C with npm in front (npm forwards the SIGINT the group already got): a drain, not a forced exit', async () => {
    const sim = await resources.simulator({ itlMs: 25 });
    const gateway = await start(sim.url, { via: 'npm', detached: true, env: { WORKERS: '2' } });
    const stream = chat(gateway.url, gateway.key, streamBody);
    await expect.poll(() => sim.stats().running).toBe(1);
    process.kill(-gateway.child.pid!, 'SIGINT');
    expect(await gateway.exited).toBe(0);
    expect(completed((await stream).text)).toBe(true);
    await expect.poll(() => groupMembers(gateway.child.pid!)).toEqual([]);
  }, 60_000);

  it('with npm in front, a second Ctrl-C (a second later) still exits at once with 130', async () => {
    const sim = await resources.simulator({ itlMs: 50 });
    const gateway = await start(sim.url, { via: 'npm', detached: true, env: { WORKERS: '2' } });
    const stream = chat(gateway.url, gateway.key, { ...streamBody, max_tokens: 2000 });
    await expect.poll(() => sim.stats().running).toBe(1);
    process.kill(-gateway.child.pid!, 'SIGINT');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    process.kill(-gateway.child.pid!, 'SIGINT');
    expect(await gateway.exited).toBe(130);
    expect(completed((await stream).text)).toBe(false);
    await expect.poll(() => groupMembers(gateway.child.pid!)).toEqual([]);
  }, 60_000);

  it('SIGTERM to one worker: it drains its streams and the primary replaces it', async () => {
    const sim = await resources.simulator({ itlMs: 25 });
    const gateway = await start(sim.url, { detached: true, env: { WORKERS: '2' } });
    // Four streams on four connections: the primary spreads them over both workers.
    const streams = Array.from({ length: 4 }, () => chat(gateway.url, gateway.key, streamBody));
    await expect.poll(() => sim.stats().running).toBe(4);
    const worker = groupMembers(gateway.child.pid!).find((pid) => pid !== gateway.child.pid)!;
    process.kill(worker, 'SIGTERM');
    process.kill(worker, 'SIGINT');
    for (const result of await Promise.all(streams)) expect(completed(result.text)).toBe(true);
    await expect
      .poll(() => gateway.output(), { timeout: 10_000 })
      .toMatch(new RegExp(`worker ${worker} exited \\(0\\); starting a new one`));
    expect(alive(gateway.child.pid!)).toBe(true);
  }, 60_000);
});

describe('npm start in front (a container whose command is npm start)', () => {
  it('SIGTERM to npm alone drains the gateway behind it: streams complete, nothing is left running', async () => {
    const sim = await resources.simulator({ itlMs: 25 });
    const gateway = await start(sim.url, { via: 'npm', detached: true, env: { WORKERS: '2' } });
    const stream = chat(gateway.url, gateway.key, streamBody);
    await expect.poll(() => sim.stats().running).toBe(1);
    gateway.child.kill('SIGTERM');
    const result = await stream;
    expect(completed(result.text)).toBe(true);
    await gateway.exited;
    // No gateway process outlives npm.
    await expect.poll(() => groupMembers(gateway.child.pid!), { timeout: 10_000 }).toEqual([]);
  }, 60_000);

  it('npm killed outright (SIGKILL): the orphaned gateway notices, drains its streams and exits', async () => {
    const sim = await resources.simulator({ itlMs: 25 });
    const gateway = await start(sim.url, { via: 'npm', detached: true, env: { WORKERS: '2' } });
    const stream = chat(gateway.url, gateway.key, { ...streamBody, max_tokens: 80 });
    await expect.poll(() => sim.stats().running).toBe(1);
    gateway.child.kill('SIGKILL');
    const result = await stream;
    expect(completed(result.text)).toBe(true);
    await expect.poll(() => groupMembers(gateway.child.pid!), { timeout: 10_000 }).toEqual([]);
  }, 60_000);
});
