// Runs a benchmark server in its own process (its own core), and reads its CPU time over IPC.
import { type ChildProcess, fork } from 'node:child_process';
import { resolve } from 'node:path';

export interface ChildServer {
  url: string;
  /** CPU time (user + system) the child has used so far, in µs. */
  cpuMicros(): Promise<number>;
  /** Sends a message and resolves with the child's next reply. */
  ask(message: string): Promise<unknown>;
  stop(): Promise<void>;
}

const tsx = resolve(import.meta.dirname, '../../node_modules/tsx/dist/loader.mjs');

/** Starts `script` (a TypeScript file that calls `serveInChild`) and waits for its URL. */
export function startChild(script: string, args: string[] = []): Promise<ChildServer> {
  const child: ChildProcess = fork(script, args, {
    execArgv: ['--import', tsx],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolveStart, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
    child.once('message', (message: { url: string }) => {
      resolveStart({
        url: message.url,
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
