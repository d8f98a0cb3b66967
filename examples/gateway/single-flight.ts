// One adapter load at a time across the gateway's workers (the client's `singleFlight`): the primary grants the lead
// for a key to one worker, holds the others, and hands them the leader's result (the replica that loaded it). A
// leader that dies passes the lead to the next waiter. Loads are rare; a message each way per load is nothing.
import cluster, { type Worker } from 'node:cluster';

const TAG = 'vllm-kit-gateway:single-flight';

type ToPrimary =
  | { tag: typeof TAG; kind: 'claim'; id: number; key: string }
  | { tag: typeof TAG; kind: 'done'; key: string; result?: string; error?: string };
type ToWorker = { tag: typeof TAG; kind: 'answer'; id: number; lead?: true; result?: string; error?: string };

function isOurs(message: unknown): boolean {
  return typeof message === 'object' && message !== null && (message as { tag?: unknown }).tag === TAG;
}

/** The primary's side: call once in the primary; `close()` stops answering. */
export function serveSingleFlight(): { close(): void } {
  /** Per key: the worker leading the load, and the calls waiting for its result. */
  const flights = new Map<string, { leader: Worker; waiting: { worker: Worker; id: number }[] }>();
  const answer = (worker: Worker, reply: Omit<ToWorker, 'tag' | 'kind'>) => {
    if (worker.isConnected()) worker.send({ tag: TAG, kind: 'answer', ...reply } satisfies ToWorker);
  };
  const onMessage = (worker: Worker, message: unknown) => {
    if (!isOurs(message)) return;
    const m = message as ToPrimary;
    if (m.kind === 'claim') {
      const flight = flights.get(m.key);
      if (flight === undefined) {
        flights.set(m.key, { leader: worker, waiting: [] });
        answer(worker, { id: m.id, lead: true });
      } else flight.waiting.push({ worker, id: m.id });
      return;
    }
    const flight = flights.get(m.key);
    if (flight === undefined || flight.leader !== worker) return;
    flights.delete(m.key);
    for (const waiter of flight.waiting) {
      answer(waiter.worker, {
        id: waiter.id,
        ...(m.result === undefined ? {} : { result: m.result }),
        ...(m.error === undefined ? {} : { error: m.error }),
      });
    }
  };
  // A leader that exits mid-load: the next waiter (in a live worker) leads instead.
  const onExit = (worker: Worker) => {
    for (const [key, flight] of flights) {
      if (flight.leader !== worker) continue;
      const next = flight.waiting.filter((w) => w.worker !== worker && w.worker.isConnected());
      const leader = next.shift();
      if (leader === undefined) {
        flights.delete(key);
        continue;
      }
      flights.set(key, { leader: leader.worker, waiting: next });
      answer(leader.worker, { id: leader.id, lead: true });
    }
  };
  cluster.on('message', onMessage);
  cluster.on('exit', onExit);
  return {
    close() {
      cluster.off('message', onMessage);
      cluster.off('exit', onExit);
    },
  };
}

/** The worker's side: the client's `singleFlight` option. */
export function clusterSingleFlight(): (key: string, run: () => Promise<string>) => Promise<string> {
  let nextId = 0;
  const pending = new Map<number, (reply: ToWorker) => void>();
  process.on('message', (message: unknown) => {
    if (!isOurs(message)) return;
    const reply = message as ToWorker;
    const resolve = pending.get(reply.id);
    if (resolve === undefined) return;
    pending.delete(reply.id);
    resolve(reply);
  });
  const send = (message: ToPrimary) => process.send?.(message);
  return async (key, run) => {
    const id = nextId++;
    const reply = await new Promise<ToWorker>((resolve) => {
      pending.set(id, resolve);
      send({ tag: TAG, kind: 'claim', id, key });
    });
    if (!reply.lead) {
      if (reply.result !== undefined) return reply.result;
      throw new Error(reply.error ?? 'the adapter load failed in another worker');
    }
    try {
      const result = await run();
      send({ tag: TAG, kind: 'done', key, result });
      return result;
    } catch (error) {
      send({ tag: TAG, kind: 'done', key, error: (error as Error).message });
      throw error;
    }
  };
}
