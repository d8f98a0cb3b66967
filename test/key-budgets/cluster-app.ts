// A node:cluster app for the key-budgets test: the primary holds the windows, four workers serve one port.
// GET /admit?key=K&requests=N&tokens=M admits one request; GET /charge?key=K&tokens=N charges tokens;
// GET /burst?key=K&requests=N admits 50 at once (one IPC batch); GET /use?key=K&tokens=M&reserve=R&used=U admits
// reserving R tokens and settles U; GET /reset?key=K starts K's window over; GET /exit ends the worker that answers. Every answer carries the worker's pid (x-worker) and its leased admissions
// (x-leased).
import cluster from 'node:cluster';
import { createKeyBudgets, serveClusterBudgets } from '../../src/index.js';
import { runClusterApp } from '../helpers/cluster-app.js';

runClusterApp({
  workers: 4,
  primary: () => serveClusterBudgets(),
  worker: () => {
    const budgets = createKeyBudgets({ store: 'cluster', storeTimeoutMs: 1000 });
    return async (req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      const key = url.searchParams.get('key') ?? 'k';
      const limit = (name: string) =>
        url.searchParams.has(name) ? Number(url.searchParams.get(name)) : null;
      const limits = { requests: limit('requests'), tokens: limit('tokens') };
      res.setHeader('x-worker', String(process.pid));
      const reply = (body: unknown) => {
        res.setHeader('x-leased', String(budgets.stats().leased));
        res.end(JSON.stringify(body));
      };
      if (url.pathname === '/reset') {
        await budgets.reset(key);
        reply({});
        return;
      }
      if (url.pathname === '/exit') {
        // This worker dies holding what it holds (its leases too), as a crashed worker would. It stops taking
        // connections first, so that none is handed to it as it goes.
        res.end('{}', () => {
          cluster.worker?.once('disconnect', () => process.exit(0));
          cluster.worker?.disconnect();
        });
        return;
      }
      if (url.pathname === '/use') {
        const decision = await budgets.admit(key, limits, {
          reserveTokens: Number(url.searchParams.get('reserve')),
        });
        if (decision.allowed)
          await budgets.settle(decision.reservation, key, Number(url.searchParams.get('used')));
        reply(decision);
        return;
      }
      if (url.pathname === '/charge') {
        await budgets.charge(key, Number(url.searchParams.get('tokens')));
        res.end('{}');
        return;
      }
      if (url.pathname === '/burst') {
        const decisions = await Promise.all(Array.from({ length: 50 }, () => budgets.admit(key, limits)));
        reply(decisions);
        return;
      }
      reply(await budgets.admit(key, limits));
    };
  },
});
