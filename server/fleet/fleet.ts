// cosi-fleet assembled (docs/design/fleet.md §1): the fleet store on etcd (every replica's reads and watches),
// the node list of record, membership and ownership on etcd leases, the followers of this replica's nodes and
// their fenced writer, and one gRPC server: the State API in fleet and per-node scopes, machine calls relayed to
// the node named, health and reflection.
import * as grpc from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { CosiError } from '../../shared/errors.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import { FramedStreamStats } from '../api/framed-stream.js';
import { bindServer, reflectionPackage, serverOptions } from '../api/grpc-server.js';
import { machineServiceDefinition } from '../api/machine-service.js';
import { checkImpersonator, NodeProxy } from '../api/node-proxy.js';
import { NodeRouter } from '../api/node-routing.js';
import { stateServiceDefinition, toStatus } from '../api/service.js';
import { installFramedWrites } from '../grpc-internals.js';
import { Metrics, serveMetrics } from '../metrics.js';
import { registerK8sTypes } from '../resources/k8s.js';
import { Registry } from '../resources/registry.js';
import { EtcdStore } from '../store/etcd.js';
import { etcdClient, type EtcdTls } from '../store/etcd/client.js';
import type { KindHistory } from '../store/store.js';
import { TlsMaterial } from '../tls/material.js';
import { CurrentFrames } from '../watch/current-frames.js';
import { Frames } from '../watch/frames.js';
import { WatchHub } from '../watch/hub.js';
import { DEFAULT_WATCH_LIMITS } from '../watch/limits.js';
import { registerFleetTypes, type FleetNodeSpec } from './fleet-node.js';
import { Followers } from './followers.js';
import { FLEET_NODE_KIND, FleetKeys, MIRRORED_KINDS } from './keys.js';
import { Membership } from './membership.js';
import { NodeList } from './node-list.js';
import { NodeViews } from './node-view.js';
import { Ownership } from './ownership.js';
import { FleetScopes } from './scopes.js';
import { FleetWriter } from './writer.js';
import { fleetMetrics } from './metrics.js';

export interface FleetOptions {
  /** host:port; port 0 picks a free one. */
  listen: string;
  /** The serving certificate and the CA of clients. */
  tls: TlsMaterial;
  /** The client certificate the fleet dials nodes with (roles os:reader and os:impersonator), and the nodes' CA. */
  follow: TlsMaterial;
  nodesFile: string;
  replica: string;
  etcd: { endpoints: readonly string[]; tls?: EtcdTls; prefix: string };
  leaseTtlSec: number;
  maxBootstraps: number;
  nodeRate: number;
  unreachableAfterMs: number;
  statusIntervalMs: number;
  metricsListen?: string;
  audit?: boolean;
  log?: Logger;
  /** The port of a node address given without one (cosid's default). */
  defaultNodePort?: number;
  shutdownGraceMs?: number;
  /** This build's version, in the replica's registration. */
  version?: string;
}

const STATE_SERVICE = 'cosi.resource.State';
const MACHINE_SERVICE = 'machine.MachineService';

export class Fleet {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly port: number,
    readonly store: EtcdStore,
    readonly followers: Followers,
    readonly metrics: Metrics,
    readonly metricsUrl: string | undefined,
    private readonly parts: {
      server: grpc.Server;
      health: HealthImplementation;
      scopes: FleetScopes;
      views: NodeViews;
      membership: Membership;
      ownership: Ownership;
      nodeList: NodeList;
      writer: FleetWriter;
      writerClient: Etcd3;
      proxy: NodeProxy;
      current: CurrentFrames;
      closeMetrics: () => Promise<void>;
      log: Logger;
      shutdownGraceMs: number;
    },
  ) {}

  static async start(opts: FleetOptions): Promise<Fleet> {
    const log = opts.log ?? silentLogger;
    installFramedWrites();
    checkImpersonator(opts.follow);
    const keys = new FleetKeys(opts.etcd.prefix);
    const store = await EtcdStore.connect({ endpoints: opts.etcd.endpoints, ...(opts.etcd.tls !== undefined ? { tls: opts.etcd.tls } : {}), prefix: keys.storePrefix, log });
    const client = store.etcd.client;
    const closers: (() => Promise<unknown> | void)[] = [() => store.close()];
    const undo = async () => {
      for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
    };
    try {
      const registry = new Registry(store, (msg, fields) => log.debug(msg, fields));
      registerK8sTypes(registry);
      registerFleetTypes(registry);
      await registry.published();
      const frames = new Frames(registry);
      const current = new CurrentFrames(frames);
      closers.push(() => current.close());
      const fleetNodes = await store.feed.history(FLEET_NODE_KIND);
      for (const kind of [...MIRRORED_KINDS, FLEET_NODE_KIND]) current.track(await store.feed.history(kind));
      const metrics = new Metrics();
      const lists = new FramedStreamStats();

      const nodeList = await NodeList.start({ client, keys, file: opts.nodesFile, replica: opts.replica, defaultPort: opts.defaultNodePort ?? 50000, log: log.with({ part: 'node-list' }) });
      closers.push(() => nodeList.close());
      const membership = await Membership.join(client, keys, opts.replica, opts.leaseTtlSec, { address: opts.listen, startedAt: Date.now(), version: opts.version ?? 'unknown' }, { log: log.with({ part: 'membership' }) });
      closers.push(() => membership.close());
      const ownership = new Ownership(client, keys, membership, { log: log.with({ part: 'ownership' }) });
      await ownership.ready;
      closers.push(() => ownership.close());
      // Its own client, without etcd3's resends: the writer checks a lost answer before it sends again.
      const writerClient = etcdClient(opts.etcd.endpoints, opts.etcd.tls, 5000, { resend: false });
      closers.push(() => writerClient.close());
      const writer = new FleetWriter(writerClient, keys, log.with({ part: 'writer' }), { endpoints: opts.etcd.endpoints });
      closers.push(() => writer.close());
      const identity = opts.follow.pem();
      const observeCommit: { current: (seconds: number) => void } = { current: () => {} };
      const followers = new Followers({
        replica: opts.replica,
        keys,
        client,
        owners: ownership,
        replicas: () => membership.replicas(),
        live: () => membership.live,
        nodes: () => nodeList.current(),
        known: () => fleetNodes.list().map((r) => r.metadata.id),
        follower: { keys, writer, identity, replica: opts.replica, unreachableAfterMs: opts.unreachableAfterMs, statusIntervalMs: opts.statusIntervalMs, nodeRate: opts.nodeRate, observeCommit: (s) => observeCommit.current(s) },
        maxBootstraps: opts.maxBootstraps,
        log: log.with({ part: 'followers' }),
      });
      closers.push(() => followers.stop(false));
      const reconcile = () => followers.reconcile();
      nodeList.on('changed', reconcile);
      membership.on('changed', reconcile);
      ownership.on('changed', reconcile);
      membership.on('lost', () => void followers.dropAll());
      // A node taken by another replica stops at once (its next write would be fenced anyway).
      ownership.on('lostOwnership', (node, token) => followers.lost(node, token));
      membership.on('rejoined', reconcile);

      // A node's view serves few watchers: small caches.
      const views = new NodeViews(store.feed, { hub: (feed) => new WatchHub(feed, frames, { ...DEFAULT_WATCH_LIMITS, eventCacheBytes: 256 << 10, sharedBatchBytes: 256 << 10 }, metrics), log });
      closers.push(() => views.close());
      const scopes = new FleetScopes({
        fleetFeed: store.feed,
        nodeScope: (node) => views.scope(node),
        nodeLag: (node) => lagHeader(fleetNodes, node),
        registry,
        frames,
        current,
        listStats: lists,
        metrics,
        log,
        replica: opts.replica,
        prefix: keys.prefix,
        audit: opts.audit === true,
      });
      closers.push(() => scopes.endAll(new CosiError('unavailable', 'the fleet did not start')));

      const proxy = new NodeProxy({ identity: opts.follow, log, metrics });
      closers.push(() => proxy.close());
      const router = new NodeRouter({ directory: nodeList, proxy, log, audit: opts.audit === true, answerHere: (method, request) => scopes.answerHere(method, request) });
      const server = new grpc.Server(serverOptions());
      const state = router.route(stateServiceDefinition(), scopes.handlers());
      server.addService(state.definition, state.handlers);
      const machine = router.route(machineServiceDefinition(), fleetMachineHandlers());
      server.addService(machine.definition, machine.handlers);
      const health = new HealthImplementation({ '': 'SERVING', [STATE_SERVICE]: 'SERVING', [MACHINE_SERVICE]: 'SERVING' });
      health.addToServer(server);
      new ReflectionService(reflectionPackage()).addToServer(server);
      closers.push(() => server.forceShutdown());
      const port = await bindServer(server, opts.listen, opts.tls.serverCredentials({ handshakeTimeoutMs: 10_000 }), log);
      const metricsServer = opts.metricsListen !== undefined ? await serveMetrics(opts.metricsListen, metrics, log) : undefined;
      observeCommit.current = fleetMetrics(metrics, { followers: () => followers, writer, replicas: () => membership.replicas().length });

      // Claims start once the replica set is known (the first read of it), so a joining replica does not take
      // nodes it would give back at once.
      await membership.ready;
      followers.reconcile();
      log.info('cosi-fleet serving', { listen: opts.listen, port, replica: opts.replica, prefix: keys.prefix, nodes: nodeList.current().size, replicas: membership.replicas().length });
      return new Fleet(port, store, followers, metrics, metricsServer?.url, {
        server,
        health,
        scopes,
        views,
        membership,
        ownership,
        nodeList,
        writer,
        writerClient,
        proxy,
        current,
        closeMetrics: () => metricsServer?.close() ?? Promise.resolve(),
        log,
        shutdownGraceMs: opts.shutdownGraceMs ?? 5000,
      });
    } catch (err) {
      await undo();
      throw err;
    }
  }

  /**
   * Graceful stop: followers stop and their owner keys are released (another replica takes the nodes at once,
   * resuming from the bookmarks committed), watches end with UNAVAILABLE (their clients resume on another replica).
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const p = this.parts;
      for (const s of ['', STATE_SERVICE, MACHINE_SERVICE]) p.health.setStatus(s, 'NOT_SERVING');
      // Pending writes get the grace period to commit (a clean handover); past it (etcd gone, say) they are refused.
      const cut = setTimeout(() => p.writer.close(), p.shutdownGraceMs);
      await this.followers.stop(true);
      clearTimeout(cut);
      p.scopes.endAll(new CosiError('unavailable', 'this fleet replica is shutting down; reconnect (to any replica) and resume from your last bookmark'));
      p.views.close();
      p.proxy.endAll(new CosiError('unavailable', 'this fleet replica is shutting down'));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          p.server.forceShutdown();
          resolve();
        }, p.shutdownGraceMs);
        p.server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      await p.writer.close();
      p.writerClient.close();
      await p.ownership.close();
      await p.membership.close();
      await p.nodeList.close();
      p.current.close();
      p.proxy.close();
      await Promise.allSettled([this.store.close(), p.closeMetrics()]);
    })();
    return this.stopping;
  }
}

/** The node-state header of a node's view: set while the fleet does not follow the node live. */
function lagHeader(fleetNodes: KindHistory, node: string): string | undefined {
  const r = fleetNodes.current(node);
  if (r === undefined) return 'Unknown; the fleet has not followed this node yet';
  const spec = r.spec as unknown as Partial<FleetNodeSpec>;
  if (spec.state === 'Following' || spec.state === 'Throttled') return undefined;
  return spec.state === 'Unreachable' ? `Unreachable; since=${spec.unreachableSince ?? ''}` : `${spec.state ?? 'Unknown'}`;
}

/** Without metadata `node` there is no node to ask: the fleet has no containers or logs of its own. */
function fleetMachineHandlers(): grpc.UntypedServiceImplementation {
  const refusal = () => toStatus(new CosiError('failed-precondition', 'this is a fleet endpoint: name a node (metadata node, cosictl -n NODE)'));
  return {
    Containers: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback(refusal()),
    ApplyConfiguration: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback(refusal()),
    Logs: (call: grpc.ServerWritableStream<unknown, unknown>) => call.emit('error', refusal()),
  };
}
