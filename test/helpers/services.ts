// Real services for tests, from the environment with the machine's defaults. Never skipped: CI starts them.
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** A channel or key prefix no other test run shares. */
export function uniqueName(prefix: string): string {
  return `${prefix}:${process.pid}:${Date.now().toString(36)}:${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A redis-server of the test's own on a free port, to kill mid-test (an outage the shared one must never have).
 * Resolves once it answers; `kill()` SIGKILLs it and waits for the exit.
 */
export async function startPrivateRedis(): Promise<{
  url: string;
  kill(): Promise<void>;
  /** Starts a new, empty redis-server on the same port (after `kill`), as a restart without persistence does. */
  restart(): Promise<void>;
}> {
  const { spawn } = await import('node:child_process');
  const { createServer } = await import('node:net');
  const { Redis } = await import('ioredis');
  const probe = createServer();
  await new Promise<void>((done) => probe.listen(0, '127.0.0.1', done));
  const port = (probe.address() as { port: number }).port;
  await new Promise((done) => probe.close(done));
  const url = `redis://127.0.0.1:${port}`;
  const launch = async () => {
    const server = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    const exited = new Promise<void>((done) => server.once('exit', () => done()));
    for (let i = 0; ; i++) {
      const client = new Redis(url, {
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
      });
      client.on('error', () => {});
      const up = await client.connect().then(
        () => true,
        () => false,
      );
      client.disconnect();
      if (up) break;
      if (i === 100) throw new Error('private redis-server did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    return { server, exited };
  };
  let current = await launch();
  return {
    url,
    async kill() {
      const { server, exited } = current;
      if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
      await exited;
    },
    async restart() {
      current = await launch();
    },
  };
}
