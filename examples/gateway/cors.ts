// Cross-origin access for browser front ends (CORS_ORIGINS): exact origins, or `*`. The gateway authenticates with a
// bearer key, never cookies, so it never sends Access-Control-Allow-Credentials — `*` is never paired with it.
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Request headers a browser may send cross-origin (anything else is refused by the preflight's answer). */
const ALLOWED_HEADERS = 'authorization, content-type, x-request-id, x-session-id';
/** Response headers a browser script may read. */
const EXPOSED_HEADERS = [
  'x-request-id',
  'retry-after',
  'retry-after-ms',
  'ratelimit',
  'ratelimit-policy',
  'x-ratelimit-limit-requests',
  'x-ratelimit-remaining-requests',
  'x-ratelimit-reset-requests',
  'x-ratelimit-limit-tokens',
  'x-ratelimit-remaining-tokens',
  'x-ratelimit-reset-tokens',
].join(', ');
/** How long a browser may cache a preflight's answer, seconds. */
const MAX_AGE_SEC = '600';

export interface Cors {
  /** Adds the CORS headers of an allowed origin to any response (and `Vary: Origin` to every one). */
  apply(req: IncomingMessage, res: ServerResponse): void;
  /** Answers a preflight (204) when the origin is allowed; false when it is not. */
  preflight(req: IncomingMessage, res: ServerResponse, allow: string): boolean;
}

/** `origins`: exact origins (`https://app.example.com`), or `['*']` for any origin. */
export function createCors(origins: readonly string[]): Cors {
  const any = origins.includes('*');
  const allowed = new Set(origins);
  const allowOrigin = (req: IncomingMessage): string | undefined => {
    const origin = req.headers.origin;
    if (origin === undefined) return undefined;
    if (any) return '*';
    return allowed.has(origin) ? origin : undefined;
  };
  return {
    apply(req, res) {
      // The answer depends on Origin: caches must key by it (harmless for `*`, needed for a list).
      if (!any) res.setHeader('vary', 'origin');
      const origin = allowOrigin(req);
      if (origin === undefined) return;
      res.setHeader('access-control-allow-origin', origin);
      res.setHeader('access-control-expose-headers', EXPOSED_HEADERS);
    },
    preflight(req, res, allow) {
      if (allowOrigin(req) === undefined) return false;
      res.writeHead(204, {
        allow,
        'access-control-allow-methods': allow,
        'access-control-allow-headers': ALLOWED_HEADERS,
        'access-control-max-age': MAX_AGE_SEC,
      });
      res.end();
      return true;
    },
  };
}

/** Parses CORS_ORIGINS: comma-separated exact origins (scheme://host[:port], nothing after) or `*`. */
export function parseCorsOrigins(raw: string): string[] | { invalid: string } {
  const origins = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const origin of origins) {
    if (origin === '*') continue;
    try {
      const url = new URL(origin);
      if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.origin !== origin)
        return { invalid: origin };
    } catch {
      return { invalid: origin };
    }
  }
  return origins;
}
