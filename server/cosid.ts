// cosid assembled: store -> registry -> controllers -> gRPC API over mTLS, with health and reflection.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { readFileSync } from 'node:fs';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import { join } from 'node:path';
import descriptor from 'protobufjs/ext/descriptor/index.js';
import { CosiError } from '../shared/errors.js';
import { silentLogger, type Logger } from '../shared/log.js';
import { PROTO_DIR } from '../shared/wire.js';
import { Frames } from './watch/frames.js';
import { CurrentFrames } from './watch/current-frames.js';
import { FramedStreamStats } from './api/framed-stream.js';
import { DEFAULT_RUNTIME, machineServiceDefinition, machineService, type RuntimeOptions } from './api/machine-service.js';
import type { ApplierRef } from './api/apply-config.js';
import type { ConfigApplier } from './config/apply.js';
import { MAX_CONFIG_BYTES } from './config/machine-config.js';
import { stateServiceDefinition, stateServiceHandlers } from './api/service.js';
import { IMPERSONATOR_ROLE } from './api/access.js';
import { NodeDirectory } from './api/node-directory.js';
import { NodeProxy } from './api/node-proxy.js';
import { NodeRouter } from './api/node-routing.js';
import { installFramedWrites, rememberAcceptedEncodings, tlsServersOf } from './grpc-internals.js';
import { registerK8sTypes } from './resources/k8s.js';
import { Registry } from './resources/registry.js';
import { MemoryStore } from './store/memory.js';
import type { ResourceStore } from './store/store.js';
import { TlsMaterial } from './tls/material.js';
import { Metrics, serveMetrics } from './metrics.js';
import { WatchHub } from './watch/hub.js';
import { DEFAULT_WATCH_LIMITS, type WatchLimits } from './watch/limits.js';

export interface TlsPem {
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface CosidOptions {
  /** host:port; port 0 picks a free one. */
  listen: string;
  /** PEM text, or reloadable material (TlsMaterial.load + watch). */
  tls: TlsPem | TlsMaterial;
  /** A TLS handshake must complete within this (default 10 s). */
  handshakeTimeoutMs?: number;
  nodeName: string;
  log?: Logger;
  /** Where resources live (default: a new MemoryStore with historySize/historyAgeMs). Cosid closes it on stop. */
  store?: ResourceStore;
  historySize?: number;
  historyAgeMs?: number;
  /** Overrides of the watch limits (batch sizes, idle bookmark interval). */
  watchLimits?: Partial<WatchLimits>;
  /** One log line per call (off by default). */
  audit?: boolean;
  /** Connections with calls in flight per remote address (default 64). */
  maxConnectionsPerAddress?: number;
  /** Open watches per connection (default 256). */
  maxWatchesPerConnection?: number;
  /** Open machine.MachineService `Logs` streams per connection (default 64). */
  maxLogStreamsPerConnection?: number;
  /** Connections are asked to reconnect after this long (default 1 h), so new certificates and limits apply. */
  maxConnectionAgeMs?: number;
  /** How long a graceful stop waits for calls to finish before cutting them (default 5 s). */
  shutdownGraceMs?: number;
  /** The container runtime and log files behind machine.MachineService (Containers, Logs). */
  runtime?: Partial<RuntimeOptions>;
  /** host:port to serve Prometheus metrics on (GET /metrics, plain HTTP); off when absent. */
  metricsListen?: string;
  /** Compress the watch messages many watchers share, for clients that accept gzip (default true). */
  watchCompression?: boolean;
  /** The node list (YAML `nodes: [{name, address}]`): the names calls may give in metadata `node`; reloaded when it changes. */
  nodesFile?: string;
  /**
   * The client certificate (role os:impersonator) this cosid dials other nodes' cosids with when it proxies a call
   * naming another node, and the CA their serving certificates are signed by. Without one it proxies nothing.
   */
  impersonator?: TlsPem | TlsMaterial;
}

const STATE_SERVICE = 'cosi.resource.State';
const MACHINE_SERVICE = 'machine.MachineService';

export class Cosid {
  readonly store: ResourceStore;
  readonly metrics: Metrics;
  /** Where metrics are served, when they are. */
  readonly metricsUrl: string | undefined;
  private readonly closeMetrics: () => Promise<void>;
  readonly registry: Registry;
  readonly hub: WatchHub;
  /** The encodings of the current resources of every kind read, kept from their commit. */
  readonly current: CurrentFrames;
  /** What the Lists in flight have queued. */
  readonly lists: FramedStreamStats;
  private readonly server: grpc.Server;
  private readonly health: HealthImplementation;
  private readonly closeRuntime: () => void;
  private readonly endLogs: (err: CosiError) => void;
  private stopping: Promise<void> | undefined;
  private readonly applier: ApplierRef;
  /** The names calls may give in metadata `node`. */
  readonly directory: NodeDirectory;
  private readonly proxy: NodeProxy | undefined;

  private constructor(
    private readonly opts: CosidOptions,
    readonly port: number,
    parts: {
      store: ResourceStore;
      registry: Registry;
      hub: WatchHub;
      current: CurrentFrames;
      lists: FramedStreamStats;
      server: grpc.Server;
      health: HealthImplementation;
      closeRuntime: () => void;
      endLogs: (err: CosiError) => void;
      metrics: Metrics;
      metricsServer: { url: string; close(): Promise<void> } | undefined;
      applier: ApplierRef;
      directory: NodeDirectory;
      proxy: NodeProxy | undefined;
    },
  ) {
    this.applier = parts.applier;
    this.directory = parts.directory;
    this.proxy = parts.proxy;
    this.metrics = parts.metrics;
    this.metricsUrl = parts.metricsServer?.url;
    this.closeMetrics = () => parts.metricsServer?.close() ?? Promise.resolve();
    this.closeRuntime = parts.closeRuntime;
    this.endLogs = parts.endLogs;
    this.store = parts.store;
    this.registry = parts.registry;
    this.hub = parts.hub;
    this.current = parts.current;
    this.lists = parts.lists;
    this.server = parts.server;
    this.health = parts.health;
  }

  static async start(opts: CosidOptions): Promise<Cosid> {
    const log = opts.log ?? silentLogger;
    // Watch messages are framed (and compressed) once for all watchers; grpc-js must pass them through.
    installFramedWrites();
    const store = opts.store ?? new MemoryStore({ historySize: opts.historySize, historyAgeMs: opts.historyAgeMs });
    const registry = new Registry(store, (msg, fields) => log.debug(msg, fields));
    registerK8sTypes(registry);
    try {
      await registry.published();
    } catch (err) {
      await store.close();
      throw new Error(`cannot write the resource definitions to the ${store.backend} store: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    const frames = new Frames(registry);
    const current = new CurrentFrames(frames);
    // The kinds cosid serves are kept encoded from the start: their first read finds every resource's bytes ready.
    for (const def of registry.definitions()) {
      store.feed.history({ namespace: def.defaultNamespace, type: def.type }).then(
        (history) => current.track(history),
        (err: unknown) => log.debug('kind not opened at start; it is tracked at its first read', { type: def.type, error: err instanceof Error ? err.message : String(err) }),
      );
    }
    const lists = new FramedStreamStats();
    const metrics = new Metrics();
    const hub = new WatchHub(store.feed, frames, { ...DEFAULT_WATCH_LIMITS, ...opts.watchLimits }, metrics);
    metrics.sources.watchers = () => {
      const s = hub.stats();
      return { streaming: s.sessions - s.parked, parked: s.parked, lagMax: s.lagMax, lagTotal: s.lagTotal };
    };
    metrics.sources.kinds = () => store.feed.opened().map((h) => ({ namespace: h.kind.namespace, type: h.kind.type, resources: h.count, history: h.size }));
    const material = opts.tls instanceof TlsMaterial ? opts.tls : TlsMaterial.fromPem(opts.tls, log);
    metrics.sources.certificates = () => material.expiry();

    const server = new grpc.Server({
      // Watches are long-lived; keep connections honest without killing idle watchers.
      'grpc.keepalive_time_ms': 60_000,
      'grpc.keepalive_timeout_ms': 20_000,
      // Ping policing (grpc-go's min_ping_interval / max_ping_strikes) is not implemented by grpc-js 1.14's server:
      // those options would be ignored, so they are not set (bench/RESULTS.md, 2026-11-30).
      // A whole machine config fits in one ApplyConfiguration, up to the size the file may have (and grpc-go's default).
      'grpc.max_receive_message_length': MAX_CONFIG_BYTES + (64 << 10),
      'grpc.max_send_message_length': 16 << 20,
      'grpc.max_concurrent_streams': 1024,
      'grpc.max_connection_age_ms': opts.maxConnectionAgeMs ?? 3_600_000,
      // Open streams get this long to finish after the GOAWAY; watches then resume from their bookmark.
      'grpc.max_connection_age_grace_ms': 30_000,
      // A connection with no call for this long is closed.
      'grpc.max_connection_idle_ms': 300_000,
    });
    // Calls naming another node in metadata `node` are proxied to it; the port is known once bound.
    let boundPort = 0;
    const directory = new NodeDirectory({ nodeName: opts.nodeName, listen: opts.listen, port: () => boundPort, ...(opts.nodesFile !== undefined ? { file: opts.nodesFile } : {}), log });
    let proxy: NodeProxy | undefined;
    if (opts.impersonator !== undefined) {
      const identity = opts.impersonator instanceof TlsMaterial ? opts.impersonator : TlsMaterial.fromPem(opts.impersonator, log);
      checkImpersonator(identity);
      proxy = new NodeProxy({ identity, log, metrics });
      const relays = proxy;
      metrics.sources.proxyStreams = () => relays.openStreams;
    }
    const router = new NodeRouter({ directory, proxy, log, audit: opts.audit === true });
    const state = router.route(stateServiceDefinition(), stateServiceHandlers({ feed: store.feed, registry, frames, current, listStats: lists, hub, log, metrics, watchCompression: opts.watchCompression, nodeName: opts.nodeName, maxWatchesPerConnection: opts.maxWatchesPerConnection, maxConnectionsPerAddress: opts.maxConnectionsPerAddress, audit: opts.audit }));
    server.addService(state.definition, state.handlers);
    const applier: ApplierRef = { current: undefined };
    const machine = machineService({ runtime: { ...DEFAULT_RUNTIME, ...opts.runtime }, nodeName: opts.nodeName, log, metrics, audit: opts.audit, maxLogStreamsPerConnection: opts.maxLogStreamsPerConnection, applier });
    const machineRouted = router.route(machineServiceDefinition(), machine.handlers);
    server.addService(machineRouted.definition, machineRouted.handlers);
    const health = new HealthImplementation({ '': 'SERVING', [STATE_SERVICE]: 'SERVING', [MACHINE_SERVICE]: 'SERVING' });
    health.addToServer(server);
    new ReflectionService(reflectionPackage()).addToServer(server);

    let port: number;
    let metricsServer: { url: string; close(): Promise<void> } | undefined;
    try {
      // mTLS only: the handshake refuses clients without a certificate signed by a trusted CA.
      const creds = material.serverCredentials({ handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 10_000 });
      port = await new Promise<number>((resolve, reject) => {
        server.bindAsync(opts.listen, creds, (err, p) => (err ? reject(new Error(`cannot listen on ${opts.listen}: ${bindProblem(err)}`)) : resolve(p)));
      });
      // Both throw when the grpc-js internals they hook are missing: cosid does not serve without them.
      const tlsServers = tlsServersOf(server);
      logHandshakeRefusals(tlsServers, log);
      rememberPeerCertificates(tlsServers);
      rememberAcceptedEncodings(tlsServers);
      boundPort = port;
      await directory.load();
      directory.watch();
      if (opts.metricsListen !== undefined) metricsServer = await serveMetrics(opts.metricsListen, metrics, log);
    } catch (err) {
      // Nothing of a cosid that did not start may go on running: the hub's bookmark timer included.
      hub.endAll(new CosiError('unavailable', 'cosid did not start'));
      directory.stop();
      current.close();
      server.forceShutdown();
      proxy?.close();
      machine.close();
      await store.close();
      throw err;
    }
    log.info('cosid serving', { listen: opts.listen, port, node: opts.nodeName, store: store.backend, proxy: proxy === undefined ? 'off (no impersonator certificate)' : 'on', nodes: directory.nodes.length });
    return new Cosid(opts, port, { store, registry, hub, server, health, closeRuntime: () => machine.close(), endLogs: (err) => machine.endAll(err), metrics, metricsServer, applier, directory, proxy, current, lists });
  }

  /** From now on ApplyConfiguration calls go to `applier` (the node's machine config controller). */
  serveConfig(applier: ConfigApplier): void {
    this.applier.current = applier;
  }

  /** Graceful stop: every watch ends with UNAVAILABLE, then calls finish or are cut after the grace period. */
  stop(): Promise<void> {
    this.stopping ??= new Promise<void>((resolve) => {
      this.health.setStatus('', 'NOT_SERVING');
      this.health.setStatus(STATE_SERVICE, 'NOT_SERVING');
      this.health.setStatus(MACHINE_SERVICE, 'NOT_SERVING');
      this.hub.endAll(new CosiError('unavailable', 'cosid is shutting down; reconnect and resume from your last bookmark'));
      this.endLogs(new CosiError('unavailable', 'cosid is shutting down; follow the log again once it is back'));
      // Proxied calls too: their callers reconnect (to this endpoint or another) and resume.
      this.proxy?.endAll(new CosiError('unavailable', 'cosid (the endpoint that proxied this call) is shutting down; reconnect and resume from your last bookmark'));
      this.directory.stop();
      // Streams to clients that stopped reading cannot finish: after the grace period they are cut.
      const done = () => {
        this.current.close();
        this.closeRuntime();
        this.proxy?.close();
        void Promise.allSettled([this.store.close(), this.closeMetrics()]).then(() => resolve());
      };
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        done();
      }, this.opts.shutdownGraceMs ?? 5000);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        done();
      });
    });
    return this.stopping;
  }
}

/** Refuses an impersonator certificate that cannot do its job: a client certificate with role os:impersonator. */
function checkImpersonator(identity: TlsMaterial): void {
  const cert = identity.certificate();
  const orgs = cert.subject.split('\n').filter((l) => l.startsWith('O=')).map((l) => l.slice(2));
  if (!orgs.includes(IMPERSONATOR_ROLE)) {
    throw new Error(`the impersonator certificate (${cert.subject.replace(/\n/g, ', ')}) does not carry the role ${IMPERSONATOR_ROLE} (O=${IMPERSONATOR_ROLE}): issue one with cosictl gen cert --roles ${IMPERSONATOR_ROLE}`);
  }
  if (cert.keyUsage !== undefined && !cert.keyUsage.includes('1.3.6.1.5.5.7.3.2')) {
    throw new Error(`the impersonator certificate (${cert.subject.replace(/\n/g, ', ')}) is not a client certificate (extended key usage clientAuth)`);
  }
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
function reflectionPackage(): protoLoader.PackageDefinition {
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
