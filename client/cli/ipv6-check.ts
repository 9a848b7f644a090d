// Node 20's IPv6 check is one large regular expression that V8 compiles on its first use, which takes 15-25 ms and
// more. Each cosictl run met it twice over: grpc-js asks net.isIPv6 of every address it dials, IPv4 ones included,
// and Node's tls.connect asks net.isIP of the TLS server name, a host name. Every string that expression accepts
// has a colon: for a string without one, net.isIPv6 and net.isIP answer here without it; anything else goes to
// Node's own checks. Installed by cosictl's process only, never by the library, which leaves an application's
// modules alone.
import { createRequire, syncBuiltinESMExports } from 'node:module';

type IsIPv6 = (input: string) => boolean;
type IsIP = (input: string) => number;

/** Node's isIPv6 behind a test no IPv6 address can fail: the same answers, the same errors. */
export function withColonCheck(isIPv6: IsIPv6): IsIPv6 {
  return (input) => (typeof input === 'string' && !input.includes(':') ? false : isIPv6(input));
}

/** Node's isIP (4 for IPv4, 6 for IPv6, else 0), which asks isIPv6 only of a string that has a colon. */
export function isIPWithColonCheck(isIP: IsIP, isIPv4: IsIPv6): IsIP {
  return (input) => (typeof input === 'string' && !input.includes(':') ? (isIPv4(input) ? 4 : 0) : isIP(input));
}

/**
 * Replaces net.isIPv6 and net.isIP, on the module object that grpc-js and Node's TLS read them from at each call,
 * and in the module's named exports (`import { isIP } from 'node:net'`).
 */
export function installIPv6Check(): void {
  const net = createRequire(import.meta.url)('node:net') as { isIP: IsIP; isIPv4: IsIPv6; isIPv6: IsIPv6 };
  net.isIP = isIPWithColonCheck(net.isIP, net.isIPv4);
  net.isIPv6 = withColonCheck(net.isIPv6);
  syncBuiltinESMExports();
}
