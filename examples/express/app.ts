// An existing Express app with vllm-kit added in a few lines: a per-IP rate limit, a bounded queue in front of the
// model, and the pooled client's passthrough (streams included).
import { pipeline } from 'node:stream/promises';
import express from 'express';
import { createConcurrencyLimiter, createIpRateLimiter, createVllmClient, isQueueFullError } from 'vllm-kit';

export function createApp(vllmBaseUrl: string) {
  const vllm = createVllmClient({ baseUrl: vllmBaseUrl });
  const limiter = createConcurrencyLimiter({ concurrency: 64, maxQueue: 128 });
  const rateLimit = createIpRateLimiter({ points: 20, windowSec: 60 });

  const app = express();
  app.use('/v1', rateLimit.express());
  app.post(
    '/v1/chat/completions',
    express.raw({ type: 'application/json', limit: '1mb' }),
    async (req, res) => {
      const controller = new AbortController();
      res.on('close', () => {
        if (!res.writableFinished) controller.abort(); // the client left: stop the generation upstream
      });
      try {
        await limiter.run(async () => {
          const upstream = await vllm.request({
            method: 'POST',
            path: '/v1/chat/completions',
            headers: { 'content-type': 'application/json' },
            body: req.body as Buffer,
            signal: controller.signal,
          });
          res.status(upstream.status).type(String(upstream.headers['content-type'] ?? 'application/json'));
          await pipeline(upstream.body, res);
        });
      } catch (error) {
        if (res.headersSent) return;
        if (isQueueFullError(error)) res.set('retry-after', String(error.retryAfterSec));
        res
          .status(isQueueFullError(error) ? 503 : 502)
          .json({ error: { message: (error as Error).message, type: 'server_error' } });
      }
    },
  );
  const close = async () => {
    await Promise.all([vllm.close(), limiter.close(), rateLimit.close()]);
  };
  return { app, close };
}
