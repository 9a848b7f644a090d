// Node 20's net.isIPv6 is one large regular expression that V8 compiles on its first use, which takes 25 ms and more;
// grpc-js asks it of every address it dials (to name and order them), IPv4 addresses included, so each cosictl run
// paid for it. Every string that expression accepts has a colon: a string without one is answered here, without the
// expression; anything else goes to Node's own check. Installed by cosictl's process only, never by the library,
// which leaves an application's modules alone.
import { createRequire } from 'node:module';

type IsIPv6 = (input: string) => boolean;

/** Node's check behind a test no IPv6 address can fail: the same answers, the same errors. */
export function withColonCheck(isIPv6: IsIPv6): IsIPv6 {
  return (input) => (typeof input === 'string' && !input.includes(':') ? false : isIPv6(input));
}

/** Replaces net.isIPv6 (the module object grpc-js reads it from at each call) with withColonCheck's. */
export function installIPv6Check(): void {
  const net = createRequire(import.meta.url)('node:net') as { isIPv6: IsIPv6 };
  net.isIPv6 = withColonCheck(net.isIPv6);
}
