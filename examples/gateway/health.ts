// The replicas' health, probed in the background on its own schedule (HEALTH_INTERVAL_MS) and answered from the last
// result: a flood of /health, /readyz calls costs the upstreams nothing. Each probe asks every replica once, 2 s at
// most: its /health (2xx: healthy) and GET /v1/models (401: the gateway's VLLM_API_KEY is rejected). Ejections (the
// client's outlier detection) are read live, so a replica taken out shows at once.
import type { Logger } from 'pino';
import type { VllmClient } from 'vllm-kit';
import { discard } from './http.js';

export interface ReplicaHealth {
  url: string;
  /** Its /health answered 2xx at the last probe. */
  healthy: boolean;
  /** Whether it accepts the gateway's VLLM_API_KEY. */
  credentials: 'ok' | 'rejected' | 'unknown';
  /** Out of rotation now (connection failures, 5xx, stalls). */
  ejected: boolean;
  connected: number;
  /** The models it serves (LoRA adapters included), from its /v1/models; empty while unknown. */
  models: string[];
}

export interface HealthSnapshot {
  /** At least one replica is healthy, accepts the credentials and is not ejected. */
  usable: boolean;
  replicas: ReplicaHealth[];
  /** When the last probe finished (epoch ms); 0 before the first. */
  checkedAt: number;
}

export interface HealthProbe {
  snapshot(): HealthSnapshot;
  /** Resolves once the first probe has finished. */
  ready: Promise<void>;
  close(): void;
}

const PROBE_TIMEOUT_MS = 2000;

export function startHealthProbe(client: VllmClient, logger: Logger, intervalMs: number): HealthProbe {
  let results = new Map<string, { healthy: boolean; credentials: ReplicaHealth['credentials'] }>();
  let checkedAt = 0;
  let closed = false;
  let warnedCredentials = false;
  const credentials = async (replica: string): Promise<ReplicaHealth['credentials']> => {
    try {
      const reply = await client.request({
        method: 'GET',
        path: '/v1/models',
        replica,
        timeoutMs: PROBE_TIMEOUT_MS,
      });
      discard(reply.body);
      return reply.status === 401 ? 'rejected' : reply.status < 400 ? 'ok' : 'unknown';
    } catch {
      return 'unknown';
    }
  };
  const probe = async () => {
    const next = new Map<string, { healthy: boolean; credentials: ReplicaHealth['credentials'] }>();
    await Promise.all(
      client.baseUrls.map(async (url) => {
        const [healthy, accepted] = await Promise.all([
          client.health({ replica: url, timeoutMs: PROBE_TIMEOUT_MS }).catch(() => false),
          credentials(url),
        ]);
        next.set(url, { healthy, credentials: accepted });
      }),
    );
    if (closed) return;
    results = next;
    checkedAt = Date.now();
    const rejected = [...next.values()].some((r) => r.credentials === 'rejected');
    if (rejected && !warnedCredentials) {
      logger.error("health: a model server rejects the gateway's credentials (VLLM_API_KEY)");
    }
    warnedCredentials = rejected;
  };
  const ready = probe().catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const schedule = () => {
    timer = setTimeout(async () => {
      await probe().catch(() => undefined);
      if (!closed) schedule();
    }, intervalMs);
    timer.unref();
  };
  void ready.then(() => {
    if (!closed) schedule();
  });
  return {
    ready,
    snapshot() {
      const stats = client.stats().upstreams;
      const replicas = client.baseUrls.map((url): ReplicaHealth => {
        const pool = stats.find((u) => u.url === url);
        const result = results.get(url);
        return {
          url,
          healthy: result?.healthy ?? false,
          credentials: result?.credentials ?? 'unknown',
          ejected: pool?.ejected ?? false,
          connected: pool?.connected ?? 0,
          models: pool?.models ?? [],
        };
      });
      const usable = replicas.some((r) => r.healthy && r.credentials !== 'rejected' && !r.ejected);
      return { usable, replicas, checkedAt };
    },
    close() {
      closed = true;
      clearTimeout(timer);
    },
  };
}
