// Test apps on node:cluster, in two halves: `runClusterApp` inside the app script (the primary forks the workers and
// prints `{"port":…}` once all listen; each worker serves its handler on one shared port), and `startClusterApp` in
// the test (spawns the script, resolves with the port; `stop()` SIGTERMs it and waits).
import { type ChildProcess, spawn } from 'node:child_process';
import cluster from 'node:cluster';
import { createServer, type RequestListener } from 'node:http';
import type { AddressInfo } from 'node:net';

export function runClusterApp(options: {
  workers: number;
  /** Runs in the primary before forking (e.g. `serveClusterRateLimits()`). */
  primary: () => void;
  /** Runs in each worker: its request handler. */
  worker: () => RequestListener;
}): void {
  if (cluster.isPrimary) {
    options.primary();
    let listening = 0;
    for (let i = 0; i < options.workers; i++) {
      const worker = cluster.fork();
      worker.on('message', (message: { port?: number }) => {
        if (message.port === undefined) return;
        if (++listening === options.workers)
          process.stdout.write(`${JSON.stringify({ port: message.port })}\n`);
      });
    }
    process.on('SIGTERM', () => {
      for (const worker of Object.values(cluster.workers ?? {})) worker?.kill();
      process.exit(0);
    });
    return;
  }
  const server = createServer(options.worker());
  server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as AddressInfo).port }));
}

export async function startClusterApp(
  script: string,
  env: Record<string, string> = {},
): Promise<{ port: number; stop(): Promise<void> }> {
  const app: ChildProcess = spawn(process.execPath, ['--import', 'tsx', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
  });
  const port = await new Promise<number>((resolvePort, reject) => {
    let out = '';
    app.stdout!.on('data', (chunk) => {
      out += chunk;
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) resolvePort(JSON.parse(line).port);
    });
    app.once('exit', (code) => reject(new Error(`cluster app exited with ${code}`)));
  });
  return {
    port,
    async stop() {
      if (app.exitCode !== null) return;
      const exited = new Promise((done) => app.once('exit', done));
      app.kill('SIGTERM');
      await exited;
    },
  };
}
