// Every use cosid makes of grpc-js internals, in one place. grpc-js offers no public way to reach its TLS servers
// (refusal logging, the peer certificate cache) or to set the TLS handshake timeout, so cosid reaches into private
// fields. grpc-js is pinned exactly in package.json for that reason, and each access below checks that what it hooks
// is there and throws otherwise: a grpc-js release that renames an internal stops cosid at start, loudly, instead of
// silently dropping the handshake limit or the refusal log. test/grpc-internals.test.ts proves the hooks work.
import type * as grpc from '@grpc/grpc-js';
import { createRequire } from 'node:module';
import { Server as TlsServer } from 'node:tls';

/** The grpc-js release in use (from its package.json), for messages. */
export const GRPC_JS_VERSION: string = installedVersion();

function installedVersion(): string {
  try {
    const pkg = createRequire(import.meta.url)('@grpc/grpc-js/package.json') as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

function missing(internal: string, problem: string): Error {
  return new Error(
    `@grpc/grpc-js ${GRPC_JS_VERSION}: the internal ${internal} ${problem}; cosid hooks it (server/grpc-internals.ts) ` +
      'and will not run without it: install the grpc-js version package.json pins',
  );
}

/**
 * grpc-js's TLS servers (the private `http2Servers` map of grpc.Server), once bindAsync has bound them. Throws when
 * the map is not there or holds no TLS server.
 */
export function tlsServersOf(server: grpc.Server): TlsServer[] {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map)) throw missing('grpc.Server#http2Servers', 'is missing (expected a Map of its HTTP/2 servers)');
  const tls = [...servers.keys()].filter((s): s is TlsServer => s instanceof TlsServer);
  if (tls.length === 0) throw missing('grpc.Server#http2Servers', 'holds no TLS server after bindAsync');
  return tls;
}

/**
 * Sets the TLS handshake timeout of the servers grpc-js builds from these credentials: grpc-js merges what the
 * private `_getConstructorOptions` returns into the options of http2.createSecureServer. Throws when that method is
 * not there or returns no options object.
 */
export function limitHandshake(creds: grpc.ServerCredentials, handshakeTimeoutMs: number): void {
  const internal = creds as unknown as { _getConstructorOptions?: unknown };
  const base = internal._getConstructorOptions;
  if (typeof base !== 'function') throw missing('ServerCredentials#_getConstructorOptions', 'is missing');
  const options = base.call(creds) as unknown;
  if (options === null || typeof options !== 'object') throw missing('ServerCredentials#_getConstructorOptions', 'returns no TLS server options');
  internal._getConstructorOptions = () => ({ ...(base.call(creds) as object), handshakeTimeout: handshakeTimeoutMs });
}
