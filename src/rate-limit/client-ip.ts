// The client's IP: the socket's address, or the one proxy header the operator names (X-Forwarded-For by default,
// or Forwarded) read only through trusted proxy hops. The other header is never read: proxies append to the one
// they speak and pass the other through from the client untouched, so reading it would let any client pick its key.
// IPv4-mapped IPv6 counts as IPv4; IPv6 is keyed by its prefix (default /64: one subscriber's allocation).
import { BlockList, isIP } from 'node:net';

/** `false`: trust no proxy. A number: that many proxy hops in front. A list: proxies by address or CIDR. */
export type TrustProxy = false | number | string[];

/** The header trusted proxies write the client's address into. */
export type ProxyHeader = 'x-forwarded-for' | 'forwarded';

/** Compiled trust rules: a hop count or a BlockList of trusted proxies, and the one header to read. */
export interface TrustRule {
  hops: number;
  list: BlockList | undefined;
  header: ProxyHeader;
}

export function compileTrust(trustProxy: TrustProxy, header: ProxyHeader = 'x-forwarded-for'): TrustRule {
  if (trustProxy === false) return { hops: 0, list: undefined, header };
  if (typeof trustProxy === 'number') return { hops: trustProxy, list: undefined, header };
  const list = new BlockList();
  for (const entry of trustProxy) {
    const [address, prefixText] = entry.split('/') as [string, string | undefined];
    const normalized = normalizeIp(address);
    const family = isIP(normalized);
    if (family === 0) throw new Error(entry);
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (prefixText === undefined) list.addAddress(normalized, type);
    else {
      const prefix = Number(prefixText);
      if (!Number.isInteger(prefix) || prefix < 0 || prefix > (family === 4 ? 32 : 128))
        throw new Error(entry);
      list.addSubnet(normalized, prefix, type);
    }
  }
  return { hops: Number.POSITIVE_INFINITY, list, header };
}

/** `::ffff:1.2.3.4` → `1.2.3.4`; strips brackets, ports and zone ids that headers may carry. */
export function normalizeIp(raw: string): string {
  // Fast path: a plain IPv4 address as sockets report it.
  if (raw.indexOf(':') === -1 && raw.indexOf(' ') === -1 && raw.indexOf('"') === -1) return raw;
  let ip = raw.trim();
  if (ip.startsWith('"') && ip.endsWith('"')) ip = ip.slice(1, -1);
  if (ip.startsWith('[')) {
    const end = ip.indexOf(']');
    ip = end === -1 ? ip.slice(1) : ip.slice(1, end);
  } else if (ip.indexOf(':') !== -1 && ip.indexOf(':') === ip.lastIndexOf(':') && ip.includes('.')) {
    ip = ip.slice(0, ip.indexOf(':')); // 1.2.3.4:5678
  }
  const zone = ip.indexOf('%');
  if (zone !== -1) ip = ip.slice(0, zone);
  if (ip.length > 7 && (ip.startsWith('::ffff:') || ip.startsWith('::FFFF:')) && ip.includes('.'))
    ip = ip.slice(7);
  return ip;
}

/**
 * Loopback, private (RFC 1918, RFC 4193 unique-local) and link-local addresses: where a proxy the operator runs sits.
 * A hop count trusts the header only when the nearest peer is one of these: a client reaching the gateway directly
 * from the internet cannot pick its own address by sending the header. (A proxy at a public address: list it.)
 */
const PRIVATE = new BlockList();
PRIVATE.addSubnet('127.0.0.0', 8, 'ipv4');
PRIVATE.addSubnet('10.0.0.0', 8, 'ipv4');
PRIVATE.addSubnet('172.16.0.0', 12, 'ipv4');
PRIVATE.addSubnet('192.168.0.0', 16, 'ipv4');
PRIVATE.addSubnet('169.254.0.0', 16, 'ipv4');
PRIVATE.addSubnet('100.64.0.0', 10, 'ipv4');
PRIVATE.addAddress('::1', 'ipv6');
PRIVATE.addSubnet('fc00::', 7, 'ipv6');
PRIVATE.addSubnet('fe80::', 10, 'ipv6');

/** True for a loopback, private or link-local address (see PRIVATE). */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  return family !== 0 && PRIVATE.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

function isTrusted(address: string, rule: TrustRule, depth: number): boolean {
  // The hops beyond the nearest may be public (a CDN in front of a private load balancer).
  if (rule.list === undefined) return depth < rule.hops && (depth > 0 || isPrivateAddress(address));
  const family = isIP(address);
  return family !== 0 && rule.list.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

/** The `for=` addresses of a Forwarded header, nearest proxy last (RFC 7239). */
function forwardedFor(header: string): string[] {
  const out: string[] = [];
  for (const element of header.split(',')) {
    for (const pair of element.split(';')) {
      const eq = pair.indexOf('=');
      if (eq !== -1 && pair.slice(0, eq).trim().toLowerCase() === 'for') out.push(pair.slice(eq + 1));
    }
  }
  return out;
}

/**
 * Walks from the socket's peer towards the client through trusted hops only: with `trustProxy: 2` the address two
 * hops in front is the client; with a list, the first address that is not a trusted proxy.
 */
export function clientIp(
  remoteAddress: string | undefined,
  headers: Record<string, string | string[] | undefined>,
  rule: TrustRule,
): string {
  const peer = normalizeIp(remoteAddress ?? '');
  if (rule.hops === 0 && rule.list === undefined) return peer;
  const raw = headers[rule.header];
  if (raw === undefined || raw === '') return peer;
  // Several header lines are one list (RFC 9110 §5.3), in the order they came.
  const text = Array.isArray(raw) ? raw.join(',') : raw;
  const chain = rule.header === 'forwarded' ? forwardedFor(text) : text.split(',');
  // Nearest first: the peer, then the forwarded addresses from right to left.
  let current = peer;
  for (let depth = 0, i = chain.length - 1; i >= 0; depth++, i--) {
    if (!isTrusted(current, rule, depth)) return current;
    const next = normalizeIp(chain[i]!);
    if (isIP(next) === 0) return current; // garbage (e.g. "unknown"): stop at the last known hop
    current = next;
  }
  return current;
}

/** Expands an IPv6 address to 8 groups of 16 bits (an embedded IPv4 tail included). */
function expandIpv6(ip: string): number[] {
  let text = ip;
  const tail: number[] = [];
  const lastColon = ip.lastIndexOf(':');
  if (ip.indexOf('.', lastColon) !== -1) {
    const v4 = ip
      .slice(lastColon + 1)
      .split('.')
      .map(Number);
    tail.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
    text = ip.slice(0, lastColon + 1);
    if (!text.endsWith('::')) text = text.slice(0, -1);
  }
  const double = text.indexOf('::');
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((g) => Number.parseInt(g, 16)));
  if (double === -1) return [...parse(text), ...tail];
  const left = parse(text.slice(0, double));
  const right = parse(text.slice(double + 2));
  const zeros = new Array<number>(Math.max(0, 8 - tail.length - left.length - right.length)).fill(0);
  return [...left, ...zeros, ...right, ...tail];
}

/** The rate-limit key of an address: IPv4 as is, IPv6 as its /prefix network. */
export function ipKey(ip: string, ipv6Subnet: number): string {
  // IPv4 (no colon) is the common case: no parsing at all.
  if (ip.indexOf(':') === -1 || ipv6Subnet >= 128 || isIP(ip) !== 6) return ip;
  const groups = expandIpv6(ip);
  const bits = ipv6Subnet;
  const out: string[] = [];
  for (let g = 0; g < 8; g++) {
    const keep = Math.max(0, Math.min(16, bits - g * 16));
    const mask = keep === 0 ? 0 : (0xffff << (16 - keep)) & 0xffff;
    out.push(((groups[g] ?? 0) & mask).toString(16));
  }
  return `${out.join(':')}/${ipv6Subnet}`;
}
