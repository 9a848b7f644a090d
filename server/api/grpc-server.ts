// What every gRPC server of ours shares (cosid's and the fleet's): its options, its bind with the TLS hooks
// (refused handshakes logged, peer certificates remembered per connection, accepted encodings), and the
// descriptors reflection serves.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import { join } from 'node:path';
import descriptor from 'protobufjs/ext/descriptor/index.js';
import type { Logger } from '../../shared/log.js';
import { PROTO_DIR } from '../../shared/wire.js';
import { MAX_CONFIG_BYTES } from '../config/machine-config.js';
import { rememberAcceptedEncodings, tlsServersOf } from '../grpc-internals.js';

/** The server's options: long-lived watches, a whole machine config per call, 1024 streams per connection. */
export function serverOptions(maxConnectionAgeMs = 3_600_000): grpc.ServerOptions {
  return {
    // Watches are long-lived; keep connections honest without killing idle watchers.
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
    // Ping policing (grpc-go's min_ping_interval / max_ping_strikes) is not implemented by grpc-js 1.14's server:
    // those options would be ignored, so they are not set (bench/RESULTS.md, 2026-11-30).
    // A whole machine config fits in one ApplyConfiguration, up to the size the file may have (and grpc-go's default).
    'grpc.max_receive_message_length': MAX_CONFIG_BYTES + (64 << 10),
    'grpc.max_send_message_length': 16 << 20,
    'grpc.max_concurrent_streams': 1024,
    'grpc.max_connection_age_ms': maxConnectionAgeMs,
    // Open streams get this long to finish after the GOAWAY; watches then resume from their bookmark.
    'grpc.max_connection_age_grace_ms': 30_000,
    // A connection with no call for this long is closed.
    'grpc.max_connection_idle_ms': 300_000,
  };
}

/** Binds and hooks the TLS servers; resolves with the port. Throws when the grpc-js internals it hooks are missing. */
export async function bindServer(server: grpc.Server, listen: string, creds: grpc.ServerCredentials, log: Logger): Promise<number> {
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(listen, creds, (err, p) => (err ? reject(new Error(`cannot listen on ${listen}: ${bindProblem(err)}`)) : resolve(p)));
  });
  const tlsServers = tlsServersOf(server);
  logHandshakeRefusals(tlsServers, log);
  rememberPeerCertificates(tlsServers);
  rememberAcceptedEncodings(tlsServers);
  return port;
}

/**
 * Why a bind failed, in a few words. grpc-js reports it as "No address added out of total 1 resolved errors:
 * [listen EADDRINUSE: address already in use 127.0.0.1:50000]": the system's error code says it.
 */
function bindProblem(err: Error): string {
  const code = /\b(EADDRINUSE|EACCES|EADDRNOTAVAIL)\b/.exec(err.message)?.[1];
  switch (code) {
    case 'EADDRINUSE':
      return 'the address is already in use (is another cosid running? choose another address with --listen)';
    case 'EACCES':
      return 'permission denied (ports below 1024 need root)';
    case 'EADDRNOTAVAIL':
      return 'this host has no such address';
    default:
      return err.message;
  }
}

/**
 * The package definition reflection serves. proto-loader names files after packages and drops imports, which
 * leaves generic clients unable to resolve google.protobuf.Timestamp; so the real file descriptors, compiled by
 * `buf build` at build time (dist/*.binpb: ours and the health service's), replace them.
 */
export function reflectionPackage(): protoLoader.PackageDefinition {
  let merged: protoLoader.PackageDefinition = {};
  for (const name of ['cosi.binpb', 'health.binpb']) {
    const bytes = readFileSync(join(PROTO_DIR, '..', 'dist', name));
    const pkg = protoLoader.loadFileDescriptorSetFromBuffer(bytes);
    const set = descriptor.FileDescriptorSet.decode(bytes) as unknown as { file: unknown[] };
    const files = set.file.map((f) => Buffer.from(descriptor.FileDescriptorProto.encode(f as Record<string, unknown>).finish()));
    for (const entry of Object.values(pkg)) {
      if ('fileDescriptorProtos' in entry) entry.fileDescriptorProtos = files;
    }
    merged = { ...merged, ...pkg };
  }
  return merged;
}

/**
 * Every call's roles come from its connection's client certificate, and grpc-js asks the socket for it on every call
 * (getAuthContext), which builds a new certificate object each time: a quarter of a Get's server time. A
 * connection's certificate is fixed at its handshake (HTTP/2 forbids renegotiation, TLS 1.3 has none), so each
 * socket answers with the object it built first.
 */
function rememberPeerCertificates(tlsServers: readonly TlsServer[]): void {
  for (const s of tlsServers) {
    s.on('secureConnection', (socket: TLSSocket) => {
      const read = socket.getPeerCertificate.bind(socket);
      let first: ReturnType<TLSSocket['getPeerCertificate']> | undefined;
      socket.getPeerCertificate = ((detailed?: boolean) => (detailed === true ? read(true) : (first ??= read(false)))) as TLSSocket['getPeerCertificate'];
    });
  }
}

/**
 * What OpenSSL says for the verification errors a client certificate can fail with (x509_txt.c). Node gives a TLS
 * server only the code (`authorizationError`); a code not listed here is logged as it is.
 */
const VERIFY_ERRORS: Readonly<Record<string, string>> = {
  UNABLE_TO_GET_ISSUER_CERT: 'unable to get issuer certificate',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unable to get local issuer certificate',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unable to verify the first certificate',
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: "unable to decrypt certificate's signature",
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: 'unable to decode issuer public key',
  CERT_SIGNATURE_FAILURE: 'certificate signature failure',
  CERT_NOT_YET_VALID: 'certificate is not yet valid',
  CERT_HAS_EXPIRED: 'certificate has expired',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: "format error in certificate's notBefore field",
  ERROR_IN_CERT_NOT_AFTER_FIELD: "format error in certificate's notAfter field",
  DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed certificate',
  SELF_SIGNED_CERT_IN_CHAIN: 'self-signed certificate in certificate chain',
  CERT_CHAIN_TOO_LONG: 'certificate chain too long',
  CERT_REVOKED: 'certificate revoked',
  INVALID_CA: 'invalid CA certificate',
  PATH_LENGTH_EXCEEDED: 'path length constraint exceeded',
  INVALID_PURPOSE: 'unsupported certificate purpose',
  CERT_UNTRUSTED: 'certificate not trusted',
  CERT_REJECTED: 'certificate rejected',
};

/**
 * grpc-js does not surface failed TLS handshakes, but its TLS servers do ('tlsClientError'): log each refusal once
 * per peer address and reason, never key material. `reason` says why: for a refused certificate its verification
 * error (Node itself reports those as "socket hang up" and keeps the cause in `authorizationError`), else OpenSSL's
 * reason or Node's message; `code` is the machine-readable form. `subject` is the certificate the peer offered, or
 * "(no certificate)". Known limit: Node releases the connection of a refused certificate before it reports the
 * refusal, so for those the peer's address and subject are "unknown"; no public API of Node 20 reaches them.
 */
function logHandshakeRefusals(tlsServers: readonly TlsServer[], log: Logger): void {
  const seen = new Set<string>();
  for (const s of tlsServers) {
    s.on('tlsClientError', (err: Error & { code?: string; reason?: string }, socket: TLSSocket) => {
      // A code at run time, though @types/node says Error.
      const authorization: unknown = socket.authorizationError;
      const verifyError = typeof authorization === 'string' ? authorization : authorization instanceof Error ? authorization.message : undefined;
      const code = verifyError ?? err.code ?? 'unknown';
      const reason = verifyError !== undefined ? (VERIFY_ERRORS[verifyError] ?? verifyError) : (err.reason ?? err.message);
      const address = socket.remoteAddress ?? 'unknown';
      const key = `${address}\u0000${code}\u0000${reason}`;
      if (seen.has(key)) return;
      if (seen.size >= 10_000) seen.clear();
      seen.add(key);
      log.warn('TLS handshake refused', { peer: address, subject: offeredSubject(socket), reason, code });
    });
  }
}

/** The subject of the certificate a peer offered; "unknown" once Node has released the connection. */
function offeredSubject(socket: TLSSocket): string {
  try {
    // Node answers null once the connection is released, and an empty object when the peer sent no certificate.
    const cert = socket.getPeerCertificate() as Partial<ReturnType<TLSSocket['getPeerCertificate']>> | null;
    if (cert === null || typeof cert !== 'object') return 'unknown';
    if (cert.subject === undefined) return '(no certificate)';
    return Object.entries(cert.subject).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`).join(', ');
  } catch {
    return 'unknown';
  }
}
