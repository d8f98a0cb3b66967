// What a request that failed is answered: an HttpError or a piece's refusal as it is, the library's errors mapped to
// OpenAI-style answers, nothing when the client has gone, a cut when the response had begun, a bare 500 for a bug.
import {
  isAdapterLoadError,
  isModelNotFoundError,
  isOverloadError,
  isRequestAbortedError,
  isUpstreamConnectionError,
  isUpstreamTimeoutError,
  type Refusal,
} from 'vllm-kit';
import { ClientClosedError, type RequestContext } from './context.js';
import { HttpError, sendError } from './http.js';
import { modelNotFound } from './steps.js';

/** The answer for a failure known before the response began; undefined for one that is not an answer. */
function answerFor(context: RequestContext, error: unknown): Refusal | undefined {
  const { logger, metrics } = context.deps;
  if (error instanceof HttpError) return error;
  // Busy, retry later: the queue, the permits. Each carries its 503 and Retry-After.
  if (isOverloadError(error)) return error.refusal;
  if (isModelNotFoundError(error)) {
    // OpenAI's answer, word for word: no replica was asked.
    if (error.model !== undefined) return modelNotFound(error.model);
    return new HttpError(
      400,
      `The request must name a \`model\`: this gateway serves several (${error.available.join(', ')})`,
      'invalid_request_error',
      'model_required',
      {},
      'model',
    );
  }
  if (isAdapterLoadError(error)) {
    // The operator learns which replicas refused (runtime LoRA updating off, a bad path); the caller does not.
    logger.warn(
      { requestId: context.requestId, adapter: error.adapter, tried: error.tried },
      'LoRA adapter load failed',
    );
    return new HttpError(
      503,
      `The model \`${error.adapter}\` could not be loaded; try again shortly`,
      'service_unavailable',
      'model_unavailable',
      { 'retry-after': '5' },
      'model',
    );
  }
  if (isUpstreamTimeoutError(error)) {
    metrics?.upstreamFailure('timeout');
    return new HttpError(504, 'The model server did not answer in time', 'upstream_timeout', error.code);
  }
  if (isUpstreamConnectionError(error)) {
    metrics?.upstreamFailure('unreachable');
    return new HttpError(502, 'The model server is unreachable', 'upstream_unreachable', error.code);
  }
  return undefined;
}

/** Answers a request whose steps threw. Nothing here throws (it runs for every failed request). */
export function respondToError(context: RequestContext, error: unknown): void {
  const {
    res,
    deps: { logger, metrics },
  } = context;
  if (error instanceof ClientClosedError || isRequestAbortedError(error)) return; // nobody to answer
  if (res.headersSent) {
    // The upstream failed after the response began (a stream cut mid-way): the cut is all the client can see.
    const code = (error as { code?: string })?.code ?? 'unknown';
    context.upstreamFailure ??= code;
    metrics?.upstreamFailure('mid_response');
    logger.warn(
      { requestId: context.requestId, err: { code, message: (error as Error)?.message } },
      'upstream failed mid-response',
    );
    res.destroy();
    return;
  }
  if (res.destroyed) return; // the client left while the request waited: nobody to answer
  const answer = answerFor(context, error);
  if (answer !== undefined) return sendError(res, answer);
  // Anything else is a bug: log it (never the key), answer a generic 500 without details.
  logger.error(
    {
      requestId: context.requestId,
      err: { message: (error as Error)?.message, code: (error as { code?: string })?.code },
    },
    'unexpected error',
  );
  sendError(res, new HttpError(500, 'Internal error', 'internal_error'));
}
