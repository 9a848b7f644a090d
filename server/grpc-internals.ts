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

/**
 * A whole gRPC message cosid framed itself (flag, length, payload), or several back to back: grpc-js sends its bytes
 * as they are (see installFramedWrites), in one write. Its own type, so that it cannot be taken for a payload or a
 * payload for it.
 */
export class FramedMessage {
  private constructor(private readonly wire: Buffer) {}

  /** Frames a payload; `compressed`: the payload is compressed with the stream's grpc-encoding (flag 1). */
  static frame(payload: Buffer, compressed: boolean): FramedMessage {
    const out = Buffer.allocUnsafe(payload.length + 5);
    out.writeUInt8(compressed ? 1 : 0, 0);
    out.writeUInt32BE(payload.length, 1);
    payload.copy(out, 5);
    return new FramedMessage(out);
  }

  /**
   * Bytes that already are one or more whole gRPC messages (Frames.message, or several of them concatenated): sent
   * as they are, without a copy.
   */
  static of(framed: Buffer): FramedMessage {
    return new FramedMessage(framed);
  }

  /** Bytes on the wire. */
  get length(): number {
    return this.wire.length;
  }

  /** The bytes to send when `value` is a FramedMessage; undefined for anything else. */
  static wireOf(value: unknown): Buffer | undefined {
    return value instanceof FramedMessage ? value.wire : undefined;
  }
}

let framedWritesInstalled = false;

/**
 * Lets cosid hand grpc-js whole gRPC messages (FramedMessage) that it built once and shares among watchers:
 * grpc-js otherwise copies every message into a new buffer per call, and has no response compression at all, so a
 * message compressed once for many watchers (flag 1) could not be sent. grpc-js frames a message in the private
 * BaseServerInterceptingCall#serializeMessage; it is wrapped to pass a FramedMessage's bytes through, and to frame
 * everything else as before. Throws when that method is missing.
 */
export function installFramedWrites(): void {
  if (framedWritesInstalled) return;
  let proto: { serializeMessage?: unknown } | undefined;
  try {
    const mod = createRequire(import.meta.url)('@grpc/grpc-js/build/src/server-interceptors.js') as { BaseServerInterceptingCall?: { prototype?: { serializeMessage?: unknown } } };
    proto = mod.BaseServerInterceptingCall?.prototype;
  } catch {
    proto = undefined;
  }
  const original = proto?.serializeMessage;
  if (proto === undefined || typeof original !== 'function') throw missing('BaseServerInterceptingCall#serializeMessage', 'is missing');
  proto.serializeMessage = function serializeMessage(this: unknown, value: unknown): unknown {
    return FramedMessage.wireOf(value) ?? (original as (v: unknown) => unknown).call(this, value);
  };
  framedWritesInstalled = true;
}

/** Each HTTP/2 request's grpc-accept-encoding, by its stream (grpc-js drops the header from the call's metadata). */
const ACCEPTED = new WeakMap<object, string>();

/** Remembers what each call's client accepts (see acceptsGzip); call once per TLS server. */
export function rememberAcceptedEncodings(tlsServers: readonly TlsServer[]): void {
  for (const s of tlsServers) {
    s.on('stream', (stream: object, headers: Record<string, unknown>) => {
      const v = headers['grpc-accept-encoding'];
      ACCEPTED.set(stream, typeof v === 'string' ? v : Array.isArray(v) ? v.join(',') : '');
    });
  }
}

/**
 * Whether the client of this call accepts gzip-compressed messages (grpc-accept-encoding). The call's HTTP/2 stream
 * is the private `call.stream` of the object grpc-js hands the handler as `call.call`; throws when it is missing.
 */
export function acceptsGzip(call: object): boolean {
  const inner = (call as { call?: { stream?: unknown } }).call;
  const stream = inner?.stream;
  if (stream === null || typeof stream !== 'object') throw missing('ServerWritableStreamImpl#call.stream', 'is missing (the HTTP/2 stream of a call)');
  const accepted = ACCEPTED.get(stream) ?? '';
  return accepted.split(',').some((e) => e.trim() === 'gzip');
}
