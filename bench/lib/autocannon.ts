// autocannon (the standard external HTTP load generator) driven programmatically: a closed loop of `connections`
// keep-alive connections for `durationSec`, so ratios between targets do not depend on our own generator's cost.
import autocannon from 'autocannon';

export interface AutocannonResult {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  errors: number;
  non2xx: number;
}

export async function runAutocannon(options: {
  url: string;
  path: string;
  body: string;
  headers: Record<string, string>;
  connections: number;
  durationSec: number;
}): Promise<AutocannonResult> {
  const result = await autocannon({
    url: `${options.url}${options.path}`,
    method: 'POST',
    body: options.body,
    headers: { 'content-type': 'application/json', ...options.headers },
    connections: options.connections,
    duration: options.durationSec,
  });
  return {
    rps: result.requests.average,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    requests: result.requests.total,
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
  };
}
