// cosid assembled: store -> registry -> controllers -> gRPC API over mTLS, with health and reflection.
import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { CosiError } from '../shared/errors.js';
import { silentLogger, type Logger } from '../shared/log.js';
import { Frames } from './watch/frames.js';
import { CurrentFrames } from './watch/current-frames.js';
import { FramedStreamStats } from './api/framed-stream.js';
import { DEFAULT_RUNTIME, machineServiceDefinition, machineService, type RuntimeOptions } from './api/machine-service.js';
import type { ApplierRef } from './api/apply-config.js';
import type { ConfigApplier } from './config/apply.js';
import { stateServiceDefinition, stateServiceHandlers } from './api/service.js';
import { NodeDirectory } from './api/node-directory.js';
import { checkImpersonator, NodeProxy } from './api/node-proxy.js';
import { NodeRouter } from './api/node-routing.js';
import { installFramedWrites } from './grpc-internals.js';
import { bindServer, reflectionPackage, serverOptions } from './api/grpc-server.js';
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

    const server = new grpc.Server(serverOptions(opts.maxConnectionAgeMs));
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
      port = await bindServer(server, opts.listen, creds, log);
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


