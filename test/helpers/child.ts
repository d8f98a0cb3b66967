// A TypeScript helper process for tests, talked to over IPC: `ask` sends a message and waits for the next reply.
import { type ChildProcess, fork } from 'node:child_process';

export interface TestChild<Reply> {
  /** The process itself (to signal it). */
  child: ChildProcess;
  /** Sends `message` (or nothing, to read a reply the child sends by itself) and resolves with the next reply. */
  ask(message?: object): Promise<Reply>;
  /** Asks the child to close (`{ close: true }`) and waits for it to exit. */
  stop(): Promise<void>;
}

export function forkTs<Reply>(script: string, args: string[]): TestChild<Reply> {
  const child = fork(script, args, {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return {
    child,
    ask: (message) =>
      new Promise((answer) => {
        child.once('message', answer as (reply: unknown) => void);
        if (message !== undefined) child.send(message);
      }),
    stop: () =>
      new Promise((done) => {
        if (child.exitCode !== null) return done();
        child.once('exit', () => done());
        child.send({ close: true });
      }),
  };
}
