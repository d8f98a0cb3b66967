// `npm start`: the reference gateway. The primary forks WORKERS workers (replacing any that crash), keeps the shared
// rate-limit budget and aggregates metrics; SIGTERM drains. Without VLLM_BASE_URL it starts the simulator (demo mode).
import cluster from 'node:cluster';
import client from 'prom-client';
import { serveClusterRateLimits } from 'vllm-kit';
import { startVllmSimulator, type VllmSimulator } from 'vllm-kit/testing';
import { startWorker } from './app.js';
import { ConfigError, loadConfig } from './config.js';

const GRACE_MS = Number(process.env.SHUTDOWN_GRACE_MS ?? 30_000);

function fail(error: unknown): never {
  const message = error instanceof ConfigError ? error.message : (error as Error).message;
  process.stderr.write(`gateway: ${message}\n`);
  process.exit(2);
}

let config: ReturnType<typeof loadConfig>;
try {
  config = loadConfig();
} catch (error) {
  fail(error);
}

async function primary(): Promise<void> {
  let upstreams = config.vllmBaseUrls;
  let sim: VllmSimulator | undefined;
  if (upstreams.length === 0) {
    // Demo mode: H100-like latencies, so the numbers mean something.
    sim = await startVllmSimulator({
      ttftMs: 15,
      itlMs: 6.5,
      jitter: 0.2,
      batchSlowdown: 3,
      maxNumSeqs: 256,
    });
    upstreams = [sim.url];
    process.stdout.write(
      `gateway: demo mode — no VLLM_BASE_URL, serving the built-in vLLM simulator at ${sim.url}\n`,
    );
  }
  if (config.workers === 1 && config.env === 'development') {
    const worker = await startWorker(config, { upstreams });
    process.stdout.write(`gateway: listening on ${worker.url} (1 worker, development)\n`);
    const stop = async () => {
      await worker.close(GRACE_MS);
      await sim?.close();
      process.exit(0);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    return;
  }
  serveClusterRateLimits();
  const aggregator = new client.AggregatorRegistry();
  let stopping = false;
  const listeningWorkers = new Set<number>();
  const fork = () => {
    const worker = cluster.fork({ GATEWAY_UPSTREAMS: upstreams.join(',') });
    worker.on('message', async (message: { type?: string; id?: number; url?: string }) => {
      if (message?.type === 'vllm-kit:gateway:listening') {
        listeningWorkers.add(worker.id);
        if (listeningWorkers.size === config.workers) {
          process.stdout.write(`gateway: listening on ${message.url} (${config.workers} workers)\n`);
        }
      }
      if (message?.type === 'vllm-kit:gateway:metrics-request') {
        const body = await aggregator.clusterMetrics().catch(() => '');
        worker.send({
          type: 'vllm-kit:gateway:metrics',
          id: message.id,
          body,
          contentType: aggregator.contentType,
        });
      }
    });
  };
  for (let i = 0; i < config.workers; i++) fork();
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    if (!listeningWorkers.has(worker.id)) {
      // It died before serving (the key store unreachable, a bad setting): a new one would die the same way, so
      // stop instead of forking in a loop.
      process.stderr.write(
        `gateway: worker ${worker.process.pid} failed to start (${signal ?? code}); stopping\n`,
      );
      stop(1);
      return;
    }
    process.stderr.write(
      `gateway: worker ${worker.process.pid} exited (${signal ?? code}); starting a new one\n`,
    );
    fork();
  });
  const stop = (exitCode = 0) => {
    if (stopping) return;
    stopping = true;
    const workers = Object.values(cluster.workers ?? {});
    let left = workers.length;
    const done = async () => {
      await sim?.close();
      process.exit(exitCode);
    };
    if (left === 0) void done();
    for (const worker of workers) {
      worker?.once('exit', () => {
        if (--left === 0) void done();
      });
      worker?.process.kill('SIGTERM');
    }
  };
  process.once('SIGTERM', () => stop());
  process.once('SIGINT', () => stop());
}

async function worker(): Promise<void> {
  const upstreams = (process.env.GATEWAY_UPSTREAMS ?? '').split(',').filter(Boolean);
  const gateway = await startWorker(config, { upstreams });
  process.send?.({ type: 'vllm-kit:gateway:listening', url: gateway.url });
  process.once('SIGTERM', async () => {
    // Drain: stop accepting, let in-flight requests and open streams finish, then exit 0.
    await gateway.close(GRACE_MS);
    process.exit(0);
  });
}

(cluster.isPrimary ? primary() : worker()).catch(fail);
