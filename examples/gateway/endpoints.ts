// The routes answered by the gateway itself: the probes, /health, /metrics, /v1/models and /auth/verify. Each is the
// last step of its route (pipeline.ts).
import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestContext, Step } from './context.js';
import { HttpError, send } from './http.js';
import { bearerToken, mayUseModel } from './steps.js';

/** The admin key, compared as SHA-256 digests in constant time. */
function isAdmin(context: RequestContext): boolean {
  const expected = context.deps.adminKeyHash;
  if (expected === undefined) return false;
  const token = bearerToken(context.req.headers.authorization);
  if (token === undefined) return false;
  return timingSafeEqual(createHash('sha256').update(token).digest(), expected);
}

/** Kubernetes liveness: the process answers. */
export const livez: Step = (context) => send(context.res, 200, { status: 'ok' });

/** Kubernetes readiness: status only. */
export const readyz: Step = (context) => {
  const { usable } = context.deps.health.snapshot();
  send(context.res, usable ? 200 : 503, { status: usable ? 'ready' : 'not_ready' });
};

/** /health and /metrics live on METRICS_PORT when there is one: not on the public listener. */
export const servedHere: Step = (context, next) => {
  if (context.deps.adminElsewhere) {
    throw new HttpError(
      404,
      `${context.path} is served on METRICS_PORT`,
      'invalid_request_error',
      'not_found',
    );
  }
  return next();
};

/** With ADMIN_KEY set, only its bearer may go on (the metrics name keys, models, replicas). */
export const adminKey: Step = (context, next) => {
  if (context.deps.adminKeyHash !== undefined && !isAdmin(context)) {
    throw new HttpError(
      401,
      'Metrics need the admin key: send "Authorization: Bearer <ADMIN_KEY>"',
      'invalid_request_error',
      'admin_key_required',
    );
  }
  return next();
};

/**
 * 200 when at least one replica is usable (healthy at the last background probe, accepting the gateway's
 * credentials, not ejected), 503 otherwise — answered from the last probe, never by asking the replicas. The
 * details (replica URLs, credentials, ejections) only for the admin (ADMIN_KEY, or the METRICS_PORT listener).
 */
function answerHealth(context: RequestContext, detailed: boolean): void {
  const res = context.res;
  const snapshot = context.deps.health.snapshot();
  const status = snapshot.usable ? 'ok' : 'degraded';
  const code = snapshot.usable ? 200 : 503;
  if (!detailed) {
    return send(res, code, {
      status,
      upstreams: {
        total: snapshot.replicas.length,
        usable: snapshot.replicas.filter((r) => r.healthy && r.credentials !== 'rejected' && !r.ejected)
          .length,
        ejected: snapshot.replicas.filter((r) => r.ejected).length,
      },
    });
  }
  const limiter = context.deps.concurrencyLimiter;
  send(res, code, {
    status,
    upstreams: snapshot.replicas,
    checkedAt: snapshot.checkedAt === 0 ? null : new Date(snapshot.checkedAt).toISOString(),
    queue: { active: limiter.activeCount, pending: limiter.pendingCount },
  });
}

/** `/health`: the summary, or the details for the admin key. */
export const health: Step = (context) => answerHealth(context, isAdmin(context));
/** `/health` on the METRICS_PORT listener: always the details. */
export const detailedHealth: Step = (context) => answerHealth(context, true);

/** `/metrics`: Prometheus' text (aggregated over the workers when clustered). */
export const metrics: Step = async (context) => {
  if (context.deps.renderMetrics === undefined)
    throw new HttpError(404, 'Metrics are off (METRICS=false)', 'invalid_request_error', 'not_found');
  let rendered: { contentType: string; body: string };
  try {
    rendered = await context.deps.renderMetrics();
  } catch (error) {
    // A worker died mid-scrape (or the primary is busy): say so, rather than answer an empty 200.
    context.deps.logger.warn({ err: { message: (error as Error).message } }, 'metrics unavailable');
    throw new HttpError(
      503,
      'Metrics are unavailable right now (a worker is restarting); try again',
      'service_unavailable',
      'metrics_unavailable',
      { 'retry-after': '1' },
    );
  }
  context.res.writeHead(200, {
    'content-type': rendered.contentType,
    'content-length': Buffer.byteLength(rendered.body),
  });
  context.res.end(rendered.body);
};

/**
 * `GET /v1/models`: every model the replicas serve that the key may use, each once, in OpenAI's list shape
 * (`parent` kept for LoRA adapters), read from the replicas now.
 */
export const listModels: Step = async (context) => {
  const list = await context.deps.client.models({ timeoutMs: 5000 });
  const allowed = context.principal!.models;
  send(context.res, 200, {
    object: 'list',
    data: list.data
      .filter((card) => allowed === null || mayUseModel(allowed, card.id, context.deps.modelAliases))
      .map(({ replicas: _replicas, ...card }) => card),
  });
};

/** `GET /auth/verify`: whose key this is (the browser-side cache asks). */
export const verifyKey: Step = (context) => {
  const principal = context.principal!;
  send(context.res, 200, { id: principal.id, name: principal.name });
};
