// One simulated node of a fleet: cosid's State API (the real handlers, store, hub and encodings) on its own gRPC
// server and loopback port, over mTLS, without cosid's controllers, kubelet or runtime. Its resources are written
// by the simulator (seed and churn), as cosid's controllers would write them.
import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Logger } from '../../shared/log.js';
import type { Resource } from '../../shared/resource.js';
import type { Json, WireWatchRequest } from '../../shared/wire.js';
import { stateServiceDefinition, stateServiceHandlers } from '../../server/api/service.js';
import { MalformedRequest } from '../../server/api/requests.js';
import { MACHINE_CONFIG_OWNER } from '../../server/controllers/machine-config.js';
import { STATIC_POD_OWNER } from '../../server/controllers/static-pods.js';
import { installFramedWrites, tlsServersOf } from '../../server/grpc-internals.js';
import { bindServer, serverOptions } from '../../server/api/grpc-server.js';
import { STATUS_OWNER } from '../../server/kubelet/poller.js';
import {
  CONFIG_NAMESPACE,
  CONTAINERS_ANNOTATION,
  K8S_NAMESPACE,
  MACHINE_CONFIG_STATUS_ID,
  MACHINE_CONFIG_STATUS_TYPE,
  registerK8sTypes,
  STATIC_POD_STATUS_TYPE,
  STATIC_POD_TYPE,
} from '../../server/resources/k8s.js';
import { Registry } from '../../server/resources/registry.js';
import { MemoryStore } from '../../server/store/memory.js';
import type { ResourceInput } from '../../server/store/store.js';
import type { TlsMaterial } from '../../server/tls/material.js';
import { CurrentFrames } from '../../server/watch/current-frames.js';
import type { Frames } from '../../server/watch/frames.js';
import { WatchHub } from '../../server/watch/hub.js';
import { DEFAULT_WATCH_LIMITS, type WatchLimits } from '../../server/watch/limits.js';

/** On every StaticPodStatus the churn writes: when (ms since the epoch) it was written, to measure latency downstream. */
export const AT_ANNOTATION = 'sim.cosi-pods.dev/at';

/** What every node of a fleet shares: one encoding cache, one serving certificate (IP SAN 127.0.0.1) and client CA. */
export interface SimShared {
  readonly frames: Frames;
  readonly tls: TlsMaterial;
  readonly log: Logger;
  readonly watchLimits?: Partial<WatchLimits>;
}

export interface SimNodeOptions {
  name: string;
  /** StaticPods (and as many StaticPodStatuses) to seed. */
  pods: number;
  shared: SimShared;
  /** 0 (default): a free port, kept for later up()s. */
  port?: number;
}

export interface SimNodeStats {
  name: string;
  address: string;
  up: boolean;
  /** Watch calls received. */
  watches: number;
  /** Watch calls that asked for bootstrap contents: what a fleet follower makes when it lists the node again. */
  bootstraps: number;
  /** Watches the hub ended because they fell further behind than their backlog. */
  overruns: number;
  /** Resource versions written by the simulator (seed and churn). */
  writes: number;
  /** Each StaticPodStatus's last version written. */
  versions: Record<string, number>;
}


export class SimNode {
  readonly store: MemoryStore;
  readonly registry: Registry;
  readonly hub: WatchHub;
  private readonly current: CurrentFrames;
  private readonly handlers: grpc.UntypedServiceImplementation;
  private server: grpc.Server | undefined;
  /** The server's connections, so that down() can cut them as a node that died would. */
  private readonly sockets = new Set<Socket>();
  private boundPort: number;
  private readonly counts = { watches: 0, bootstraps: 0, overruns: 0, writes: 0 };
  private readonly versions = new Map<string, number>();
  /** The StaticPodStatus ids, for the churn's random pick. */
  readonly statusIds: string[] = [];
  private closed = false;

  private constructor(
    readonly name: string,
    private readonly shared: SimShared,
    port: number,
  ) {
    this.boundPort = port;
    // History as cosid's default (16384 changes, at least 75 s).
    this.store = new MemoryStore();
    this.registry = new Registry(this.store, (msg, fields) => shared.log.debug(msg, { node: name, ...fields }));
    this.current = new CurrentFrames(shared.frames);
    this.hub = new WatchHub(this.store.feed, shared.frames, { ...DEFAULT_WATCH_LIMITS, ...shared.watchLimits }, { overrun: () => void this.counts.overruns++ });
    const handlers = stateServiceHandlers({ feed: this.store.feed, registry: this.registry, frames: shared.frames, current: this.current, hub: this.hub, log: shared.log, nodeName: name });
    const watch = handlers['Watch'] as grpc.handleServerStreamingCall<WireWatchRequest | MalformedRequest, unknown>;
    // Counted before the real handler runs: a bootstrap asked for is a re-list, whatever becomes of the call.
    handlers['Watch'] = (call: grpc.ServerWritableStream<WireWatchRequest | MalformedRequest, unknown>) => {
      this.counts.watches++;
      if (!(call.request instanceof MalformedRequest) && call.request.options?.bootstrapContents === true) this.counts.bootstraps++;
      watch(call);
    };
    this.handlers = handlers;
  }

  /** A node with its resource definitions, seeded pods and config status, serving on its port. */
  static async start(opts: SimNodeOptions): Promise<SimNode> {
    installFramedWrites();
    const node = new SimNode(opts.name, opts.shared, opts.port ?? 0);
    const registry = node.registry;
    // The same definitions as cosid's, so that a fleet resolves the node's types as cosid's.
    registerK8sTypes(registry);
    await registry.published();
    // As cosid: the kinds served are kept encoded from the start.
    for (const def of registry.definitions()) node.current.track(node.store.log({ namespace: def.defaultNamespace, type: def.type }));
    await node.seed(opts.pods);
    await node.up();
    return node;
  }

  get port(): number {
    return this.boundPort;
  }

  get address(): string {
    return `127.0.0.1:${this.boundPort}`;
  }

  get isUp(): boolean {
    return this.server !== undefined;
  }

  /** Serves again on the node's port (the first time: on a free one, kept from then on). */
  async up(): Promise<void> {
    if (this.closed) throw new Error(`node ${this.name} is closed`);
    if (this.server !== undefined) return;
    const server = new grpc.Server(serverOptions());
    server.addService(stateServiceDefinition(), this.handlers);
    const creds = this.shared.tls.serverCredentials({ handshakeTimeoutMs: 10_000 });
    // As cosid binds: the TLS hooks (peer certificates, accepted encodings) included.
    this.boundPort = await bindServer(server, `127.0.0.1:${this.boundPort}`, creds, handshakesAtDebug(this.shared.log));
    for (const s of tlsServersOf(server)) {
      s.on('connection', (socket: Socket) => {
        this.sockets.add(socket);
        socket.once('close', () => this.sockets.delete(socket));
      });
    }
    this.server = server;
  }

  /**
   * Stops answering at once, as a node that died or dropped off the network: its connections are cut first, with no
   * GOAWAY (forceShutdown alone would send one), then the port is closed. The store and its history stay.
   */
  down(): void {
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    this.server?.forceShutdown();
    this.server = undefined;
  }

  /**
   * One StaticPodStatus changes: its first container restarted once more, and it carries the time of the write.
   * Synchronous (the memory store commits before its promise settles): a tick's batch costs no awaits.
   */
  bumpStatus(id: string, at = Date.now()): void {
    const pointer = { namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE, id };
    const before = this.store.log(pointer).current(id);
    if (before === undefined) return;
    const spec = asObject(before.spec);
    const statuses = Array.isArray(spec['containerStatuses']) ? spec['containerStatuses'] : [];
    const bumped = statuses.map((c, i) => {
      const o = asObject(c);
      return i === 0 ? { ...o, restartCount: (typeof o['restartCount'] === 'number' ? o['restartCount'] : 0) + 1 } : o;
    });
    const input: ResourceInput = {
      ...pointer,
      spec: { ...spec, containerStatuses: bumped },
      labels: before.metadata.labels,
      annotations: { ...before.metadata.annotations, [AT_ANNOTATION]: String(at) },
    };
    const log = this.store.log(pointer);
    this.store.update(input, STATUS_OWNER).catch((err: unknown) => this.shared.log.warn('simulated status not written', { node: this.name, id, error: err }));
    // The memory store commits within update(): the new version is in the log now, for stats() read right after.
    const after = log.current(id);
    if (after !== undefined && after !== before) this.wrote(after);
  }

  stats(): SimNodeStats {
    return { name: this.name, address: this.address, up: this.isUp, ...this.counts, versions: Object.fromEntries(this.versions) };
  }

  /** Ends everything for good: the server, the watches, the encodings. */
  async close(): Promise<void> {
    this.closed = true;
    this.down();
    this.hub.endAll();
    this.current.close();
    await this.store.close();
  }

  private wrote(r: Resource): void {
    this.counts.writes++;
    if (r.metadata.type === STATIC_POD_STATUS_TYPE) this.versions.set(r.metadata.id, r.metadata.version);
  }

  /** What cosid's controllers would have written for `pods` healthy static pods. */
  private async seed(pods: number): Promise<void> {
    const started = new Date().toISOString();
    for (let i = 0; i < pods; i++) {
      const podName = `app-${i}`;
      const pod = simPod(podName, i);
      this.wrote(await this.store.create({ namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE, id: `kube-system-${podName}`, spec: pod }, STATIC_POD_OWNER));
      // The kubelet names a static pod's mirror after its node; the poller keys its status by namespace/name.
      const mirror = `${podName}-${this.name}`;
      const id = `kube-system/${mirror}`;
      const status = simPodStatus(mirror, pod, started);
      const containerId = containerIdOf(status);
      const annotations: Record<string, string> = containerId === undefined ? {} : { [CONTAINERS_ANNOTATION]: `${id}:${podName}:${containerId.slice(0, 12)}` };
      this.wrote(await this.store.create({ namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE, id, spec: status, annotations }, STATUS_OWNER));
      this.statusIds.push(id);
    }
    const configStatus = { path: '/var/lib/cosi/machine-config.yaml', lastGoodAt: started, pods, invalidPods: 0, invalid: [], error: '' };
    this.wrote(await this.store.create({ namespace: CONFIG_NAMESPACE, type: MACHINE_CONFIG_STATUS_TYPE, id: MACHINE_CONFIG_STATUS_ID, spec: configStatus }, MACHINE_CONFIG_OWNER));
  }
}

type JsonObject = { [key: string]: Json };

function asObject(v: Json | undefined): JsonObject {
  return v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) ? v : {};
}

/** A static pod as a machine config gives it: one container with its image, resources and a probe. */
function simPod(name: string, i: number): JsonObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'kube-system', labels: { app: name, tier: 'node' } },
    spec: {
      priorityClassName: 'system-node-critical',
      containers: [
        {
          name,
          image: `registry.example.com/sim/${name}:v1.${i % 10}.0`,
          args: ['--port=8080', `--id=${i}`],
          ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }],
          resources: { requests: { cpu: '50m', memory: '64Mi' }, limits: { memory: '128Mi' } },
          livenessProbe: { httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 10 },
        },
      ],
    },
  };
}

/** The status the kubelet reports for a running, ready static pod (fields as node-sim/kubelet reports them). */
function simPodStatus(mirror: string, pod: JsonObject, at: string): JsonObject {
  const containers = asObject(pod['spec'])['containers'];
  const list = Array.isArray(containers) ? containers.map(asObject) : [];
  const hash = createHash('sha256').update(mirror).digest('hex');
  const cond = (type: string) => ({ type, status: 'True', lastProbeTime: null, lastTransitionTime: at });
  return {
    phase: 'Running',
    conditions: [cond('PodScheduled'), cond('Initialized'), cond('ContainersReady'), cond('Ready')],
    hostIP: '127.0.0.1',
    hostIPs: [{ ip: '127.0.0.1' }],
    podIP: '127.0.0.1',
    podIPs: [{ ip: '127.0.0.1' }],
    startTime: at,
    containerStatuses: list.map((c) => ({
      name: c['name'] ?? '',
      image: c['image'] ?? '',
      imageID: `sha256:${createHash('sha256').update(String(c['image'])).digest('hex')}`,
      containerID: `containerd://${hash}`,
      ready: true,
      started: true,
      restartCount: 0,
      state: { running: { startedAt: at } },
    })),
    qosClass: 'Burstable',
  };
}

function containerIdOf(status: JsonObject): string | undefined {
  const first = Array.isArray(status['containerStatuses']) ? asObject(status['containerStatuses'][0]) : {};
  const id = first['containerID'];
  return typeof id === 'string' ? id.replace(/^[a-z]+:\/\//, '') : undefined;
}

/**
 * The node's log with its refused TLS handshakes at debug: a simulated node sees them whenever a fleet replica is
 * killed in the middle of its handshakes (the bench and the failover tests do it), which is no news for its operator.
 */
function handshakesAtDebug(log: Logger): Logger {
  return { debug: (m, f) => log.debug(m, f), info: (m, f) => log.info(m, f), warn: (m, f) => log.debug(m, f), error: (m, f) => log.error(m, f), with: (f) => handshakesAtDebug(log.with(f)) };
}
