// createIpRateLimiter's options: every field documented with unit and default, resolved and validated in one place.
import type { IncomingMessage } from 'node:http';
import type { BlockList } from 'node:net';
import { InvalidOptionError } from '../errors/index.js';
import {
  booleanOption,
  clockOption,
  invalid,
  numberOption,
  objectOption,
  oneOfOption,
  rejectUnknownKeys,
  sharedStoreOptions,
} from '../internal/validate.js';
import { compileTrust, type ProxyHeader, type TrustProxy, type TrustRule } from './client-ip.js';

/** What the limiter reads of a request: its headers and its socket's address (a node:http `IncomingMessage` fits). */
export type RequestLike = Pick<IncomingMessage, 'headers' | 'socket'>;

export interface IpRateLimiterOptions {
  /** Requests allowed per window and key. @default 20 */
  points?: number;
  /** Window length, seconds; a key's window starts at its first request. @default 60 */
  windowSec?: number;
  /**
   * Where counts live: `'memory'` (this process), `'cluster'` (one budget for all workers, held by the primary, which
   * must call `serveClusterRateLimits()`), or an ioredis client (one budget for all hosts). @default 'memory'
   */
  store?: 'memory' | 'cluster' | object;
  /** Names this limiter's budget in Redis/the primary and in the RateLimit-Policy header. @default 'default' */
  name?: string;
  /**
   * When the cluster primary or Redis fails: `'insurance'` counts in this process meanwhile, `'open'` lets requests
   * through, `'closed'` refuses them. Never a 500. @default 'insurance'
   */
  onStoreError?: 'insurance' | 'open' | 'closed';
  /** Longest wait for the cluster primary, ms, before `onStoreError` applies. @default 500 */
  storeTimeoutMs?: number;
  /**
   * How many processes share this store (workers × hosts). While the store fails, `'insurance'` lets each count
   * 1/`processes` of each limit itself (at least 1), so together they stay within it. @default 1
   */
  processes?: number;
  /**
   * Proxies whose X-Forwarded-For / Forwarded are believed: `false` (none: the socket address), a hop count, or a list
   * of addresses/CIDRs. A hop count is honoured only when the nearest peer is a loopback, private or link-local
   * address (a proxy the operator runs): a client reaching the server directly cannot pick its own IP. A proxy at a
   * public address must be listed. `true` (trust anything) is refused. @default false
   */
  trustProxy?: TrustProxy;
  /**
   * The one header trusted proxies write the client's address into: `'x-forwarded-for'` (nginx, HAProxy, cloud load
   * balancers, Cloudflare) or `'forwarded'` (RFC 7239). The other is ignored: proxies pass a client's own copy of
   * the header they do not write through untouched, so reading both would let any client choose its key.
   * @default 'x-forwarded-for'
   */
  proxyHeader?: ProxyHeader;
  /** IPv6 clients are keyed by this prefix (a /64 is one subscriber); 128 keys each address. @default 64 */
  ipv6Subnet?: number;
  /** Key a request by something else (e.g. an API key); return undefined to fall back to the IP. */
  keyGenerator?: (req: RequestLike) => string | undefined;
  /** Requests for which this returns true are not counted. */
  skip?: (req: RequestLike) => boolean;
  /** Addresses or CIDRs never limited (health checkers, internal services). */
  allowlist?: string[];
  /** Send `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-08). @default true */
  standardHeaders?: boolean;
  /** Also send the older `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` trio. @default false */
  legacyHeaders?: boolean;
  /** Clock, epoch ms. @default Date.now */
  now?: () => number;
}

const KEYS = [
  'points',
  'windowSec',
  'store',
  'name',
  'onStoreError',
  'storeTimeoutMs',
  'processes',
  'trustProxy',
  'proxyHeader',
  'ipv6Subnet',
  'keyGenerator',
  'skip',
  'allowlist',
  'standardHeaders',
  'legacyHeaders',
  'now',
] as const satisfies readonly (keyof IpRateLimiterOptions)[];

/** Compiles a list of addresses/CIDRs once, refusing a bad entry with a message that names the option. */
function compileList(option: string, value: unknown, header?: ProxyHeader): TrustRule {
  if (!Array.isArray(value)) throw invalid(option, 'an array of addresses or CIDRs', value);
  try {
    return compileTrust(value as string[], header);
  } catch (error) {
    throw new InvalidOptionError(
      option,
      `Expected \`${option}\` entries to be IP addresses or CIDRs, got ${JSON.stringify((error as Error).message)}`,
    );
  }
}

export interface ResolvedRateLimiterOptions {
  points: number;
  windowSec: number;
  name: string;
  store: 'memory' | 'cluster' | object;
  onStoreError: 'insurance' | 'open' | 'closed';
  storeTimeoutMs: number;
  processes: number;
  trust: TrustRule;
  ipv6Subnet: number;
  keyGenerator: IpRateLimiterOptions['keyGenerator'];
  skip: IpRateLimiterOptions['skip'];
  allowlist: BlockList | undefined;
  standardHeaders: boolean;
  legacyHeaders: boolean;
  now: () => number;
}

export function resolveOptions(input: IpRateLimiterOptions | undefined): ResolvedRateLimiterOptions {
  const options = objectOption('options', input) ?? {};
  rejectUnknownKeys('', options, KEYS);
  const points = numberOption('points', options.points, 20, { min: 1, max: 2_000_000, integer: true });
  const windowSec = numberOption('windowSec', options.windowSec, 60, {
    min: 1,
    max: 31_536_000,
    integer: true,
  });
  const shared = sharedStoreOptions<object>(options, 'eval');
  const now = clockOption(options.now);
  const trustProxy = options.trustProxy;
  if (trustProxy === true) {
    throw new InvalidOptionError(
      'trustProxy',
      'Expected `trustProxy` to be false, a hop count or a list of proxy CIDRs, got `true`: trusting every ' +
        'X-Forwarded-For lets any client choose its own IP and escape the limit',
    );
  }
  if (
    trustProxy !== undefined &&
    trustProxy !== false &&
    typeof trustProxy !== 'number' &&
    !Array.isArray(trustProxy)
  ) {
    throw invalid('trustProxy', 'false, a hop count or a list of addresses/CIDRs', trustProxy);
  }
  const proxyHeader = oneOfOption(
    'proxyHeader',
    options.proxyHeader,
    ['x-forwarded-for', 'forwarded'],
    'x-forwarded-for',
  );
  const trust = Array.isArray(trustProxy)
    ? compileList('trustProxy', trustProxy, proxyHeader)
    : compileTrust(
        typeof trustProxy === 'number'
          ? numberOption('trustProxy', trustProxy, 0, { min: 0, max: 100, integer: true })
          : false,
        proxyHeader,
      );
  const ipv6Subnet = numberOption('ipv6Subnet', options.ipv6Subnet, 64, { min: 1, max: 128, integer: true });
  if (options.keyGenerator !== undefined && typeof options.keyGenerator !== 'function') {
    throw invalid('keyGenerator', 'a function', options.keyGenerator);
  }
  if (options.skip !== undefined && typeof options.skip !== 'function')
    throw invalid('skip', 'a function', options.skip);
  return {
    points,
    windowSec,
    name: shared.name,
    store: shared.store,
    onStoreError: shared.onStoreError,
    storeTimeoutMs: shared.storeTimeoutMs,
    processes: shared.processes,
    trust,
    ipv6Subnet,
    keyGenerator: options.keyGenerator as IpRateLimiterOptions['keyGenerator'],
    skip: options.skip as IpRateLimiterOptions['skip'],
    allowlist: options.allowlist === undefined ? undefined : compileList('allowlist', options.allowlist).list,
    standardHeaders: booleanOption('standardHeaders', options.standardHeaders, true),
    legacyHeaders: booleanOption('legacyHeaders', options.legacyHeaders, false),
    now,
  };
}
