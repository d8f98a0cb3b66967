// The last step: the request goes upstream through the pooled client, and the answer is piped back — metered when it
// is a key's 2xx answer, its server errors answered in the gateway's own shape, never relayed.
import type { Readable } from 'node:stream';
import type { RequestContext, Step } from './context.js';
import { discard, HttpError, sendError } from './http.js';
import { promptEstimate, settleUsage } from './steps.js';

const NO_HEADERS = {};
// One object for every request: the client merges a headers object it has seen before from its cache.
const JSON_HEADERS = { 'content-type': 'application/json' };

interface UpstreamAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

/** Sends the request upstream and pipes the answer back (metered for a key's 2xx answer). */
export const proxy: Step = async (context) => {
  const { client, metrics } = context.deps;
  const body = context.body;
  const upstream = await client.request({
    method: context.route!.method,
    path: context.path,
    headers: body === null ? NO_HEADERS : JSON_HEADERS,
    body,
    // Leaving aborts the upstream request at once (vLLM then frees the GPU slot).
    signal: context,
    requestId: context.requestId,
    routingBody: context.routingBody,
    // X-Session-Id, when the client sends one, keeps a conversation on one replica whatever its prompt.
    routingKey: context.sessionId,
    traceContext: context.span?.context,
    traceSpan: context.span?.span,
    // From here on the request may cost the model server something (before it: a permit wait, a model check).
    onDispatch: context.dispatched,
  });
  context.upstreamStatus = upstream.status;
  if (upstream.status === 401) {
    // Client keys never reach the upstream: a 401 there means the gateway's own VLLM_API_KEY is wrong.
    discard(upstream.body);
    throw upstreamCredentialsRejected(context);
  }
  // A server error's body is the upstream's own (an HTML traceback, a config dump): logged, never relayed.
  if (upstream.status >= 500) return relayServerError(context, upstream);
  const streaming = writeHead(context, upstream);
  if (streaming) {
    // A stream's first byte is its first token, some time after the headers.
    if (metrics) {
      upstream.body.once('data', () =>
        metrics.observeTtft(context.routeLabel, (performance.now() - context.started) / 1000),
      );
    }
  } else {
    // A whole answer's body follows its headers at once: no per-request listener to time it.
    metrics?.observeTtft(context.routeLabel, (performance.now() - context.started) / 1000);
  }
  const settlement = context.settlement;
  if (settlement === undefined || upstream.status >= 300) return context.pipe(upstream.body);
  settlement.meter({
    stream: streaming,
    strip: streaming ? context.strip : 'none',
    choices: context.cost?.choices ?? 1,
    ...(context.cost === undefined ? {} : { n: context.cost.n }),
    promptTokensEstimate: promptEstimate(context),
  });
  await context.pipe(upstream.body, () => settleUsage(context));
};

/** The answer's status and headers (X-Request-Id and the rate-limit headers are already set); true for a stream. */
function writeHead(context: RequestContext, upstream: UpstreamAnswer): boolean {
  const headers: Record<string, string> = {};
  const contentType = upstream.headers['content-type'];
  if (typeof contentType === 'string') headers['content-type'] = contentType;
  // An upstream 429/503 is answered at once (the client never sleeps on it holding our slot): pass its advice on.
  if (upstream.status >= 400) copyRetryAdvice(upstream, headers);
  const streaming = typeof contentType === 'string' && contentType.startsWith('text/event-stream');
  if (streaming) {
    headers['cache-control'] = 'no-cache';
    headers['x-accel-buffering'] = 'no';
  }
  context.res.writeHead(upstream.status, headers);
  if (streaming) context.res.flushHeaders();
  return streaming;
}

function copyRetryAdvice(upstream: UpstreamAnswer, headers: Record<string, string>): void {
  for (const name of ['retry-after', 'retry-after-ms']) {
    const value = upstream.headers[name];
    if (typeof value === 'string') headers[name] = value;
  }
}

/**
 * Answers an upstream 5xx in the gateway's own error shape: 503 stays 503 (overloaded: its Retry-After passed on),
 * anything else is a 502. The upstream's body (its first 2 KB) goes to the log for the operator.
 */
async function relayServerError(context: RequestContext, upstream: UpstreamAnswer): Promise<void> {
  let original = '';
  try {
    for await (const chunk of upstream.body) {
      original += (chunk as Buffer).toString('utf8');
      if (original.length >= 2048) break;
    }
  } catch {
    // A body cut short: what was read is logged.
  }
  discard(upstream.body);
  context.deps.metrics?.upstreamFailure('server_error');
  context.deps.logger.warn(
    { requestId: context.requestId, status: upstream.status, body: original.slice(0, 2048) },
    'the model server answered a server error',
  );
  const overloaded = upstream.status === 503;
  const headers: Record<string, string> = {};
  copyRetryAdvice(upstream, headers);
  sendError(
    context.res,
    new HttpError(
      overloaded ? 503 : 502,
      overloaded
        ? 'The model server is overloaded; try again shortly'
        : `The model server failed with HTTP ${upstream.status}`,
      overloaded ? 'service_unavailable' : 'upstream_error',
      overloaded ? 'upstream_overloaded' : 'upstream_server_error',
      headers,
    ),
  );
}

function upstreamCredentialsRejected(context: RequestContext): HttpError {
  context.deps.logger.error(
    { requestId: context.requestId },
    "the model server rejected the gateway's credentials (401): check VLLM_API_KEY against vLLM's --api-key",
  );
  context.deps.metrics?.upstreamFailure('credentials');
  return new HttpError(
    502,
    "The model server rejected the gateway's own credentials (VLLM_API_KEY); the gateway's operator must fix them",
    'upstream_error',
    'upstream_credentials_rejected',
  );
}
