// `routingSync` implementations: how processes routing over the same replicas tell each other which prompt blocks they
// sent where, so that a conversation whose turns reach different workers or hosts still finds the replica holding
// it. Updates are small (only blocks new to a replica) and off the request path: sent once per event-loop turn,
// applied when they arrive. A conversation's next turn comes a think time later, long after its update.

import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { NotClusterPrimaryError } from '../errors/index.js';
import type { RedisLike, RedisSubscriberLike } from '../token-cache/options.js';
import type { RoutingSync, RoutingUpdate } from './replica-pool.js';

const TAG = 'vllm-kit:routing-sync';

interface SyncMessage {
  tag: typeof TAG;
  name: string;
  update: RoutingUpdate;
}

function isSyncMessage(message: unknown, name: string): message is SyncMessage {
  const m = message as Partial<SyncMessage> | null;
  return typeof m === 'object' && m !== null && m.tag === TAG && m.name === name && Array.isArray(m.update);
}

/**
 * For node:cluster workers: each worker's placements reach the others through the primary, which must run
 * `serveClusterRoutingSync()`. `name` separates clients routing over different replica sets.
 */
export function clusterRoutingSync(name = 'default'): RoutingSync {
  return {
    publish(update) {
      if (process.send === undefined || !process.connected) return;
      process.send({ tag: TAG, name, update } satisfies SyncMessage);
    },
    subscribe(handler) {
      const onMessage = (message: unknown) => {
        if (isSyncMessage(message, name)) handler(message.update);
      };
      process.on('message', onMessage);
      return () => process.off('message', onMessage);
    },
  };
}

/**
 * In the cluster primary: relays every worker's routing updates to the other workers. `serveCluster()` starts it with
 * the other pieces' servers.
 * @deprecated Call `serveCluster()` once in the primary; this name stays for one release.
 */
export function serveClusterRoutingSync(): { close(): void } {
  if (!cluster.isPrimary) throw new NotClusterPrimaryError('serveClusterRoutingSync');
  const onMessage = (from: Worker, message: unknown) => {
    const m = message as Partial<SyncMessage> | null;
    if (typeof m !== 'object' || m === null || m.tag !== TAG) return;
    for (const worker of Object.values(cluster.workers ?? {})) {
      if (worker !== undefined && worker !== from && worker.isConnected()) worker.send(m);
    }
  };
  cluster.on('message', onMessage);
  return {
    close() {
      cluster.off('message', onMessage);
    },
  };
}

/**
 * Across hosts (and their workers): updates go through a Redis channel. Takes the ioredis client the process already
 * has; subscribing uses a duplicate connection of its own, closed by the returned sync's unsubscribe. A Redis that is
 * down loses updates meanwhile (those conversations are placed by balance once), never a request.
 */
export function redisRoutingSync(redis: RedisLike, options: { channel?: string } = {}): RoutingSync {
  const channel = options.channel ?? 'vllm-kit:routing';
  // Our own messages come back on the channel: they carry this process's id and are skipped.
  const self = randomBytes(8).toString('hex');
  return {
    publish(update) {
      redis.publish(channel, JSON.stringify({ from: self, update })).catch(() => {});
    },
    subscribe(handler) {
      const subscriber: RedisSubscriberLike = redis.duplicate();
      // Its connection errors (Redis down) are the caller's client's to report; they must never go unhandled here.
      subscriber.on('error', () => {});
      subscriber.on('message', (from, text) => {
        if (from !== channel) return;
        let message: { from?: unknown; update?: unknown };
        try {
          message = JSON.parse(text) as { from?: unknown; update?: unknown };
        } catch {
          return;
        }
        if (message.from !== self && Array.isArray(message.update)) handler(message.update as RoutingUpdate);
      });
      let closed = false;
      let retry: NodeJS.Timeout | undefined;
      const subscribe = () => {
        subscriber.subscribe(channel).catch(() => {
          if (closed) return;
          retry = setTimeout(subscribe, 500);
          retry.unref();
        });
      };
      subscribe();
      return () => {
        closed = true;
        if (retry !== undefined) clearTimeout(retry);
        subscriber.quit().catch(() => {});
      };
    },
  };
}
