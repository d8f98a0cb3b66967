// The reference gateway, built without listening. Every request gets a context (context.ts), CORS headers and its
// route; the route's steps answer it, in the order pipeline.ts lists them — for a generation: per-IP limit →
// authenticate → read JSON → model access → budget → meter → admission (fair queue) → proxy (permit, replica, pipe).
// Its response's close logs and counts it. `main.ts` adds workers, signals and the listening socket.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { ConcurrencyLimiter, IpRateLimiter, KeyBudgets, TokenCache, VllmClient } from 'vllm-kit';
import { RequestContext, type Route } from './context.js';
import type { Cors } from './cors.js';
import { respondToError } from './errors.js';
import type { HealthProbe } from './health.js';
import { ECHOABLE_PATH, HttpError, pathOf, sendError, VALID_REQUEST_ID } from './http.js';
import type { ApiKey } from './key-store.js';
import type { GatewayMetrics } from './metrics.js';
import { ADMIN_ROUTES, allowed, ROUTES } from './pipeline.js';
import { DecodeRate } from './steps.js';
import type { GatewayTelemetry } from './telemetry.js';
import type { UsageRecorder } from './usage-recorder.js';

export interface GatewayDeps {
  client: VllmClient;
  /** Verified API keys, cached (the token cache). */
  keyCache: TokenCache<ApiKey>;
  /** Requests per window per client IP. */
  ipRateLimiter: IpRateLimiter;
  /** Generation requests in flight on this worker, and the fair queue in front of them. */
  concurrencyLimiter: ConcurrencyLimiter;
  logger: Logger;
  metrics: GatewayMetrics | undefined;
  /** Renders /metrics (aggregated over workers when clustered). */
  renderMetrics: (() => Promise<{ contentType: string; body: string }>) | undefined;
  maxBodyBytes: number;
  /** Request bodies nested deeper (objects and arrays) are refused with a 400. */
  maxJsonDepth: number;
  /** Cross-origin access for browser front ends; undefined: no CORS headers (same-origin only). */
  cors?: Cors | undefined;
  /** Per-key request and token limits (keys with `rpm`/`tpm`). */
  budgets: KeyBudgets;
  /** Lifetime usage per key, written to the key store in batches; undefined: not recorded. */
  usage?: UsageRecorder | undefined;
  /** Ask vLLM for usage on every stream chunk (`continuous_usage_stats`), so a cut stream is charged exactly. */
  continuousUsage: boolean;
  /** OpenTelemetry: a server span per request, parenting the client's span; undefined: off. */
  telemetry?: GatewayTelemetry | undefined;
  /** The replicas' health, probed in the background (answers /health and /readyz). */
  health: HealthProbe;
  /** SHA-256 of ADMIN_KEY: the detailed /health and /metrics on this listener need it; undefined: no key. */
  adminKeyHash?: Buffer | undefined;
  /** /health and /metrics are served on their own listener (METRICS_PORT): not on this one. */
  adminElsewhere?: boolean;
  /** MODEL_ALIASES (the client rewrites them): a key allowed the served model may use its aliases, and the reverse. */
  modelAliases?: Readonly<Record<string, string>>;
}

/** What every request's steps reach through `context.deps`: the pieces, the settings, and the gateway's own state. */
export interface GatewayServices extends GatewayDeps {
  /** The decode rate measured on this worker's responses (to charge requests cut before their answer). */
  readonly decodeRate: DecodeRate;
  /** Requests whose response has not closed yet (reported when draining). */
  open: number;
}

const kContext = Symbol('context');
type GatewayResponse = ServerResponse & { [kContext]?: RequestContext };

/** The gateway's two request handlers (the public listener, the METRICS_PORT one) over `deps`. */
export function createGateway(deps: GatewayDeps) {
  const services: GatewayServices = { ...deps, decodeRate: new DecodeRate(), open: 0 };
  return {
    handle: (req: IncomingMessage, res: ServerResponse) => handle(services, req, res),
    handleAdmin: (req: IncomingMessage, res: ServerResponse) => handleAdmin(services, req, res),
    openRequests: () => services.open,
  };
}

/** The public listener: CORS, the route, then its steps (pipeline.ts); a failure is answered by errors.ts. */
async function handle(services: GatewayServices, req: IncomingMessage, res: GatewayResponse): Promise<void> {
  const context = begin(services, req, res);
  try {
    services.cors?.apply(req, res);
    const route = context.route;
    if (route === undefined) {
      // Never repeat request-controlled text beyond a plain path (no markup, no absolute URI, bounded length).
      const shown = ECHOABLE_PATH.test(context.path) ? ` ${context.path}` : '';
      throw new HttpError(404, `Unknown route${shown}`, 'invalid_request_error', 'not_found');
    }
    const method = req.method === 'HEAD' && route.method === 'GET' ? 'GET' : req.method;
    if (method === 'OPTIONS') return options(context, route);
    if (method !== route.method) {
      throw new HttpError(
        405,
        `Use ${route.method} for ${context.path}`,
        'invalid_request_error',
        'method_not_allowed',
        { allow: allowed(route) },
      );
    }
    await context.run(route.steps);
  } catch (error) {
    respondToError(context, error);
  }
}

/** The request's context: its id (the client's X-Request-Id when well-formed), route, session, span. */
function begin(services: GatewayServices, req: IncomingMessage, res: GatewayResponse): RequestContext {
  const started = performance.now();
  const incomingId = req.headers['x-request-id'];
  const requestId =
    typeof incomingId === 'string' && VALID_REQUEST_ID.test(incomingId) ? incomingId : randomUUID();
  res.setHeader('x-request-id', requestId);
  const path = pathOf(req.url ?? '/');
  const route = ROUTES.get(path);
  const context = new RequestContext(services, req, res, requestId, path, route ? path : 'unknown', started);
  context.route = route;
  const sessionId = req.headers['x-session-id'];
  if (typeof sessionId === 'string' && sessionId !== '' && sessionId.length <= 256)
    context.sessionId = sessionId;
  if (services.telemetry !== undefined)
    context.span = services.telemetry.startRequest(req, path, route ? path : undefined, requestId);
  res[kContext] = context;
  services.open++;
  res.on('close', onResponseClose);
  return context;
}

/** `OPTIONS`: a CORS preflight (answered by the CORS policy) or a plain question about the allowed methods. */
function options(context: RequestContext, route: Route): void {
  const { req, res } = context;
  const allow = allowed(route);
  if (req.headers['access-control-request-method'] !== undefined) {
    const cors = context.deps.cors;
    if (cors === undefined || !cors.preflight(req, res, allow)) {
      throw new HttpError(
        403,
        'Cross-origin requests from this origin are not allowed (CORS_ORIGINS)',
        'invalid_request_error',
        'cors_origin_not_allowed',
      );
    }
    return;
  }
  res.writeHead(204, { allow });
  res.end();
}

/**
 * Logs and counts a finished request, and tells its context when the client left early. Runs in the response's
 * 'close' event: nothing may throw out of it (that would kill the worker), so a bug here is logged instead.
 */
function onResponseClose(this: GatewayResponse): void {
  const context = this[kContext]!;
  context.deps.open--;
  try {
    finish(context);
  } catch (error) {
    context.deps.logger.error(
      { requestId: context.requestId, err: { message: (error as Error)?.message } },
      'error while closing a request',
    );
  }
}

function finish(context: RequestContext): void {
  const { res, deps } = context;
  if (!res.writableFinished) context.clientClosed();
  // A response cut by its upstream counts as the 502 it is, whatever status had already gone out.
  // A client that left before the end is a 499, whatever status had gone out (an abandoned stream is not a 200).
  const status =
    context.upstreamFailure !== undefined ? 502 : context.aborted || !res.headersSent ? 499 : res.statusCode;
  const ms = performance.now() - context.started;
  deps.metrics?.observeRequest(context.routeLabel, status, ms / 1000);
  // By model: only requests that reached a replica, so the label holds names some replica serves (or aliases).
  const model = context.sentUpstream ? context.model : undefined;
  if (model !== undefined) deps.metrics?.observeModel(model, status);
  // The span tells what went out, and why the request failed: a cut upstream, or a client that left.
  context.span?.end(
    res.headersSent ? res.statusCode : undefined,
    context.upstreamFailure ?? (context.aborted ? 'client_closed' : undefined),
  );
  // One line per request; no per-request child logger (it would serialise its bindings every time).
  deps.logger.info(
    {
      requestId: context.requestId,
      method: context.req.method,
      path: context.path,
      status,
      ms: Math.round(ms),
    },
    'request',
  );
}

/** The METRICS_PORT listener: the probes, the detailed /health and /metrics, nothing else. */
async function handleAdmin(
  services: GatewayServices,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  const path = pathOf(req.url ?? '/');
  try {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      throw new HttpError(405, `Use GET for ${path}`, 'invalid_request_error', 'method_not_allowed', {
        allow: 'GET, HEAD',
      });
    }
    const route = ADMIN_ROUTES.get(path);
    if (route === undefined) throw new HttpError(404, 'Unknown route', 'invalid_request_error', 'not_found');
    await new RequestContext(services, req, res, '', path, path, performance.now()).run(route.steps);
  } catch (error) {
    if (error instanceof HttpError) return sendError(res, error);
    services.logger.error(
      { err: { message: (error as Error)?.message } },
      'unexpected error on the metrics listener',
    );
    sendError(res, new HttpError(500, 'Internal error', 'internal_error'));
  }
}
