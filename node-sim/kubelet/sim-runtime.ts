// KUBELET SIMULATOR, simulated-runtime mode (for `npm start` where containerd cannot run: not root, or not
// installed). Nothing runs: the pods' containers are answered over a CRI socket of the simulator's own (read-only:
// Version, ListPodSandbox, PodSandboxStatus, ListContainers, ContainerStatus), and each "running" container writes a
// line a second to a log file in the kubelet's real layout, so `containers -k` and `logs -k` work as they would.
// Tests use a real containerd instead (node-sim/containerd.ts).
import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { appendFile, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runtimeServiceConstructor } from '../../server/runtime/cri.js';
import type { DesiredPod } from './cri-runtime.js';
import { obj } from './json.js';


export const SIMULATED_PAUSE_IMAGE = 'registry.k8s.io/pause:3.10';

/** The container ID the simulator reports for a container of a pod (the same in /pods/ and over CRI). */
export function simulatedContainerId(podUid: string, container: string): string {
  return createHash('sha256').update(`${podUid}/${container}`).digest('hex');
}

interface SimulatedPod {
  desired: DesiredPod;
  sandboxId: string;
  createdAt: bigint;
  logDir: string;
  containers: { name: string; image: string; id: string; ticks: number }[];
}

export class SimulatedRuntime {
  private readonly pods = new Map<string, SimulatedPod>();
  private readonly server = new grpc.Server();
  private timer: NodeJS.Timeout | undefined;
  /** The log lines being written, if any; stopAll waits for them before removing the logs. */
  private ticking: Promise<void> | undefined;
  private stopped = false;

  private constructor(
    private readonly podLogsDir: string,
    private readonly socket: string,
    readonly endpoint: string,
  ) {}

  /** Serves the CRI on `socket` (a path) and writes logs under `podLogsDir`. */
  static async start(opts: { socket: string; podLogsDir: string }): Promise<SimulatedRuntime> {
    await rm(opts.socket, { force: true });
    const self = new SimulatedRuntime(opts.podLogsDir, opts.socket, `unix://${opts.socket}`);
    self.server.addService(runtimeServiceConstructor().service, self.handlers());
    await new Promise<void>((resolve, reject) => self.server.bindAsync(self.endpoint, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
    self.timer = setInterval(() => {
      self.ticking ??= self.tick().finally(() => (self.ticking = undefined));
    }, 1000);
    self.timer.unref();
    return self;
  }

  apply(desired: DesiredPod[]): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const want = new Set(desired.map((d) => d.key));
    const work: Promise<unknown>[] = [];
    for (const [key, pod] of this.pods) {
      if (!want.has(key) || !desired.some((d) => d.key === key && d.uid === pod.desired.uid)) {
        this.pods.delete(key);
        work.push(rm(pod.logDir, { recursive: true, force: true }));
      }
    }
    for (const d of desired) {
      if (this.pods.has(d.key)) continue;
      const spec = obj(d.source['spec']);
      const containers = (Array.isArray(spec['containers']) ? spec['containers'] : []).map((c) => {
        const name = String(obj(c)['name'] ?? '');
        return { name, image: String(obj(c)['image'] ?? ''), id: simulatedContainerId(d.uid, name), ticks: 0 };
      });
      const pod: SimulatedPod = { desired: d, sandboxId: simulatedContainerId(d.uid, ''), createdAt: BigInt(Date.now()) * 1_000_000n, logDir: join(this.podLogsDir, `${d.namespace}_${d.name}_${d.uid}`), containers };
      this.pods.set(d.key, pod);
      work.push(this.writeLines(pod, () => 'simulated container: nothing runs (run `npm start` as root with containerd installed to run it for real)'));
    }
    return Promise.all(work).then(() => undefined);
  }

  /** Removes every pod's logs, stops serving the CRI and removes its socket. */
  async stopAll(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.ticking;
    await Promise.all([...this.pods.values()].map((p) => rm(p.logDir, { recursive: true, force: true })));
    this.pods.clear();
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    await rm(this.socket, { force: true });
  }

  private async tick(): Promise<void> {
    for (const pod of this.pods.values()) await this.writeLines(pod, (c) => `${c.name}: tick ${++c.ticks}`).catch(() => {});
  }

  private async writeLines(pod: SimulatedPod, text: (c: SimulatedPod['containers'][number]) => string): Promise<void> {
    for (const c of pod.containers) {
      const dir = join(pod.logDir, c.name);
      await mkdir(dir, { recursive: true });
      await appendFile(join(dir, '0.log'), `${new Date().toISOString()} stdout F ${text(c)}\n`);
    }
  }

  private handlers(): grpc.UntypedServiceImplementation {
    const unary = <Req, Res>(fn: (req: Req) => Res) => (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
      try {
        cb(null, fn(call.request));
      } catch (err) {
        cb({ code: grpc.status.NOT_FOUND, details: err instanceof Error ? err.message : String(err) });
      }
    };
    const sandboxOf = (id: string) => {
      for (const p of this.pods.values()) if (p.sandboxId === id) return p;
      throw new Error(`an error occurred when try to find sandbox ${JSON.stringify(id)}: not found`);
    };
    const containerOf = (id: string) => {
      for (const p of this.pods.values()) for (const c of p.containers) if (c.id === id) return { p, c };
      throw new Error(`an error occurred when try to find container ${JSON.stringify(id)}: not found`);
    };
    const meta = (p: SimulatedPod) => ({ name: p.desired.name, uid: p.desired.uid, namespace: p.desired.namespace, attempt: 0 });
    const sandbox = (p: SimulatedPod) => ({ id: p.sandboxId, metadata: meta(p), state: 'SANDBOX_READY', createdAt: String(p.createdAt), labels: {}, annotations: p.desired.annotations });
    const container = (p: SimulatedPod, c: SimulatedPod['containers'][number]) => ({
      id: c.id,
      podSandboxId: p.sandboxId,
      metadata: { name: c.name, attempt: 0 },
      image: { image: c.image },
      imageRef: c.image,
      state: 'CONTAINER_RUNNING',
      createdAt: String(p.createdAt),
      labels: {},
      annotations: {},
    });
    return {
      Version: unary(() => ({ version: '0.1.0', runtimeName: 'kubelet-simulator', runtimeVersion: 'simulated', runtimeApiVersion: 'v1' })),
      ListPodSandbox: unary(() => ({ items: [...this.pods.values()].map(sandbox) })),
      PodSandboxStatus: unary((req: { podSandboxId: string }) => {
        const p = sandboxOf(req.podSandboxId);
        return { status: sandbox(p), info: { info: JSON.stringify({ pid: 0, image: SIMULATED_PAUSE_IMAGE }) } };
      }),
      ListContainers: unary(() => ({ containers: [...this.pods.values()].flatMap((p) => p.containers.map((c) => container(p, c))) })),
      ContainerStatus: unary((req: { containerId: string }) => {
        const { p, c } = containerOf(req.containerId);
        const status = { ...container(p, c), startedAt: String(p.createdAt), finishedAt: '0', exitCode: 0, reason: '', message: '', logPath: join(p.logDir, c.name, '0.log') };
        return { status, info: { info: JSON.stringify({ pid: 0 }) } };
      }),
    };
  }
}
