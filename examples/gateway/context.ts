// One request in flight, as one typed object every step of the pipeline reads and fills in (pipeline.ts).
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { type BudgetSettlement, LightAbortSignal, type RequestCost, type UsageStrip } from 'vllm-kit';
import type { GatewayServices } from './gateway.js';
import type { ApiKey } from './key-store.js';
import type { RequestSpan } from './telemetry.js';

/** A route of the gateway (routes.ts): its method, and the steps that answer it, in order. */
export interface Route {
  readonly method: 'GET' | 'POST';
  readonly path: string;
  readonly steps: readonly Step[];
}

/**
 * A step of the pipeline, koa/hono style: it does its part and calls `next()` to run the steps after it, or answers
 * (or throws an `HttpError`) without calling it. A step that must run once the rest has ended — however it ended —
 * awaits `next()` in a `try`/`finally`.
 */
export type Step = (context: RequestContext, next: () => Promise<void>) => Promise<void> | void;

const NO_STEPS: readonly Step[] = [];
const DONE = Promise.resolve();

/** The client went away before the response ended: nobody to answer, and not the upstream's fault. */
export class ClientClosedError extends Error {}
/** One instance for every request: it is a marker, never shown to anyone (no stack captured per request). */
export const CLIENT_CLOSED = new ClientClosedError(
  'The client closed the connection before the response ended',
);

/**
 * The request's context. It is also the request's abort signal (a light one: an AbortController per request costs
 * ~10 µs): the client leaving aborts it, which frees the request's queue place, or its upstream request.
 */
export class RequestContext extends LightAbortSignal {
  /** The route; undefined for an unknown path (answered 404). */
  route: Route | undefined = undefined;
  /** The request body (POST), as read: capped in size, then in depth. */
  body: Buffer | null = null;
  /** The body as parsed once: the client routes by it (its model, then its prompt), the budget and the span read it. */
  routingBody: unknown = undefined;
  /** The client's X-Session-Id: an affinity key for routing. */
  sessionId: string | undefined = undefined;
  /** The authenticated key (the steps after `authenticate`). */
  principal: ApiKey | undefined = undefined;
  /** The request's worst case, read from its body (generation routes). */
  cost: RequestCost | undefined = undefined;
  /** Its usage, settled exactly once (charged to its key's budget, or refunded if it never went upstream). */
  settlement: BudgetSettlement | undefined = undefined;
  /** What to strip from the stream (the usage the gateway asked for and the client did not). */
  strip: UsageStrip = 'none';
  /** When it was sent upstream, and the status the upstream answered (undefined: none yet). */
  sentAt = 0;
  upstreamStatus: number | undefined = undefined;
  /** Set when the upstream cut a response that had begun: logged and counted as a 502. */
  upstreamFailure: string | undefined = undefined;
  /** The request's server span, with telemetry on. */
  span: RequestSpan | undefined = undefined;
  private settlePipe: ((error?: Error) => void) | undefined = undefined;
  /** The steps of its route, and the next one to run. */
  private steps: readonly Step[] = NO_STEPS;
  private stepAt = 0;

  constructor(
    /** What the steps use: the gateway's pieces and settings. */
    readonly deps: GatewayServices,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly requestId: string,
    readonly path: string,
    /** The path for metrics: the route's, or `unknown` (request-controlled text never becomes a label). */
    readonly routeLabel: string,
    readonly started: number,
  ) {
    super();
  }

  /**
   * Runs `steps` in order, koa-compose style: each gets `next`, which runs the ones after it. One `next` per request
   * (each step calls it at most once, before the steps after it run), rather than a closure per step.
   */
  run(steps: readonly Step[]): Promise<void> {
    this.steps = steps;
    this.stepAt = 0;
    return this.next();
  }

  /** Runs the next step (and, through it, the rest); resolved when there is none. */
  readonly next = (): Promise<void> => {
    const step = this.steps[this.stepAt++];
    if (step === undefined) return DONE;
    const result = step(this, this.next);
    return result === undefined ? DONE : result;
  };

  /** Marks the request sent upstream (the client calls it when it hands the request to a replica). */
  readonly dispatched = (): void => {
    if (this.sentAt !== 0) return;
    this.sentAt = performance.now();
    this.settlement?.sent();
  };

  /** The request was sent upstream: its settlement says so (every proxied request has one). */
  get sentUpstream(): boolean {
    return this.settlement?.wasSent === true;
  }

  /** The body's `model`, when it names one. */
  get model(): string | undefined {
    const model = (this.routingBody as { model?: unknown } | null | undefined)?.model;
    return typeof model === 'string' ? model : undefined;
  }

  /** The client left before the response ended: abort what waits on its behalf, fail the pipe. */
  clientClosed(): void {
    if (this.aborted) return;
    this.abort(CLIENT_CLOSED);
    this.settlePipe?.(CLIENT_CLOSED);
  }

  /**
   * Pipes the upstream body into the response with backpressure; resolves when the response finishes, rejects when
   * the upstream fails or the client leaves (either side failing destroys the other). What stream.pipeline does,
   * without the AbortController and DOMException it allocates per call (this runs for every request). With a
   * meter, the bytes pass through it, and the last ones wait for `beforeEnd` (the usage charged), so the client's next
   * request already sees the charge.
   */
  pipe(source: Readable, beforeEnd?: () => Promise<void> | undefined): Promise<void> {
    const res = this.res;
    return new Promise((resolve, reject) => {
      let done = false;
      const settle = (error?: Error) => {
        if (done) return;
        done = true;
        this.settlePipe = undefined;
        res.off('finish', settle);
        if (error === undefined) return resolve();
        // Marked before the response is destroyed, so its close handler already counts the 502.
        if (error !== CLIENT_CLOSED) this.upstreamFailure = (error as { code?: string }).code ?? 'unknown';
        source.destroy();
        res.destroy();
        reject(error);
      };
      this.settlePipe = settle;
      // Stays attached: a late error from a destroyed body must not go unhandled.
      source.on('error', settle);
      res.on('finish', settle);
      const meter = this.settlement?.usageMeter;
      if (meter === undefined) {
        source.pipe(res);
        return;
      }
      const resume = () => source.resume();
      source.on('data', (chunk: Buffer) => {
        const out = meter.write(chunk);
        if (out.length > 0 && !res.write(out)) {
          source.pause();
          res.once('drain', resume);
        }
      });
      source.on('end', () => {
        const rest = meter.end();
        const finish = () => {
          if (!done && !res.destroyed) res.end(rest);
        };
        const charging = beforeEnd?.();
        if (charging === undefined) finish();
        else charging.then(finish, finish);
      });
    });
  }
}
