// Client IP extraction: the socket by default, forwarded headers only through trusted hops, IPv6 prefixes.
import { describe, expect, it } from 'vitest';
import { clientIp, compileTrust, ipKey, normalizeIp } from '../../src/rate-limit/client-ip.js';

const none = compileTrust(false);

describe('normalizeIp', () => {
  it('maps IPv4-mapped IPv6 to IPv4 and strips brackets, ports, zones and quotes', () => {
    expect(normalizeIp('::ffff:203.0.113.7')).toBe('203.0.113.7');
    expect(normalizeIp('[2001:db8::1]:443')).toBe('2001:db8::1');
    expect(normalizeIp('203.0.113.7:5678')).toBe('203.0.113.7');
    expect(normalizeIp('"[2001:db8::1]"')).toBe('2001:db8::1');
    expect(normalizeIp('fe80::1%eth0')).toBe('fe80::1');
  });
});

describe('clientIp', () => {
  const spoofed = { 'x-forwarded-for': '1.2.3.4' };

  it('uses the socket address and ignores X-Forwarded-For without trustProxy', () => {
    expect(clientIp('::ffff:10.0.0.5', spoofed, none)).toBe('10.0.0.5');
  });

  it('honours exactly the trusted number of hops', () => {
    const headers = { 'x-forwarded-for': 'evil-spoof, 198.51.100.7, 10.0.0.2' };
    // Peer 10.0.0.1 is the only proxy: the client is the address it saw, 10.0.0.2.
    expect(clientIp('10.0.0.1', headers, compileTrust(1))).toBe('10.0.0.2');
    // Two proxies: 10.0.0.1 then 10.0.0.2; the client is 198.51.100.7.
    expect(clientIp('10.0.0.1', headers, compileTrust(2))).toBe('198.51.100.7');
    // More hops than addresses: the garbage entry stops the walk at the last real address.
    expect(clientIp('10.0.0.1', headers, compileTrust(5))).toBe('198.51.100.7');
  });

  it('honours a hop count only from a loopback, private or link-local peer: a direct client cannot pick its IP', () => {
    const spoof = { 'x-forwarded-for': '1.2.3.4' };
    for (const publicPeer of ['203.0.113.5', '8.8.8.8', '2001:db8::1', '::ffff:198.51.100.3']) {
      expect(clientIp(publicPeer, spoof, compileTrust(1))).toBe(normalizeIp(publicPeer));
    }
    for (const privatePeer of [
      '127.0.0.1',
      '10.0.0.2',
      '172.20.1.1',
      '192.168.1.9',
      'fd00::7',
      '::1',
      '::ffff:10.1.1.1',
    ]) {
      expect(clientIp(privatePeer, spoof, compileTrust(1))).toBe('1.2.3.4');
    }
    // Beyond the nearest hop, public proxies (a CDN in front of a private load balancer) are walked through.
    expect(clientIp('10.0.0.1', { 'x-forwarded-for': '198.51.100.7, 104.16.0.1' }, compileTrust(2))).toBe(
      '198.51.100.7',
    );
  });

  it('walks through a trusted CIDR list to the first untrusted address', () => {
    const rule = compileTrust(['10.0.0.0/8', '2001:db8:ffff::/48']);
    const headers = { 'x-forwarded-for': '1.1.1.1, 203.0.113.9, 10.1.2.3' };
    expect(clientIp('10.9.9.9', headers, rule)).toBe('203.0.113.9');
    // A direct client (not a trusted proxy) cannot spoof.
    expect(clientIp('198.51.100.1', headers, rule)).toBe('198.51.100.1');
    expect(clientIp('2001:db8:ffff::1', { 'x-forwarded-for': '2001:db8:1::5' }, rule)).toBe('2001:db8:1::5');
  });

  it('reads only X-Forwarded-For by default: a client-sent Forwarded cannot choose the address', () => {
    // nginx, load balancers and Cloudflare append to X-Forwarded-For and pass the client's Forwarded through.
    const headers = { forwarded: 'for=198.51.100.77', 'x-forwarded-for': '203.0.113.5' };
    expect(clientIp('10.0.0.1', headers, compileTrust(1))).toBe('203.0.113.5');
    expect(clientIp('10.0.0.1', { forwarded: 'for=198.51.100.77' }, compileTrust(1))).toBe('10.0.0.1');
    expect(clientIp('10.0.0.1', { forwarded: 'for=198.51.100.77' }, compileTrust(['10.0.0.0/8']))).toBe(
      '10.0.0.1',
    );
  });

  it("reads RFC 7239 Forwarded when it is the operator's chosen header, and then ignores X-Forwarded-For", () => {
    const headers = {
      forwarded: 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"',
      'x-forwarded-for': '9.9.9.9',
    };
    expect(clientIp('10.0.0.1', headers, compileTrust(1, 'forwarded'))).toBe('2001:db8:cafe::17');
    expect(clientIp('10.0.0.1', headers, compileTrust(2, 'forwarded'))).toBe('192.0.2.60');
    expect(clientIp('10.0.0.1', { 'x-forwarded-for': '9.9.9.9' }, compileTrust(1, 'forwarded'))).toBe(
      '10.0.0.1',
    );
    // Several Forwarded lines are one list, nearest proxy last.
    expect(
      clientIp('10.0.0.1', { forwarded: ['for=1.1.1.1', 'for=2.2.2.2'] }, compileTrust(2, 'forwarded')),
    ).toBe('1.1.1.1');
  });

  it('handles X-Forwarded-For sent as several header lines', () => {
    expect(clientIp('10.0.0.1', { 'x-forwarded-for': ['7.7.7.7', '8.8.8.8'] }, compileTrust(2))).toBe(
      '7.7.7.7',
    );
  });
});

describe('ipKey', () => {
  it('keys IPv6 by its /64 so addresses rotating inside it share a bucket', () => {
    const a = ipKey('2001:db8:1:2:aaaa::1', 64);
    const b = ipKey('2001:db8:1:2:ffff:1234:5678:9abc', 64);
    const c = ipKey('2001:db8:1:3::1', 64);
    expect(a).toBe('2001:db8:1:2:0:0:0:0/64');
    expect(b).toBe(a);
    expect(c).not.toBe(a);
    expect(ipKey('2001:db8::1', 128)).toBe('2001:db8::1');
    expect(ipKey('::1', 64)).toBe('0:0:0:0:0:0:0:0/64');
    expect(ipKey('64:ff9b::192.0.2.1', 96)).toBe('64:ff9b:0:0:0:0:0:0/96');
  });

  it('leaves IPv4 as is', () => {
    expect(ipKey('203.0.113.7', 64)).toBe('203.0.113.7');
  });
});
