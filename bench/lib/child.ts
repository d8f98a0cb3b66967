// Runs a benchmark server in its own process (its own core), and reads its CPU time over IPC.
import { type ChildProcess, fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

export interface ChildServer {
  url: string;
  pid: number;
  /** CPU time (user + system) the child has used so far, in µs. */
  cpuMicros(): Promise<number>;
  /** Sends a message and resolves with the child's next reply. */
  ask(message: string): Promise<unknown>;
  stop(): Promise<void>;
}

const tsx = resolve(import.meta.dirname, '../../node_modules/tsx/dist/loader.mjs');

// Children die with the benchmark, even when it fails half-way (they would otherwise keep it waiting on their IPC).
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

// Linux's USER_HZ (getconf CLK_TCK), the unit of the CPU times in /proc/<pid>/stat.
const CLOCK_TICKS = 100;

/** CPU time (user + system) that processes `pids` have used so far, in µs, read from /proc (Linux). */
export function processCpuMicros(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    // Fields after the command name (which may contain spaces): utime and stime are the 12th and 13th.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return (ticks / CLOCK_TICKS) * 1e6;
}

/** Kills `child` when this process exits. */
export function ownChild(child: ChildProcess): ChildProcess {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

/** Starts `script` (a TypeScript file that calls `serveInChild`) and waits for its URL. */
export function startChild(script: string, args: string[] = []): Promise<ChildServer> {
  const child = ownChild(
    fork(script, args, {
      execArgv: ['--import', tsx],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
  return new Promise((resolveStart, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
    child.once('message', (message: { url: string }) => {
      resolveStart({
        url: message.url,
        pid: child.pid!,
        cpuMicros: () =>
          new Promise((answer) => {
            child.once('message', (reply: { cpu: number }) => answer(reply.cpu));
            child.send('cpu');
          }),
        ask: (question: string) =>
          new Promise((answer) => {
            child.once('message', answer);
            child.send(question);
          }),
        stop: () =>
          new Promise((done) => {
            child.removeAllListeners('exit');
            child.once('exit', () => done());
            child.kill('SIGTERM');
          }),
      });
    });
  });
}

/** Called by a child server once it listens: reports its URL and answers CPU-time questions. */
export function serveInChild(url: string, close: () => Promise<void>): void {
  process.send?.({ url });
  process.on('message', (message) => {
    if (message === 'cpu') {
      const usage = process.cpuUsage();
      process.send?.({ cpu: usage.user + usage.system });
    }
  });
  process.once('SIGTERM', () => {
    void close().then(() => process.exit(0));
  });
}
