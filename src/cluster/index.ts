// serveCluster(): the node:cluster primary's side of every piece with `store: 'cluster'` (and the client's cluster
// routing sync), started with one call.
import cluster from 'node:cluster';
import { serveClusterRoutingSync } from '../client/routing-sync.js';
import { NotClusterPrimaryError } from '../errors/index.js';
import { serveClusterBudgets } from '../key-budgets/stores.js';
import { serveClusterRateLimits } from '../rate-limit/stores.js';
import { serveClusterPermits } from '../upstream-permits/stores.js';

export interface ServeClusterOptions {
  /** The clock of the windows the primary holds (tests). @default Date.now */
  now?: () => number;
}

/** What `serveCluster()` returns: `close()` stops answering the workers and forgets every count. */
export interface ClusterServer {
  close(): void;
}

/**
 * Runs in the cluster primary, once, before or after forking: holds the counts of every worker's rate limiters, key
 * budgets and permit pools made with `store: 'cluster'`, and relays the client's `clusterRoutingSync()` updates. Every
 * worker then shares one limit, one budget per key, one permit count per replica, one view of the replicas' caches.
 *
 * @example
 * if (cluster.isPrimary) {
 *   serveCluster();
 *   for (let i = 0; i < 4; i++) cluster.fork();
 * }
 */
export function serveCluster(options: ServeClusterOptions = {}): ClusterServer {
  if (!cluster.isPrimary) throw new NotClusterPrimaryError('serveCluster');
  const servers = [
    serveClusterRateLimits(options),
    serveClusterBudgets(options),
    serveClusterPermits(),
    serveClusterRoutingSync(),
  ];
  return {
    close() {
      for (const server of servers) server.close();
    },
  };
}
