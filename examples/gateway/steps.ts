// The steps of a generation request before it is proxied: per-IP limit, key, body, model access, budget, metering,
// admission. pipeline.ts puts them in order; each is a small function over the request's context. An async step ends
// with `return await next()`: V8 settles an awaited promise in one turn, a returned one in three.
import { isUtf8 } from 'node:buffer';
import {
  estimatePromptTokens,
  exceedsJsonDepth,
  isTokenVerificationError,
  requestUsage,
  reservationFor,
  type TokenUsage,
  type UsageMeter,
} from 'vllm-kit';
import type { RequestContext, Step } from './context.js';
import { answerTooLarge, HttpError, readBody, sendError } from './http.js';
import { type ApiKey, isWellFormedKey } from './key-store.js';

const invalidKey = () =>
  new HttpError(401, 'Invalid or revoked API key', 'invalid_request_error', 'invalid_api_key');

/** The bearer token of a request, or undefined. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
  return match === null ? undefined : match[1];
}

/**
 * Tokens per second one choice is generated at, measured on this worker's completed responses (usage over time since
 * sent: queueing and prefill included, so it errs low), for charging requests cut before their answer came. Starts at
 * 100/s (a single sequence on a fast GPU) until it has measured; the mean of the first ten figures, then moves a
 * tenth of the way to each new one.
 */
export class DecodeRate {
  private tokensPerSec = 100;
  private samples = 0;

  observe(tokensPerChoice: number, elapsedMs: number): void {
    if (!(tokensPerChoice > 0) || !(elapsedMs > 0)) return;
    this.samples = Math.min(this.samples + 1, 10);
    this.tokensPerSec += (tokensPerChoice / (elapsedMs / 1000) - this.tokensPerSec) / this.samples;
  }

  estimate(elapsedMs: number, choices: number, maxTokens: number | undefined): number {
    const perChoice = Math.floor((elapsedMs / 1000) * this.tokensPerSec);
    return Math.max(0, Math.min(perChoice, maxTokens ?? perChoice)) * choices;
  }
}

/** Per-IP rate limit first: cheap, so floods never reach the key store. */
export const perIpLimit: Step = async (context, next) => {
  const decision = await context.deps.ipRateLimiter.check(context.req);
  const headers = context.deps.ipRateLimiter.headers(decision);
  for (const name in headers) context.res.setHeader(name, headers[name]!);
  if (decision.refusal !== undefined) {
    context.deps.metrics?.rateLimited();
    return sendError(context.res, decision.refusal);
  }
  return await next();
};

/** The API key: well-formed, then verified (cached); 401 otherwise, 503 while the key store is down. */
export const authenticate: Step = async (context, next) => {
  const key = bearerToken(context.req.headers.authorization);
  if (key === undefined) {
    throw new HttpError(
      401,
      'Missing API key: send "Authorization: Bearer <key>"',
      'invalid_request_error',
      'missing_api_key',
    );
  }
  // Garbage never costs a cache entry or a database lookup.
  if (!isWellFormedKey(key)) throw invalidKey();
  let principal: ApiKey | null;
  try {
    principal = await context.deps.keyCache.verify(key);
  } catch (error) {
    if (!isTokenVerificationError(error)) throw error;
    throw new HttpError(
      503,
      'The key store is unavailable; try again shortly',
      'service_unavailable',
      'key_store_unavailable',
      { 'retry-after': '5' },
    );
  }
  if (principal === null) throw invalidKey();
  context.principal = principal;
  return await next();
};

/** The JSON body: its media type, its size (413), its depth, then UTF-8 JSON, parsed once for every later step. */
export const readJson: Step = async (context, next) => {
  const req = context.req;
  const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (contentType !== 'application/json') {
    throw new HttpError(
      400,
      "Content-Type must be 'application/json'",
      'invalid_request_error',
      'unsupported_media_type',
    );
  }
  let body: Buffer;
  try {
    body = await readBody(req, context.deps.maxBodyBytes);
  } catch (error) {
    if (!(error instanceof HttpError) || error.status !== 413) throw error;
    return answerTooLarge(req, context.res, error);
  }
  // Nesting is bounded before anything parses or walks the body (a 200 KB body can nest 100k levels).
  if (exceedsJsonDepth(body, context.deps.maxJsonDepth)) {
    throw new HttpError(
      400,
      `The request body nests objects or arrays more than ${context.deps.maxJsonDepth} levels deep`,
      'invalid_request_error',
      'json_too_deep',
    );
  }
  context.body = body;
  context.routingBody = parseJson(body);
  return await next();
};

/**
 * A key limited to some models (`keys --models`): any other gets the same 404 as a model that does not exist (no
 * enumeration), and a request without `model` is refused (the server's default might be one it may not use).
 */
export const modelAccess: Step = (context, next) => {
  const allowed = context.principal!.models;
  if (allowed === null) return next();
  const model = context.model;
  if (model !== undefined && mayUseModel(allowed, model, context.deps.modelAliases)) return next();
  if (model === undefined) {
    throw new HttpError(
      400,
      `The request must name a \`model\` (this key may use: ${allowed.join(', ')})`,
      'invalid_request_error',
      'model_required',
      {},
      'model',
    );
  }
  throw modelNotFound(model);
};

/**
 * A key with limits must have budget left for the request's worst case (429 otherwise): its prompt (estimated) and
 * `max_tokens` × choices are reserved at admission and settled to the actual usage, so concurrent requests cannot
 * overshoot the key's tpm together. A request with no `max_tokens` reserves what the window has left.
 */
export const budget: Step = (context, next) => {
  const principal = context.principal!;
  const cost = reservationFor(context.routingBody, context.path !== '/v1/embeddings');
  context.cost = cost;
  if (principal.rpm === null && principal.tpm === null) {
    context.settlement = context.deps.budgets.settlement({
      key: principal.id,
      onUsage: accountUsage(context),
    });
    return next();
  }
  return admitToBudget(context, next, principal, cost.worstCase);
};

async function admitToBudget(
  context: RequestContext,
  next: () => Promise<void>,
  principal: ApiKey,
  worstCase: number | undefined,
): Promise<void> {
  const { budgets, metrics } = context.deps;
  const decision = await budgets.admit(
    principal.id,
    { requests: principal.rpm, tokens: principal.tpm },
    { reserveTokens: worstCase ?? 'rest' },
  );
  const headers = budgets.headers(decision);
  for (const name in headers) context.res.setHeader(name, headers[name]!);
  if (decision.refusal !== undefined) {
    metrics?.budgetRefused(decision.refusedBy ?? 'requests');
    return sendError(context.res, decision.refusal);
  }
  context.settlement = budgets.settlement({ key: principal.id, decision, onUsage: accountUsage(context) });
  return await next();
}

/**
 * Asks the upstream for usage (from vLLM, on every stream chunk, so a stream cut short is still charged exactly; the
 * meter removes what the client did not ask for), then settles the request's usage once the rest has ended, however
 * it ended: charged before its last byte, when the client left, when the upstream failed — or refunded when it never
 * went upstream (shed by the queue, say).
 */
export const meter: Step = async (context, next) => {
  const parsed = context.routingBody;
  if (typeof parsed === 'object' && parsed !== null) {
    const asked = requestUsage(context.body!, parsed, { continuous: context.deps.continuousUsage });
    context.strip = asked.strip;
    context.body = asked.body;
  }
  try {
    await next();
  } finally {
    void settleUsage(context);
  }
};

/** The concurrency limit: the key is the flow the fair policy serves in turn, in its priority band. */
export const admission: Step = (context, next) => {
  const principal = context.principal!;
  // The context is the signal: the client leaving while the request waits takes it out of the queue.
  return context.deps.concurrencyLimiter.run(
    () => {
      context.deps.metrics?.observeQueueWait((performance.now() - context.started) / 1000);
      return next();
    },
    { signal: context, key: principal.id, priority: principal.priority },
  );
};

/** Settles the request's usage (once): what its meter read, or, cut before any answer, an estimate. */
export function settleUsage(context: RequestContext): Promise<void> | undefined {
  return context.settlement?.settle(() => {
    const cost = context.cost;
    if (context.upstreamStatus !== undefined || cost === undefined) return undefined;
    // Cut before the upstream answered (a non-streamed request, whose answer comes whole at the end): it cost its
    // prompt and what was generated meanwhile, estimated from the elapsed time at the decode rate measured on
    // this gateway's own responses, never more than max_tokens × choices.
    context.deps.metrics?.usageMissing('estimated');
    return {
      promptTokens: cost.promptTokens,
      completionTokens: context.deps.decodeRate.estimate(
        performance.now() - context.sentAt,
        cost.choices,
        cost.maxTokens,
      ),
      source: 'counted',
    };
  });
}

/** Records a settled request's usage: the key's lifetime usage, the token metrics, the measured decode rate. */
function accountUsage(context: RequestContext) {
  return (usage: TokenUsage, meter: UsageMeter | undefined): void => {
    const { promptTokens, completionTokens } = usage;
    if (meter !== undefined) {
      if (usage.source === 'counted')
        context.deps.metrics?.usageMissing(meter.sawMalformedUsage ? 'malformed' : 'absent');
      else if (context.upstreamStatus === 200 && !context.aborted) {
        const choices = context.cost?.choices ?? 1;
        context.deps.decodeRate.observe(completionTokens / choices, performance.now() - context.sentAt);
      }
    }
    const principal = context.principal!;
    context.deps.usage?.record(principal.id, promptTokens, completionTokens);
    context.deps.metrics?.llmTokens(principal.name, promptTokens, completionTokens, context.model);
  };
}

/** The prompt's tokens estimated from the request, when the upstream reports no usage (rare): parsed again then. */
export function promptEstimate(context: RequestContext): () => number {
  const body = context.body;
  return () => (body === null ? 0 : estimatePromptTokens(JSON.parse(body.toString('utf8'))));
}

/** JSON is UTF-8 (RFC 8259 §8.1): invalid bytes would be decoded to U+FFFD and sent upstream as something else. */
function parseJson(body: Buffer): unknown {
  if (isUtf8(body)) {
    try {
      return JSON.parse(body.toString('utf8'));
    } catch {
      // answered below
    }
  }
  throw new HttpError(
    400,
    'The request body is not valid JSON in UTF-8',
    'invalid_request_error',
    'invalid_json',
  );
}

/** OpenAI's answer, word for word, for a model that does not exist (or that the key may not use). */
export function modelNotFound(model: string): HttpError {
  return new HttpError(
    404,
    `The model \`${model}\` does not exist or you do not have access to it.`,
    'invalid_request_error',
    'model_not_found',
    {},
    'model',
  );
}

/** A key's model list names the model, or what it is an alias of, or an alias of it. */
export function mayUseModel(
  allowed: readonly string[],
  model: string,
  aliases: Readonly<Record<string, string>> | undefined,
): boolean {
  if (allowed.includes(model)) return true;
  if (aliases === undefined) return false;
  const served = Object.hasOwn(aliases, model) ? aliases[model] : undefined;
  if (served !== undefined && allowed.includes(served)) return true;
  return allowed.some((name) => Object.hasOwn(aliases, name) && aliases[name] === model);
}
