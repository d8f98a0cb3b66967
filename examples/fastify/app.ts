// An existing Fastify app with vllm-kit added in a few lines: the rate-limit hook, a bounded queue in front of the
// model, and the pooled client's passthrough (streams included).
import Fastify from 'fastify';
import { createConcurrencyLimiter, createIpRateLimiter, createVllmClient, isQueueFullError } from 'vllm-kit';

export function createApp(vllmBaseUrl: string) {
  const vllm = createVllmClient({ baseUrl: vllmBaseUrl });
  const limiter = createConcurrencyLimiter({ concurrency: 64, maxQueue: 128 });
  const rateLimit = createIpRateLimiter({ points: 20, windowSec: 60 });

  const app = Fastify();
  app.addHook('onRequest', rateLimit.fastify());
  // Keep the body as bytes: the gateway forwards it untouched.
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.post('/v1/chat/completions', async (request, reply) => {
    const controller = new AbortController();
    // The response's 'close' (not the request's, which fires once its body is read) tells that the client left.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) controller.abort(); // the client left: stop the generation upstream
    });
    try {
      const upstream = await limiter.run(() =>
        vllm.request({
          method: 'POST',
          path: '/v1/chat/completions',
          headers: { 'content-type': 'application/json' },
          body: request.body as Buffer,
          signal: controller.signal,
        }),
      );
      reply.code(upstream.status).type(String(upstream.headers['content-type'] ?? 'application/json'));
      return reply.send(upstream.body);
    } catch (error) {
      if (isQueueFullError(error)) reply.header('retry-after', String(error.retryAfterSec));
      return reply
        .code(isQueueFullError(error) ? 503 : 502)
        .send({ error: { message: (error as Error).message, type: 'server_error' } });
    }
  });
  app.addHook('onClose', async () => {
    await Promise.all([vllm.close(), limiter.close(), rateLimit.close()]);
  });
  return app;
}
