// The error family: every class the package exports extends VllmKitError, has its own name (as an own property, so a
// minifier cannot change it), a code from the closed list and a guard; and the library's thrown paths throw them.
import { describe, expect, expectTypeOf, it } from 'vitest';
import {
  ERROR_CODES,
  InvalidOptionError,
  isInvalidOptionError,
  isVllmKitError,
  VllmKitError,
  type VllmKitErrorCode,
} from '../src/errors/index.js';
import * as kit from '../src/index.js';
import { messages, trackResources } from './helpers/fixtures.js';

const use = trackResources();

/** One instance of each exported error class, built as the library builds it. */
const INSTANCES: Record<string, () => Error> = {
  VllmKitError: () => new kit.VllmKitError('x', 'ERR_VK_CLOSED'),
  OverloadError: () => new kit.OverloadError('x', 'ERR_VK_QUEUE_FULL', 'queue_full', 1),
  InvalidOptionError: () => new kit.InvalidOptionError('x', 'bad x'),
  ClosedError: () => new kit.ClosedError('client'),
  NotClusterPrimaryError: () => new kit.NotClusterPrimaryError('serveClusterRateLimits'),
  StoreUnavailableError: () => new kit.StoreUnavailableError('down'),
  UpstreamHttpError: () => new kit.UpstreamHttpError('x', 'ERR_VK_UPSTREAM_HTTP', { status: 418 }),
  UpstreamBadRequestError: () =>
    new kit.UpstreamBadRequestError('x', 'ERR_VK_UPSTREAM_BAD_REQUEST', { status: 400 }),
  UpstreamAuthenticationError: () =>
    new kit.UpstreamAuthenticationError('x', 'ERR_VK_UPSTREAM_AUTHENTICATION', { status: 401 }),
  UpstreamNotFoundError: () =>
    new kit.UpstreamNotFoundError('x', 'ERR_VK_UPSTREAM_NOT_FOUND', { status: 404 }),
  UpstreamRateLimitError: () =>
    new kit.UpstreamRateLimitError('x', 'ERR_VK_UPSTREAM_RATE_LIMITED', { status: 429 }),
  UpstreamOverloadedError: () =>
    new kit.UpstreamOverloadedError('x', 'ERR_VK_UPSTREAM_OVERLOADED', { status: 503 }),
  UpstreamServerError: () => new kit.UpstreamServerError('x', 'ERR_VK_UPSTREAM_SERVER', { status: 500 }),
  UpstreamTimeoutError: () => new kit.UpstreamTimeoutError('idle', 5),
  UpstreamConnectionError: () => new kit.UpstreamConnectionError('x'),
  RequestAbortedError: () => new kit.RequestAbortedError(),
  TokenVerificationError: () => new kit.TokenVerificationError(new Error('db down')),
  QueueFullError: () => new kit.QueueFullError(1),
  QueueTimeoutError: () => new kit.QueueTimeoutError(10, 1),
  PermitTimeoutError: () => new kit.PermitTimeoutError(10, 'http://replica'),
  ModelNotFoundError: () => new kit.ModelNotFoundError('x', ['y']),
  AdapterLoadError: () => new kit.AdapterLoadError('x', ['http://replica']),
};

const exported = Object.entries(kit).filter(
  ([, value]) => typeof value === 'function' && (value as { prototype?: unknown }).prototype instanceof Error,
);

describe('the error family', () => {
  it('every exported error class extends VllmKitError, names itself, and has a code from the closed list', () => {
    expect(exported.map(([name]) => name).sort()).toEqual(Object.keys(INSTANCES).sort());
    for (const [name, make] of Object.entries(INSTANCES)) {
      const error = make();
      expect(error, name).toBeInstanceOf(VllmKitError);
      expect(isVllmKitError(error), name).toBe(true);
      expect(ERROR_CODES, name).toContain((error as VllmKitError).code);
      // The bases are named after the code they are built with.
      if (name !== 'VllmKitError' && name !== 'OverloadError') {
        expect(Object.hasOwn(error, 'name'), name).toBe(true);
        expect(error.name, name).toBe(name);
      }
      // Its own guard, when it has one, says yes; the other guards say no (unless it is their subclass).
      const guard = (kit as unknown as Record<string, (v: unknown) => boolean>)[`is${name}`];
      if (guard !== undefined) expect(guard(error), name).toBe(true);
    }
    expect(kit.isUpstreamHttpError(new kit.UpstreamConnectionError('x'))).toBe(false);
    expect(kit.isUpstreamHttpError(INSTANCES.UpstreamRateLimitError!())).toBe(true);
    expect(kit.isClosedError(new kit.RequestAbortedError())).toBe(false);
  });

  it('every "busy, retry later" error is an OverloadError carrying its 503 answer', () => {
    const errors = [
      new kit.QueueFullError(3),
      new kit.QueueTimeoutError(2500, 4),
      new kit.PermitTimeoutError(2500, 'r'),
    ];
    expect(errors.map((error) => [error.refusal.code, error.refusal.headers['retry-after']])).toEqual([
      ['queue_full', '3'],
      ['queue_timeout', '4'],
      ['upstream_busy', '3'],
    ]);
    for (const error of errors) {
      expect(error).toBeInstanceOf(kit.OverloadError);
      expect(kit.isOverloadError(error)).toBe(true);
      expect(error.status).toBe(503);
      expect(error.refusal).toMatchObject({
        status: 503,
        type: 'service_unavailable',
        message: error.message,
      });
      expect(JSON.parse(kit.refusalBody(error.refusal))).toEqual({
        error: { message: error.message, type: 'service_unavailable', param: null, code: error.reason },
      });
    }
    expect(kit.isOverloadError(new kit.ClosedError('client'))).toBe(false);
    expect(kit.isOverloadError(new Error('x'))).toBe(false);
  });

  it('the code type is the closed list (no arbitrary string)', () => {
    expectTypeOf<VllmKitErrorCode>().toEqualTypeOf<(typeof ERROR_CODES)[number]>();
    // @ts-expect-error: a code outside the list does not type-check
    const wrong: VllmKitErrorCode = 'ERR_VK_SOMETHING_ELSE';
    void wrong;
    // Every code belongs to one of the classes.
    const codes = new Set(Object.values(INSTANCES).map((make) => (make() as VllmKitError).code));
    for (const kind of ['firstByte', 'connect', 'total'] as const)
      codes.add(new kit.UpstreamTimeoutError(kind, 1).code);
    expect([...codes].sort()).toEqual([...ERROR_CODES].sort());
  });

  it('carries cause, and the guards recognise an error from another copy of the module', () => {
    const cause = new Error('root');
    const error = new kit.StoreUnavailableError('boom', { cause });
    expect(error.cause).toBe(cause);
    const invalid = new InvalidOptionError('x', 'bad x');
    expect(invalid.option).toBe('x');
    expect(isInvalidOptionError(invalid)).toBe(true);
    expect(isInvalidOptionError(error)).toBe(false);
    // An object branded the way every copy brands its errors, but not an instance of this copy's class.
    const foreign = Object.assign(Object.create(Error.prototype), {
      code: 'ERR_VK_INVALID_OPTION',
      message: 'x',
    });
    Object.defineProperty(foreign, Symbol.for('vllm-kit.error'), { value: true });
    expect(foreign instanceof VllmKitError).toBe(false);
    expect(isVllmKitError(foreign)).toBe(true);
    expect(isInvalidOptionError(foreign)).toBe(true);
    expect(isVllmKitError(new Error('plain'))).toBe(false);
    expect(isVllmKitError(null)).toBe(false);
    expect(isVllmKitError({ code: 'ERR_VK_INVALID_OPTION' })).toBe(false);
  });
});

describe('thrown paths', () => {
  it('every closed piece refuses work with a ClosedError', async () => {
    const sim = await use.simulator();
    const client = kit.createVllmClient({ baseUrl: sim.url });
    await client.close();
    const limiter = kit.createConcurrencyLimiter({ concurrency: 1 });
    await limiter.close();
    const permits = kit.createPermitPool({ permits: 1 });
    await permits.close();
    const tokens = kit.createTokenCache({ verify: async () => ({ id: 1 }) });
    await tokens.close();
    const refusals = await Promise.allSettled([
      client.chatCompletion({ messages, max_tokens: 1 }),
      limiter.run(async () => 1),
      permits.acquire('r'),
      tokens.verify('t'),
    ]);
    for (const [i, refusal] of refusals.entries()) {
      expect(refusal.status, ['client', 'limiter', 'permits', 'tokens'][i]).toBe('rejected');
      const reason = (refusal as PromiseRejectedResult).reason;
      expect(kit.isClosedError(reason), String(reason)).toBe(true);
      expect(reason).toBeInstanceOf(kit.ClosedError);
    }
  });

  it('a token lookup aborted by its caller rejects with RequestAbortedError, the reason as its cause', async () => {
    const tokens = kit.createTokenCache({ verify: () => new Promise<null>(() => {}) });
    use.onCleanup(() => tokens.close());
    const controller = new AbortController();
    const verifying = tokens.verify('t', { signal: controller.signal });
    const reason = new Error('client left');
    controller.abort(reason);
    const error = await verifying.catch((e: unknown) => e);
    expect(kit.isRequestAbortedError(error)).toBe(true);
    expect((error as Error).cause).toBe(reason);
  });

  it('upstream errors name the replica that answered', async () => {
    const sims = [await use.simulator({ model: 'a' }), await use.simulator({ model: 'a' })];
    const client = use.client({ baseUrls: sims.map((s) => s.url), maxRetries: 0 });
    const notFound = await client
      .chatCompletion({ model: 'b', messages, max_tokens: 1 }, { replica: sims[1]!.url })
      .catch((e: unknown) => e);
    expect(kit.isUpstreamHttpError(notFound)).toBe(true);
    expect((notFound as kit.UpstreamHttpError).upstream).toBe(sims[1]!.url);
    const refused = use.client({ baseUrl: 'http://127.0.0.1:1', maxRetries: 0 });
    const unreachable = await refused.chatCompletion({ messages, max_tokens: 1 }).catch((e: unknown) => e);
    expect((unreachable as kit.UpstreamConnectionError).upstream).toBe('http://127.0.0.1:1');
  });
});
