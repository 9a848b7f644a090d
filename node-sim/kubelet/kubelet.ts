// KUBELET SIMULATOR: the one stand-in the project allows, because a real kubelet cannot run here.
// It speaks the kubelet's two HTTP interfaces: it polls a staticPodURL (HTTP config source, with ETag) and serves
// GET /pods/ over HTTPS with client-certificate authentication. It can be told to fail.
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import YAML from 'yaml';
import type { Json } from '../../shared/wire.js';
import type { DesiredPod } from './cri-runtime.js';
import { simulatedContainerId } from './sim-runtime.js';
import { obj, stringMap, type JsonObject } from './json.js';

export type FaultMode = 'stop' | 'hang' | 'garbage' | 'error' | 'wrong-kind' | 'oversized' | 'deep-status';

/** Where the pods run: a real container runtime (CriPodRuntime) or a simulated one (SimulatedRuntime). */
export interface PodRuntime {
  apply(desired: DesiredPod[]): Promise<void>;
  /** Looks at the containers (exits, restarts); the kubelet's relist. */
  sync?(): Promise<void>;
  /** The PodStatus of what really runs; undefined: the simulator's clock decides. */
  podStatus?(key: string): JsonObject | undefined;
  stopAll(): Promise<void>;
}

export interface KubeletSimulatorOptions {
  nodeName: string;
  /** The kubelet's staticPodURL. */
  staticPodURL: string;
  tls: { certPem: string; keyPem: string; clientCaPem: string };
  /** Loopback host:port for the HTTPS API (default 127.0.0.1:0). */
  listen?: string;
  /** Time per lifecycle step: Pending -> Running -> Ready (default 1000 ms). */
  stepMs?: number;
  /** How often the static pod URL is polled (the kubelet's httpCheckFrequency, default 20 s). */
  httpCheckFrequencyMs?: number;
  log?: (line: string) => void;
  /** Runs the pods on a container runtime; without one (or with a simulated one) the clock drives their lifecycle. */
  runtime?: PodRuntime;
  /** How often the runtime's containers are looked at (the kubelet's PLEG relists every 1 s; default 1000 ms). */
  runtimeSyncMs?: number;
  /** Serve, but do not poll the static pod URL until startPolling() (npm start: until cosid serves it). */
  holdPolling?: boolean;
}

interface SimPod {
  hash: string;
  source: JsonObject;
  startedAt: number;
  seenAt: string;
}

const SERVER_HEADER = 'kubelet-simulator';

export class KubeletSimulator {
  private running = new Map<string, SimPod>();
  /** The last manifest body fetched: like the kubelet, an identical body changes nothing. */
  private lastBody: string | undefined;
  private mode: FaultMode | undefined;
  private timer: NodeJS.Timeout | undefined;
  private runtimeTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private polling = false;
  /** The poll of the static pod URL in flight, if any. */
  private syncing: Promise<void> | undefined;
  /**
   * Polls may overlap (the scheduled one and pollNow()): each is numbered when it starts, and an answer is taken
   * only if no poll that started later has had its answer taken: a slow old answer never replaces a newer one.
   */
  private pollsStarted = 0;
  private newestTaken = 0;
  /** Runtime applies, one at a time, each with the pods as they are when it runs. */
  private applying: Promise<void> = Promise.resolve();
  private readonly sockets = new Set<Socket>();
  private readonly stepMs: number;
  private readonly log: (line: string) => void;
  /** Requests to /pods/ answered. */
  requests = 0;
  /** Fetches of the static pod URL. */
  polls = 0;

  private constructor(
    private readonly opts: KubeletSimulatorOptions,
    private server: Server,
    private readonly host: string,
    private readonly port: number,
  ) {
    this.stepMs = opts.stepMs ?? 1000;
    this.log = opts.log ?? (() => {});
  }

  static async start(opts: KubeletSimulatorOptions): Promise<KubeletSimulator> {
    const [host, portText] = splitHostPort(opts.listen ?? '127.0.0.1:0');
    if (host !== '127.0.0.1' && host !== '::1' && host !== 'localhost') throw new Error(`kubelet-simulator listens on loopback only, not ${host}`);
    let self: KubeletSimulator | undefined;
    const server = makeServer(opts, (req, res) => self?.handle(req, res));
    const port = await listen(server, host, Number(portText));
    self = new KubeletSimulator(opts, server, host, port);
    self.track(server);
    self.log(`kubelet-simulator: serving https://${host}:${port}/pods/ for node ${opts.nodeName}; static pods from ${opts.staticPodURL}`);
    if (opts.holdPolling !== true) self.startPolling();
    self.scheduleRuntimeSync();
    return self;
  }

  /** Starts polling the static pod URL (now, then every httpCheckFrequencyMs); once. */
  startPolling(): void {
    if (this.polling) return;
    this.polling = true;
    this.scheduleSync(0);
  }


  get url(): string {
    return `https://${this.host}:${this.port}/pods/`;
  }

  /** The pods as GET /pods/ reports them now. */
  pods(): JsonObject[] {
    return this.podList();
  }

  fail(mode: FaultMode): void {
    this.mode = mode;
    this.log(`kubelet-simulator: failing with ${mode}`);
    if (mode === 'stop') this.closeListener();
  }

  recover(): void {
    const wasStopped = this.mode === 'stop';
    this.mode = undefined;
    this.log('kubelet-simulator: recovered');
    if (wasStopped) {
      this.server = makeServer(this.opts, (req, res) => this.handle(req, res));
      this.track(this.server);
      void listen(this.server, this.host, this.port).catch((err: unknown) => this.log(`kubelet-simulator: cannot listen again: ${String(err)}`));
    }
  }

  /** Fetches the static pod URL now. */
  async pollNow(): Promise<void> {
    await this.sync();
  }

  /** Stops serving; on a real runtime, stops and removes every pod it started. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.runtimeTimer);
    this.closeListener();
    // A poll in flight must not start pods after they are removed: it applies nothing once stopped.
    await this.syncing;
    await this.applying;
    await this.opts.runtime?.stopAll();
  }

  /** Looks at the runtime's containers now (restarts, exits) instead of at the next relist. */
  async relist(): Promise<void> {
    await this.opts.runtime?.sync?.();
  }

  private scheduleRuntimeSync(): void {
    const runtime = this.opts.runtime;
    if (runtime?.sync === undefined || this.stopped) return;
    this.runtimeTimer = setTimeout(() => void runtime.sync?.().catch((err: unknown) => this.log(`kubelet-simulator: relist failed: ${String(err)}`)).finally(() => this.scheduleRuntimeSync()), this.opts.runtimeSyncMs ?? 1000);
    this.runtimeTimer.unref();
  }

  /** Queues an apply of the current pods to the runtime: applies never overlap, and each takes the newest pods. */
  private applyToRuntime(): Promise<void> {
    this.applying = this.applying.then(() => this.applyNow()).catch((err: unknown) => this.log(`kubelet-simulator: cannot apply pods to the runtime: ${String(err)}`));
    return this.applying;
  }

  private async applyNow(): Promise<void> {
    const runtime = this.opts.runtime;
    if (runtime === undefined || this.stopped) return;
    const desired: DesiredPod[] = [...this.running].map(([key, p]) => {
      const [namespace, name] = key.split('/') as [string, string];
      return { key, namespace, name, uid: p.hash, source: p.source, annotations: { ...stringMap(obj(obj(p.source['metadata'])['annotations'])), ...staticAnnotations(p) } };
    });
    await runtime.apply(desired).catch((err: unknown) => this.log(`kubelet-simulator: cannot apply pods to the runtime: ${String(err)}`));
  }

  private track(server: Server): void {
    server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  private closeListener(): void {
    this.server.close();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  private scheduleSync(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      const run = this.sync().finally(() => {
        if (this.syncing === run) this.syncing = undefined;
        this.scheduleSync(this.opts.httpCheckFrequencyMs ?? 20_000);
      });
      this.syncing = run;
    }, ms);
    this.timer.unref();
  }

  /** The kubelet's HTTP config source: fetch, and on a change replace the set of static pods. */
  private async sync(): Promise<void> {
    this.polls++;
    const poll = ++this.pollsStarted;
    let res: Response;
    let text: string;
    try {
      // The kubelet's HTTP source sends no conditional headers: it fetches the whole body and compares bytes.
      res = await fetch(this.opts.staticPodURL, { signal: AbortSignal.timeout(5000) });
      text = await res.text();
    } catch (err) {
      this.log(`kubelet-simulator: cannot fetch ${this.opts.staticPodURL}: ${String(err)}; keeping current pods`);
      return;
    }
    // From here to the change of `running` nothing waits: the check and the change are one step.
    if (poll < this.newestTaken) {
      this.log('kubelet-simulator: an older poll answered after a newer one; its manifest is dropped');
      return;
    }
    this.newestTaken = poll;
    if (res.status !== 200) {
      this.log(`kubelet-simulator: ${this.opts.staticPodURL} answered ${res.status}; keeping current pods`);
      return;
    }
    if (text.length === 0) {
      // The kubelet treats an empty body as an empty set: every pod from this source stops.
      this.log(`kubelet-simulator: zero-length data received from ${this.opts.staticPodURL}`);
      this.running = new Map();
      await this.applyToRuntime();
      return;
    }
    if (text === this.lastBody) return;
    this.lastBody = text;
    let doc: unknown;
    try {
      doc = YAML.parse(text);
    } catch (err) {
      this.log(`kubelet-simulator: cannot parse the static pod manifest: ${String(err)}`);
      return;
    }
    const d = obj(doc as Json);
    const items = d['kind'] === 'PodList' ? (Array.isArray(d['items']) ? d['items'] : []) : [d];
    // Like the kubelet's URL source, one invalid pod makes the whole manifest unusable: the pods already running
    // keep running and nothing new starts until the body changes.
    for (const item of items) {
      const problem = invalid(obj(item));
      if (problem !== undefined) {
        this.log(`kubelet-simulator: Could not process manifest file ${this.opts.staticPodURL} err: invalid pod: [${problem}]`);
        return;
      }
    }
    const next = new Map<string, SimPod>();
    for (const item of items) {
      const p = obj(item);
      const md = obj(p['metadata']);
      const ns = typeof md['namespace'] === 'string' && md['namespace'] !== '' ? md['namespace'] : 'default';
      const key = `${ns}/${String(md['name'])}-${this.opts.nodeName}`;
      const hash = createHash('sha256').update(JSON.stringify(p)).digest('hex').slice(0, 32);
      const before = this.running.get(key);
      // An unchanged pod keeps running; a changed one is restarted.
      next.set(key, before !== undefined && before.hash === hash ? before : { hash, source: p, startedAt: Date.now(), seenAt: new Date().toISOString() });
    }
    this.running = next;
    await this.applyToRuntime();
  }

  private podList(): JsonObject[] {
    const items: JsonObject[] = [];
    for (const [key, p] of this.running) items.push(this.render(key, p));
    items.push(this.apiPod());
    return items;
  }

  private render(key: string, p: SimPod): JsonObject {
    const [ns, name] = key.split('/') as [string, string];
    const real = this.opts.runtime?.podStatus?.(key);
    if (real !== undefined) {
      return {
        metadata: { name, namespace: ns, uid: p.hash, labels: obj(obj(p.source['metadata'])['labels']), annotations: staticAnnotations(p) },
        spec: { ...obj(p.source['spec']), nodeName: this.opts.nodeName },
        status: real,
      };
    }
    const step = Math.floor((Date.now() - p.startedAt) / this.stepMs);
    const phase = step === 0 ? 'Pending' : 'Running';
    const ready = step >= 2;
    const t = new Date(p.startedAt).toISOString();
    const spec = obj(p.source['spec']);
    const containers = (Array.isArray(spec['containers']) ? spec['containers'] : []).map(obj);
    const cond = (type: string, ok: boolean) => ({ type, status: ok ? 'True' : 'False', lastProbeTime: null, lastTransitionTime: t });
    return {
      metadata: {
        name,
        namespace: ns,
        uid: p.hash,
        labels: obj(obj(p.source['metadata'])['labels']),
        annotations: {
          'kubernetes.io/config.source': 'http',
          'kubernetes.io/config.hash': p.hash,
          'kubernetes.io/config.mirror': p.hash,
          'kubernetes.io/config.seen': p.seenAt,
        },
      },
      spec: { ...spec, nodeName: this.opts.nodeName },
      status: {
        phase,
        conditions: [cond('PodScheduled', true), cond('Initialized', step >= 1), cond('ContainersReady', ready), cond('Ready', ready)],
        hostIP: '127.0.0.1',
        hostIPs: [{ ip: '127.0.0.1' }],
        podIP: '127.0.0.1',
        podIPs: [{ ip: '127.0.0.1' }],
        startTime: t,
        containerStatuses: containers.map((c) => ({
          name: c['name'] ?? '',
          image: c['image'] ?? '',
          imageID: `sha256:${createHash('sha256').update(String(c['image'])).digest('hex')}`,
          ready,
          started: step >= 1,
          restartCount: 0,
          ...(step >= 1 ? { containerID: `containerd://${simulatedContainerId(p.hash, String(c['name'] ?? ''))}` } : {}),
          state: (step === 0 ? { waiting: { reason: 'ContainerCreating' } } : { running: { startedAt: t } }) as JsonObject,
        })),
        qosClass: 'BestEffort',
      },
    };
  }

  /** A pod from the API server (a DaemonSet's), which is not a static pod. */
  private apiPod(): JsonObject {
    return {
      metadata: { name: `kube-proxy-${this.opts.nodeName}`, namespace: 'kube-system', annotations: { 'kubernetes.io/config.source': 'api' } },
      spec: { nodeName: this.opts.nodeName, containers: [{ name: 'kube-proxy', image: 'registry.k8s.io/kube-proxy:v1.34.1' }] },
      status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] },
    };
  }

  private handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
    res.setHeader('Server', SERVER_HEADER);
    // The kubelet completes the handshake and then refuses an unauthenticated request (no certificate, or one the
    // cluster CA did not sign) with 401, anonymous access being off.
    if (!(req.socket as TLSSocket).authorized) {
      res.writeHead(401, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Unauthorized\n');
      return;
    }
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/pods/' && path !== '/pods') {
      res.writeHead(404).end('404 page not found\n');
      return;
    }
    if (req.method !== 'GET') {
      res.writeHead(405).end('405 method not allowed\n');
      return;
    }
    switch (this.mode) {
      case 'hang':
        return; // never answer
      case 'garbage':
        res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"kind":"PodList","items":[{"metad');
        return;
      case 'error':
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end('Internal Server Error: container runtime is down\n');
        return;
      case 'wrong-kind':
        res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"kind":"Status","apiVersion":"v1","status":"Failure"}');
        return;
      case 'oversized': {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        const chunk = Buffer.alloc(1 << 20, 0x20);
        let sent = 0;
        const pump = () => {
          while (sent < 64 && !res.destroyed) {
            sent++;
            if (!res.write(chunk)) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
        return;
      }
      case 'deep-status': {
        // A valid PodList whose statuses carry a value nested 40 levels deep (a broken or hostile kubelet).
        let deep: JsonObject = {};
        for (let i = 0; i < 40; i++) deep = { nested: deep };
        const items = this.podList().map((p) => ({ ...p, status: { ...obj(p['status']), deep } }));
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: {}, items }));
        return;
      }
      default:
        this.requests++;
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: {}, items: this.podList() }));
    }
  }
}

function makeServer(opts: KubeletSimulatorOptions, handler: (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => void): Server {
  // Like the kubelet: a client certificate is asked for and verified against the cluster CA; a request without a
  // valid one is answered 401 (see handle), not refused during the handshake.
  return createServer({ cert: opts.tls.certPem, key: opts.tls.keyPem, ca: opts.tls.clientCaPem, requestCert: true, rejectUnauthorized: false }, handler);
}

function listen(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function splitHostPort(s: string): [string, string] {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(s);
  if (m === null) throw new Error(`invalid address ${JSON.stringify(s)}: use host:port`);
  return [m[1] ?? '', m[2] ?? '0'];
}

/** The kubelet's basic checks; the first problem found, as it reports it. */
function invalid(p: JsonObject): string | undefined {
  if (p['apiVersion'] !== 'v1' || p['kind'] !== 'Pod') return 'kind: Invalid value: must be a v1 Pod';
  const md = obj(p['metadata']);
  if (typeof md['name'] !== 'string' || md['name'] === '') return 'metadata.name: Required value';
  const containers = obj(p['spec'])['containers'];
  if (!Array.isArray(containers) || containers.length === 0) return 'spec.containers: Required value';
  for (const [i, c] of containers.entries()) {
    const co = obj(c);
    if (typeof co['name'] !== 'string' || co['name'] === '') return `spec.containers[${i}].name: Required value`;
    if (typeof co['image'] !== 'string' || co['image'] === '') return `spec.containers[${i}].image: Required value`;
  }
  return undefined;
}

/** The annotations the kubelet puts on a static pod from its HTTP source. */
function staticAnnotations(p: SimPod): Record<string, string> {
  return { 'kubernetes.io/config.source': 'http', 'kubernetes.io/config.hash': p.hash, 'kubernetes.io/config.mirror': p.hash, 'kubernetes.io/config.seen': p.seenAt };
}
