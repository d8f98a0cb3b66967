// Four real node:cluster workers share one budget through the primary: exactly 20 of 25 pass.
import { type ChildProcess, spawn } from 'node:child_process';
import { request } from 'node:http';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

let app: ChildProcess;
let port: number;

beforeAll(async () => {
  app = spawn(process.execPath, ['--import', 'tsx', resolve(import.meta.dirname, 'cluster-app.ts')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  port = await new Promise<number>((resolvePort, reject) => {
    let out = '';
    app.stdout!.on('data', (chunk) => {
      out += chunk;
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) resolvePort(JSON.parse(line).port);
    });
    app.once('exit', (code) => reject(new Error(`cluster app exited with ${code}`)));
  });
});

afterAll(async () => {
  if (app.exitCode === null) {
    const exited = new Promise((done) => app.once('exit', done));
    app.kill('SIGTERM');
    await exited;
  }
});

/** One request on a new connection, so the primary spreads them over the workers. */
function get(): Promise<{ status: number; worker: string }> {
  return new Promise((resolveReply, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolveReply({ status: res.statusCode!, worker: String(res.headers['x-worker']) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('store: "cluster"', () => {
  it('gives one IP one budget across four workers', async () => {
    const replies = [];
    for (let i = 0; i < 25; i++) replies.push(await get());
    expect(replies.filter((r) => r.status === 200)).toHaveLength(20);
    expect(replies.filter((r) => r.status === 429)).toHaveLength(5);
    expect(replies.slice(20).every((r) => r.status === 429)).toBe(true);
    // The requests really were spread over several workers.
    expect(new Set(replies.map((r) => r.worker)).size).toBeGreaterThanOrEqual(2);
  }, 30_000);
});
