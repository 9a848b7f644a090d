// cosictl's net.isIPv6 and net.isIP (client/cli/ipv6-check.ts) answer as Node's own do, for addresses of both
// families, zone IDs, host names and strings of address characters in any order.
import { createRequire, syncBuiltinESMExports } from 'node:module';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { installIPv6Check, isIPWithColonCheck, withColonCheck } from '../client/cli/ipv6-check.js';

const net = createRequire(import.meta.url)('node:net') as typeof import('node:net');
const nodeIsIPv6 = net.isIPv6;
const nodeIsIP = net.isIP;
const checked = withColonCheck(nodeIsIPv6);
const checkedIsIP = isIPWithColonCheck(nodeIsIP, net.isIPv4);

const SAMPLES = [
  '::', '::1', '1::', 'fe80::1%eth0', 'fe80::1%', '::ffff:127.0.0.1', '::ffff:1.2.3', '2001:db8::8a2e:370:7334',
  '2001:0db8:0000:0000:0000:ff00:0042:8329', '1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:1.2.3.4', ':::',
  '1:::2', '[::1]', '[::1]:50000', '127.0.0.1', '127.0.0.1:50000', '10.5.0.2', 'localhost', 'cosid.example', '', ' ',
  ':', 'gggg::1', '::1 ', ' ::1', '::1\n', '%eth0', 'ip-address.invalid', '256.1.1.1', '1.2.3', '01.2.3.4', '1.2.3.4 ',
];

describe('cosictl isIPv6', () => {
  it.each(SAMPLES)('%j: the same answers as Node', (s) => {
    expect(checked(s)).toBe(nodeIsIPv6(s));
    expect(checkedIsIP(s)).toBe(nodeIsIP(s));
  });

  it('agrees with Node on random strings of address characters', () => {
    const text = fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEFg:.%-[] '.split('')), maxLength: 45 });
    fc.assert(fc.property(text, (s) => checked(s) === nodeIsIPv6(s) && checkedIsIP(s) === nodeIsIP(s)), { numRuns: 5000 });
  });

  it('agrees with Node on random dotted quads', () => {
    const quad = fc.array(fc.integer({ min: 0, max: 300 }).map(String), { minLength: 3, maxLength: 5 }).map((parts) => parts.join('.'));
    fc.assert(fc.property(quad, (s) => checkedIsIP(s) === nodeIsIP(s)), { numRuns: 2000 });
  });

  it('agrees with Node on random IPv6 addresses, compressed or not, with and without a zone', () => {
    const hextet = fc.integer({ min: 0, max: 0xffff }).map((n) => n.toString(16));
    const address = fc.tuple(fc.array(hextet, { minLength: 8, maxLength: 8 }), fc.nat(8), fc.nat(8), fc.option(fc.constantFrom('eth0', 'lo', '1'))).map(([parts, from, len, zone]) => {
      const cut = Math.min(from, 8);
      const text = len === 0 ? parts.join(':') : `${parts.slice(0, cut).join(':')}::${parts.slice(Math.min(8, cut + len)).join(':')}`;
      return zone === null ? text : `${text}%${zone}`;
    });
    fc.assert(fc.property(address, (s) => checked(s) === nodeIsIPv6(s) && checkedIsIP(s) === nodeIsIP(s)), { numRuns: 2000 });
  });

  it('once installed, is what net.isIPv6 and net.isIP answer with, named imports of node:net included', async () => {
    installIPv6Check();
    try {
      expect(net.isIPv6).not.toBe(nodeIsIPv6);
      expect(net.isIP).not.toBe(nodeIsIP);
      const named = await import('node:net');
      expect(named.isIP).toBe(net.isIP);
      expect([net.isIPv6('::1'), net.isIPv6('127.0.0.1'), net.isIP('::1'), net.isIP('127.0.0.1'), net.isIP('ip-address.invalid')]).toEqual([true, false, 6, 4, 0]);
    } finally {
      net.isIPv6 = nodeIsIPv6;
      net.isIP = nodeIsIP;
      syncBuiltinESMExports();
    }
  });
});
