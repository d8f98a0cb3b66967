// `npm start`: the reference gateway. The primary forks WORKERS workers (replacing any that crash), keeps the shared
// rate-limit budget and aggregates metrics. Without VLLM_BASE_URL it starts the simulator (demo mode).
//
// Signals, however they arrive (to the primary, to one worker, to the whole process group as systemd and Ctrl-C send
// them, repeated): SIGTERM and SIGINT drain — stop accepting, let in-flight requests and open streams finish within
// SHUTDOWN_GRACE_MS, exit 0. Draining is idempotent: a worker signalled by the group and again by the primary keeps
// draining. A second SIGINT to the primary (a second Ctrl-C) forces an immediate exit: workers are killed, exit 130
// (under npm, which forwards the group's SIGINT once more, only one coming half a second or more after the first).
import cluster from 'node:cluster';
import client from 'prom-client';
import { serveCluster } from 'vllm-kit';
import { startVllmSimulator, type VllmSimulator } from 'vllm-kit/testing';
import { startWorker } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { openKeyStore } from './key-store.js';
import { serveSingleFlight } from './single-flight.js';

/** 128 + SIGINT, as shells report a process ended by Ctrl-C. */
const FORCED_EXIT_CODE = 130;

/**
 * Under npm, one Ctrl-C arrives twice: the terminal signals the whole process group, and npm forwards its own SIGINT to
 * the gateway. A SIGINT this soon after the first is that same Ctrl-C, not a second one.
 */
const sameCtrlCMs = process.env.npm_lifecycle_event === undefined ? 0 : 500;

/**
 * Calls `drain` on the first SIGTERM or SIGINT and ignores repeats, except that a SIGINT once draining has begun
 * calls `force` (when given) — unless it is the same Ctrl-C delivered again (`sameCtrlCMs`). Handlers stay registered (`on`, not `once`): a repeated signal must never fall through
 * to Node's default action, which kills the process mid-stream.
 */
function onStopSignals(drain: () => void, force?: () => void): void {
  let draining = false;
  let firstAt = 0;
  const handle = (signal: NodeJS.Signals) => {
    if (!draining) {
      draining = true;
      firstAt = performance.now();
      drain();
    } else if (signal === 'SIGINT' && performance.now() - firstAt >= sameCtrlCMs) force?.();
  };
  process.on('SIGTERM', handle);
  process.on('SIGINT', handle);
}

/**
 * Run by npm (`npm start`), the gateway stops with npm: if npm dies without passing a signal on (SIGKILL, a crash),
 * the primary notices it has been re-parented and drains instead of serving on as an orphan.
 */
function drainWhenOrphaned(drain: () => void): void {
  if (process.env.npm_lifecycle_event === undefined) return;
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    process.stderr.write(`gateway: npm (pid ${parent}) exited; draining\n`);
    drain();
  }, 1000);
  timer.unref();
}

function fail(error: unknown): never {
  const message = error instanceof ConfigError ? error.message : (error as Error).message;
  process.stderr.write(`gateway: ${message}\n`);
  process.exit(2);
}

/** What to do next, printed once the gateway listens: a key, then a request (the README's quick start). */
function nextSteps(url: string): string {
  const shownUrl = url.replace('://0.0.0.0:', '://127.0.0.1:');
  return [
    'gateway: next steps, in another terminal:',
    '  KEY=$(npm run -s keys -- create --name me | tail -n 1)',
    `  curl -s ${shownUrl}/v1/chat/completions -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\`,
    `    -d '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":32}'`,
    '',
  ].join('\n');
}

let config: ReturnType<typeof loadConfig>;
try {
  config = loadConfig();
} catch (error) {
  fail(error);
}
const GRACE_MS = config.shutdownGraceMs;

async function primary(): Promise<void> {
  const { upstreams, sim } = await demoUpstreams();
  if (config.workers === 1 && config.env === 'development') return runInProcess(upstreams, sim);
  // The schema is migrated once, here, before any worker starts: a wrong or unreachable DATABASE_URL stops the start
  // with one line naming it. Workers then connect on first use, so a database that goes down later never stops them
  // (nor their replacements) from starting.
  const keyStore = await openKeyStore(config.databaseUrl, {
    connectTimeoutMs: config.databaseConnectTimeoutMs,
  });
  await keyStore.close();
  serveCluster();
  serveSingleFlight();
  superviseWorkers(upstreams, sim);
}

/** VLLM_BASE_URL's replicas, or (demo mode, none given) the built-in simulator with H100-like latencies. */
async function demoUpstreams(): Promise<{ upstreams: string[]; sim: VllmSimulator | undefined }> {
  if (config.vllmBaseUrls.length > 0) return { upstreams: config.vllmBaseUrls, sim: undefined };
  const sim = await startVllmSimulator({
    ttftMs: 15,
    itlMs: 6.5,
    jitter: 0.2,
    batchSlowdown: 3,
    maxNumSeqs: 256,
  });
  process.stdout.write(
    `gateway: demo mode — no VLLM_BASE_URL, serving the built-in vLLM simulator at ${sim.url}\n`,
  );
  return { upstreams: [sim.url], sim };
}

/** Development with one worker: the gateway in this process, no cluster. */
async function runInProcess(upstreams: string[], sim: VllmSimulator | undefined): Promise<void> {
  const worker = await startWorker(config, { upstreams });
  process.stdout.write(
    `gateway: listening on ${worker.url} (1 worker, development)\n${nextSteps(worker.url)}`,
  );
  const stop = async () => {
    process.stdout.write(
      `gateway: draining: ${worker.openRequests()} open requests, up to ${GRACE_MS / 1000} s\n`,
    );
    await worker.close(GRACE_MS);
    await sim?.close();
    process.stdout.write('gateway: stopped\n');
    process.exit(0);
  };
  onStopSignals(stop, () => process.exit(FORCED_EXIT_CODE));
  drainWhenOrphaned(stop);
}

/**
 * Forks the workers, replaces one that dies after it served (stops when one dies before: it would die again),
 * answers their metrics scrapes with the cluster's aggregate, and drains them all on a stop signal.
 */
function superviseWorkers(upstreams: string[], sim: VllmSimulator | undefined): void {
  let stopping = false;
  const listeningWorkers = new Set<number>();
  const aggregate = metricsAggregation();
  const fork = () => {
    const worker = cluster.fork({ GATEWAY_UPSTREAMS: upstreams.join(',') });
    worker.on('message', (message: { type?: string; id?: number; url?: string }) => {
      if (message?.type === 'vllm-kit:gateway:listening') {
        listeningWorkers.add(worker.id);
        if (listeningWorkers.size === config.workers) {
          process.stdout.write(
            `gateway: listening on ${message.url} (${config.workers} workers)\n${nextSteps(message.url!)}`,
          );
        }
      }
      if (message?.type === 'vllm-kit:gateway:metrics-request') {
        const reply = (answer: { body: string } | { error: string }) => {
          if (worker.isConnected())
            worker.send({ type: 'vllm-kit:gateway:metrics', id: message.id, ...answer });
        };
        aggregate().then(
          (body) => reply({ body }),
          (error: Error) => reply({ error: error.message }),
        );
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
  const report = drainReport(listeningWorkers);
  const stop = (exitCode = 0) => {
    if (stopping) return;
    stopping = true;
    report.start();
    signalWorkers('SIGTERM', async () => {
      report.print();
      await sim?.close();
      process.stdout.write('gateway: stopped\n');
      process.exit(exitCode);
    });
  };
  const force = () => {
    process.stderr.write('gateway: second SIGINT; exiting without draining\n');
    const exit = () => process.exit(FORCED_EXIT_CODE);
    // Reap them before exiting (no zombies left to an init that may not reap), but never wait long.
    setTimeout(exit, 1000).unref();
    signalWorkers('SIGKILL', exit);
  };
  onStopSignals(() => stop(), force);
  drainWhenOrphaned(() => stop());
}

/**
 * The cluster's metrics, aggregated over the workers. Scrapes in flight share one aggregation. A worker that exits
 * meanwhile can never answer it: fail it at once (prom-client would wait 5 s, then give up) so the scrape gets a 503
 * now and the next one finds the new worker.
 */
function metricsAggregation(): () => Promise<string> {
  const aggregator = new client.AggregatorRegistry();
  let aggregation: Promise<string> | undefined;
  let failAggregation: ((error: Error) => void) | undefined;
  cluster.on('exit', () => failAggregation?.(new Error('a worker exited during the scrape')));
  return () => {
    aggregation ??= new Promise<string>((resolve, reject) => {
      failAggregation = reject;
      aggregator.clusterMetrics().then(resolve, reject);
    }).finally(() => {
      aggregation = undefined;
      failAggregation = undefined;
    });
    return aggregation;
  };
}

/** Sends `signal` to every worker and calls `then` once all have exited (at once when there are none). */
function signalWorkers(signal: NodeJS.Signals, then: () => void): void {
  const workers = Object.values(cluster.workers ?? {});
  let left = workers.length;
  if (left === 0) then();
  for (const worker of workers) {
    worker?.once('exit', () => --left === 0 && then());
    worker?.process.kill(signal);
  }
}

/** Open requests each draining worker reported: one line once all have, or half a second after the stop began. */
function drainReport(listeningWorkers: ReadonlySet<number>): { start(): void; print(): void } {
  const draining = new Map<number, number>();
  let line: NodeJS.Timeout | undefined;
  const print = () => {
    if (line === undefined) return;
    clearTimeout(line);
    line = undefined;
    let open = 0;
    for (const count of draining.values()) open += count;
    process.stdout.write(
      `gateway: draining: ${open} open requests in ${draining.size} workers, up to ${GRACE_MS / 1000} s\n`,
    );
  };
  cluster.on('message', (worker, message: { type?: string; open?: number }) => {
    if (message?.type !== 'vllm-kit:gateway:draining') return;
    draining.set(worker.id, message.open ?? 0);
    if (draining.size >= listeningWorkers.size) print();
  });
  return {
    start() {
      line = setTimeout(print, 500);
      line.unref();
    },
    print,
  };
}

async function worker(): Promise<void> {
  const upstreams = (process.env.GATEWAY_UPSTREAMS ?? '').split(',').filter(Boolean);
  const gateway = await startWorker(config, { upstreams });
  process.send?.({ type: 'vllm-kit:gateway:listening', url: gateway.url });
  // Drain: stop accepting, let in-flight requests and open streams finish, then exit 0. A worker never forces: the
  // group's second Ctrl-C reaches the primary too, which kills the workers itself.
  onStopSignals(async () => {
    if (process.connected)
      process.send?.({ type: 'vllm-kit:gateway:draining', open: gateway.openRequests() });
    await gateway.close(GRACE_MS);
    process.exit(0);
  });
}

(cluster.isPrimary ? primary() : worker()).catch(fail);
