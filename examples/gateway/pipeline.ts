// The gateway's request path, in one place: every route, and the ordered steps that answer it.
//
//   CORS ─▶ route (404/405/OPTIONS) ─▶ the route's steps:
//   generation:  per-IP limit ─▶ authenticate ─▶ read JSON ─▶ model access ─▶ budget ─▶ meter ─▶ admission ─▶ proxy
//                                                                              (settles once the rest has ended)
//
// To add a route: one entry in `ROUTES`. To add a step: write it (steps.ts has the generation steps, each a
// `(context, next) => …` over the request's context) and put it in the list where it belongs. The context runs them
// (`RequestContext.run`). The client's permit wait (UPSTREAM_CONCURRENCY) happens inside `proxy`, once the replica is
// chosen: the permit is per replica.
import type { Route, Step } from './context.js';
import {
  adminKey,
  detailedHealth,
  health,
  listModels,
  livez,
  metrics,
  readyz,
  servedHere,
  verifyKey,
} from './endpoints.js';
import { proxy } from './proxy.js';
import { admission, authenticate, budget, meter, modelAccess, perIpLimit, readJson } from './steps.js';

/** A generation: everything between the client and the model server, in order. */
const GENERATION: readonly Step[] = [
  perIpLimit,
  authenticate,
  readJson,
  modelAccess,
  budget,
  meter,
  admission,
  proxy,
];

/** The public listener's routes. */
export const ROUTES: ReadonlyMap<string, Route> = table({
  '/v1/chat/completions': { method: 'POST', steps: GENERATION },
  '/v1/completions': { method: 'POST', steps: GENERATION },
  '/v1/embeddings': { method: 'POST', steps: GENERATION },
  '/v1/models': { method: 'GET', steps: [perIpLimit, authenticate, listModels] },
  '/auth/verify': { method: 'GET', steps: [perIpLimit, authenticate, verifyKey] },
  '/health': { method: 'GET', steps: [servedHere, health] },
  '/metrics': { method: 'GET', steps: [servedHere, adminKey, metrics] },
  '/livez': { method: 'GET', steps: [livez] },
  '/readyz': { method: 'GET', steps: [readyz] },
});

/** The METRICS_PORT listener's routes: the probes, the detailed /health and /metrics, nothing else. */
export const ADMIN_ROUTES: ReadonlyMap<string, Route> = table({
  '/livez': { method: 'GET', steps: [livez] },
  '/readyz': { method: 'GET', steps: [readyz] },
  '/health': { method: 'GET', steps: [detailedHealth] },
  '/metrics': { method: 'GET', steps: [metrics] },
});

function table(routes: Record<string, Omit<Route, 'path'>>): Map<string, Route> {
  return new Map(Object.entries(routes).map(([path, route]) => [path, { ...route, path }]));
}

/** The `Allow` header of a route: its method, HEAD beside GET, and OPTIONS. */
export function allowed(route: Route): string {
  return route.method === 'GET' ? 'GET, HEAD, OPTIONS' : `${route.method}, OPTIONS`;
}
