// A node:cluster app for the cluster-store test: the primary holds the counts, four workers serve one port. With
// SERVE_RATE_LIMITS=0 the primary does not serve the counts (a primary that never answers).
import { createIpRateLimiter, serveCluster } from '../../src/index.js';
import { runClusterApp } from '../helpers/cluster-app.js';

runClusterApp({
  workers: 4,
  primary: () => {
    if (process.env.SERVE_RATE_LIMITS !== '0') serveCluster();
  },
  worker: () => {
    const limiter = createIpRateLimiter({ store: 'cluster', points: 20, windowSec: 60, storeTimeoutMs: 300 });
    return async (req, res) => {
      res.setHeader('x-worker', String(process.pid));
      if (req.url === '/burst') {
        // 50 checks of one key in one event-loop turn (they travel to the primary as one batch).
        const decisions = await Promise.all(Array.from({ length: 50 }, () => limiter.consume('burst')));
        res.end(
          JSON.stringify(
            decisions.map((d) => ({ allowed: d.allowed, remaining: d.remaining, degraded: d.degraded })),
          ),
        );
        return;
      }
      if (!(await limiter.handle(req, res))) return;
      res.end('ok');
    };
  },
});
