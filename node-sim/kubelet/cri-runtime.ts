// KUBELET SIMULATOR, real-runtime mode: runs the static pods on a real container runtime through CRI, the way the
// kubelet does (sandbox on the node's network, the kubelet's log layout, restarts per restartPolicy with a back-off,
// rotation by rename + ReopenContainerLog), and reports what really runs as the kubelet's PodStatus.
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { ContainerStatus } from '../../server/runtime/cri.js';
import { CriClient, type ContainerConfig, type PodSandboxConfig } from './cri-client.js';
import { arr, obj, stringMap, type JsonObject } from './json.js';


export interface CriRuntimeOptions {
  endpoint: string;
  /** Where the runtime writes the pods' logs (the kubelet's /var/log/pods). */
  podLogsDir: string;
  /** First restart delay after a container exits, doubling up to 5 min (the kubelet: 10 s). */
  restartBackoffMs?: number;
  /** A container's log is rotated past this size (the kubelet's containerLogMaxSize: 10 MiB). */
  maxLogBytes?: number;
  /** Rotated files kept per container (containerLogMaxFiles: 5, counting the live one). */
  maxLogFiles?: number;
  log?: (line: string) => void;
  /** The sandboxes' cgroup parent (a test's containerd keeps all its cgroups under one tree this way). */
  cgroupParent?: string;
}

/** One desired pod, as the simulator's config source produced it. */
export interface DesiredPod {
  /** `<ns>/<name>-<node>` */
  key: string;
  namespace: string;
  name: string;
  uid: string;
  source: JsonObject;
  annotations: Record<string, string>;
}

interface RunningContainer {
  name: string;
  spec: JsonObject;
  /** The current instance (undefined while waiting to be created again). */
  id: string | undefined;
  restartCount: number;
  /** The last instance that ended, reported as lastState. */
  last: ContainerStatus | undefined;
  status: ContainerStatus | undefined;
  waiting: { reason: string; message?: string } | undefined;
  nextStartAt: number;
  backoffMs: number;
}

interface RunningPod {
  desired: DesiredPod;
  sandboxId: string | undefined;
  sandboxConfig: PodSandboxConfig;
  logDir: string;
  containers: RunningContainer[];
  startedAt: string;
  error: string | undefined;
}

const MAX_BACKOFF_MS = 300_000;

export class CriPodRuntime {
  readonly cri: CriClient;
  private readonly pods = new Map<string, RunningPod>();
  /** One reconcile at a time; a request made during one runs right after it. */
  private chain: Promise<void> = Promise.resolve();
  private readonly log: (line: string) => void;

  constructor(private readonly opts: CriRuntimeOptions) {
    this.cri = new CriClient(opts.endpoint);
    this.log = opts.log ?? (() => {});
  }

  /** Makes what runs match `desired`: new pods start, changed ones restart, missing ones stop and go. */
  apply(desired: DesiredPod[]): Promise<void> {
    return this.serialize(async () => {
      const want = new Map(desired.map((d) => [d.key, d]));
      for (const [key, pod] of this.pods) {
        const d = want.get(key);
        if (d === undefined || d.uid !== pod.desired.uid) await this.removePod(key, pod);
      }
      for (const d of desired) if (!this.pods.has(d.key)) await this.startPod(d);
    });
  }

  /** Looks at every container: records exits, restarts per restartPolicy when the back-off allows, rotates logs. */
  sync(): Promise<void> {
    return this.serialize(async () => {
      for (const pod of this.pods.values()) await this.syncPod(pod);
    });
  }

  /** Rotates a container's live log the kubelet's way: rename it aside, then ask the runtime to reopen it. */
  rotate(key: string, containerName: string): Promise<string> {
    return this.serialize(async () => {
      const pod = this.pods.get(key);
      const c = pod?.containers.find((x) => x.name === containerName);
      if (pod === undefined || c?.id === undefined) throw new Error(`no running container ${containerName} in ${key}`);
      return this.rotateContainer(pod, c);
    });
  }

  /** The kubelet's PodStatus for a pod (undefined when it is not known). */
  podStatus(key: string): JsonObject | undefined {
    const pod = this.pods.get(key);
    return pod === undefined ? undefined : renderStatus(pod);
  }

  /** Stops and removes everything this runtime started, log directories included. */
  stopAll(): Promise<void> {
    return this.serialize(async () => {
      for (const [key, pod] of this.pods) await this.removePod(key, pod);
    }).finally(() => this.cri.close());
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async startPod(d: DesiredPod): Promise<void> {
    const logDir = join(this.opts.podLogsDir, `${d.namespace}_${d.name}_${d.uid}`);
    const labels = { ...stringMap(obj(obj(d.source['metadata'])['labels'])), 'io.kubernetes.pod.name': d.name, 'io.kubernetes.pod.namespace': d.namespace, 'io.kubernetes.pod.uid': d.uid };
    // No CNI here: the sandbox shares the node's network, as a hostNetwork pod does.
    const nsOptions = { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } as const;
    const sandboxConfig: PodSandboxConfig = {
      metadata: { name: d.name, uid: d.uid, namespace: d.namespace, attempt: 0 },
      logDirectory: logDir,
      labels,
      annotations: d.annotations,
      linux: { ...(this.opts.cgroupParent !== undefined ? { cgroupParent: this.opts.cgroupParent } : {}), securityContext: { namespaceOptions: nsOptions } },
    };
    const spec = obj(d.source['spec']);
    const containers = arr(spec['containers']).map(
      (c): RunningContainer => ({ name: String(obj(c)['name']), spec: obj(c), id: undefined, restartCount: 0, last: undefined, status: undefined, waiting: { reason: 'ContainerCreating' }, nextStartAt: 0, backoffMs: this.opts.restartBackoffMs ?? 10_000 }),
    );
    const pod: RunningPod = { desired: d, sandboxId: undefined, sandboxConfig, logDir, containers, startedAt: new Date().toISOString(), error: undefined };
    this.pods.set(d.key, pod);
    try {
      await mkdir(logDir, { recursive: true });
      pod.sandboxId = await this.cri.runPodSandbox(sandboxConfig);
      this.log(`kubelet-simulator: sandbox ${pod.sandboxId.slice(0, 12)} for ${d.key}`);
      for (const c of containers) await this.startContainer(pod, c);
    } catch (err) {
      pod.error = err instanceof Error ? err.message : String(err);
      this.log(`kubelet-simulator: cannot start ${d.key}: ${pod.error}`);
    }
  }

  private async startContainer(pod: RunningPod, c: RunningContainer): Promise<void> {
    if (pod.sandboxId === undefined) return;
    const s = c.spec;
    const config: ContainerConfig = {
      metadata: { name: c.name, attempt: c.restartCount },
      image: { image: String(s['image'] ?? '') },
      command: arr(s['command']).map(String),
      args: arr(s['args']).map(String),
      workingDir: typeof s['workingDir'] === 'string' ? s['workingDir'] : '',
      envs: arr(s['env']).flatMap((e) => (typeof obj(e)['value'] === 'string' ? [{ key: String(obj(e)['name']), value: String(obj(e)['value']) }] : [])),
      labels: { 'io.kubernetes.container.name': c.name, 'io.kubernetes.pod.name': pod.desired.name, 'io.kubernetes.pod.namespace': pod.desired.namespace, 'io.kubernetes.pod.uid': pod.desired.uid },
      annotations: { 'io.kubernetes.container.restartCount': String(c.restartCount) },
      logPath: join(c.name, `${c.restartCount}.log`),
      linux: { securityContext: { namespaceOptions: { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } } },
    };
    try {
      await mkdir(join(pod.logDir, c.name), { recursive: true });
      const id = await this.cri.createContainer(pod.sandboxId, config, pod.sandboxConfig);
      c.id = id;
      await this.cri.startContainer(id);
      c.waiting = undefined;
      c.status = (await this.cri.containerStatus(id)).status;
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      // The kubelet's reasons: an image that is not there cannot be pulled (no registry is reachable here).
      c.waiting = { reason: /image|not found/i.test(message) && c.id === undefined ? 'ErrImagePull' : 'CreateContainerError', message };
      c.nextStartAt = Date.now() + c.backoffMs;
      this.log(`kubelet-simulator: cannot start container ${c.name} of ${pod.desired.key}: ${message}`);
    }
  }

  private async syncPod(pod: RunningPod): Promise<void> {
    if (pod.sandboxId === undefined) return;
    const policy = String(obj(pod.desired.source['spec'])['restartPolicy'] ?? 'Always');
    for (const c of pod.containers) {
      if (c.id !== undefined) {
        try {
          c.status = (await this.cri.containerStatus(c.id)).status;
        } catch (err) {
          this.log(`kubelet-simulator: status of ${c.name} in ${pod.desired.key}: ${err instanceof Error ? err.message : String(err)}`);
          continue;
        }
        if (c.status.state === 'CONTAINER_RUNNING') {
          await this.rotateIfLarge(pod, c);
          continue;
        }
        if (c.status.state !== 'CONTAINER_EXITED') continue;
        const restart = policy === 'Always' || (policy === 'OnFailure' && c.status.exitCode !== 0);
        if (!restart) continue;
        // Exited: keep it as lastState (its log stays for `logs ...:<id>`), remove the one before, and back off.
        if (c.last !== undefined) await this.cri.removeContainer(c.last.id).catch(() => {});
        c.last = c.status;
        c.id = undefined;
        c.status = undefined;
        c.restartCount++;
        c.waiting = { reason: 'CrashLoopBackOff', message: `back-off ${Math.round(c.backoffMs / 1000)}s restarting failed container=${c.name}` };
        c.nextStartAt = Date.now() + c.backoffMs;
        c.backoffMs = Math.min(c.backoffMs * 2, MAX_BACKOFF_MS);
      }
      if (c.id === undefined && Date.now() >= c.nextStartAt) await this.startContainer(pod, c);
    }
  }

  private async rotateIfLarge(pod: RunningPod, c: RunningContainer): Promise<void> {
    const max = this.opts.maxLogBytes ?? 10 << 20;
    const live = c.status?.logPath;
    if (live === undefined || live === '') return;
    const size = await stat(live).then((s) => s.size, () => 0);
    if (size > max) await this.rotateContainer(pod, c);
  }

  private async rotateContainer(pod: RunningPod, c: RunningContainer): Promise<string> {
    const live = c.status?.logPath ?? join(pod.logDir, c.name, `${c.restartCount}.log`);
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').replace(/\..*$/, '');
    let rotated = `${live}.${stamp}`;
    for (let i = 1; await stat(rotated).then(() => true, () => false); i++) rotated = `${live}.${stamp}.${i}`;
    await rename(live, rotated);
    if (c.id !== undefined) await this.cri.reopenContainerLog(c.id);
    this.log(`kubelet-simulator: rotated ${live}`);
    // Like the kubelet, keep at most maxLogFiles per container, the live one included: the oldest rotated go.
    const keep = Math.max(1, (this.opts.maxLogFiles ?? 5) - 1);
    const base = basename(live);
    const old = (await readdir(dirname(live))).filter((f) => f.startsWith(`${base}.`)).sort();
    for (const f of old.slice(0, Math.max(0, old.length - keep))) await rm(join(dirname(live), f), { force: true });
    return rotated;
  }

  private async removePod(key: string, pod: RunningPod): Promise<void> {
    const grace = Number(obj(pod.desired.source['spec'])['terminationGracePeriodSeconds'] ?? 30);
    for (const c of pod.containers) {
      for (const id of [c.id, c.last?.id]) {
        if (id === undefined) continue;
        await this.cri.stopContainer(id, Number.isFinite(grace) ? grace : 30).catch(() => {});
        await this.cri.removeContainer(id).catch((err: unknown) => this.log(`kubelet-simulator: cannot remove container ${id.slice(0, 12)}: ${String(err)}`));
      }
    }
    if (pod.sandboxId !== undefined) {
      await this.cri.stopPodSandbox(pod.sandboxId).catch((err: unknown) => this.log(`kubelet-simulator: cannot stop sandbox: ${String(err)}`));
      await this.cri.removePodSandbox(pod.sandboxId).catch((err: unknown) => this.log(`kubelet-simulator: cannot remove sandbox: ${String(err)}`));
    }
    // The kubelet removes a deleted pod's logs.
    await rm(pod.logDir, { recursive: true, force: true });
    this.pods.delete(key);
    this.log(`kubelet-simulator: removed ${key}`);
  }
}

function renderStatus(pod: RunningPod): JsonObject {
  const statuses = pod.containers.map((c) => containerStatus(c));
  const running = pod.containers.every((c) => c.status?.state === 'CONTAINER_RUNNING');
  const policy = String(obj(pod.desired.source['spec'])['restartPolicy'] ?? 'Always');
  const allExited = pod.containers.every((c) => c.status?.state === 'CONTAINER_EXITED');
  const failed = pod.containers.some((c) => c.status?.state === 'CONTAINER_EXITED' && c.status.exitCode !== 0);
  const phase = pod.sandboxId === undefined || pod.error !== undefined ? 'Pending' : allExited && policy !== 'Always' ? (failed ? 'Failed' : 'Succeeded') : pod.containers.some((c) => c.status !== undefined) ? 'Running' : 'Pending';
  const t = pod.startedAt;
  const cond = (type: string, ok: boolean) => ({ type, status: ok ? 'True' : 'False', lastProbeTime: null, lastTransitionTime: t });
  return {
    phase,
    conditions: [cond('PodScheduled', true), cond('Initialized', true), cond('ContainersReady', running), cond('Ready', running)],
    ...(pod.error !== undefined ? { message: pod.error, reason: 'SandboxError' } : {}),
    hostIP: '127.0.0.1',
    hostIPs: [{ ip: '127.0.0.1' }],
    podIP: '127.0.0.1',
    podIPs: [{ ip: '127.0.0.1' }],
    startTime: t,
    containerStatuses: statuses,
    qosClass: 'BestEffort',
  };
}

function containerStatus(c: RunningContainer): JsonObject {
  const s = c.status;
  const state: JsonObject =
    c.waiting !== undefined || s === undefined
      ? { waiting: { reason: c.waiting?.reason ?? 'ContainerCreating', ...(c.waiting?.message !== undefined ? { message: c.waiting.message } : {}) } }
      : s.state === 'CONTAINER_RUNNING'
        ? { running: { startedAt: nanosToIso(s.startedAt) } }
        : s.state === 'CONTAINER_EXITED'
          ? { terminated: terminated(s) }
          : { waiting: { reason: 'ContainerCreating' } };
  return {
    name: c.name,
    image: String(c.spec['image'] ?? ''),
    imageID: s?.imageRef ?? '',
    ...(s !== undefined ? { containerID: `containerd://${s.id}` } : {}),
    ready: s?.state === 'CONTAINER_RUNNING',
    started: s?.state === 'CONTAINER_RUNNING',
    restartCount: c.restartCount,
    state,
    ...(c.last !== undefined ? { lastState: { terminated: terminated(c.last) } } : {}),
  };
}

function terminated(s: ContainerStatus): JsonObject {
  return {
    exitCode: s.exitCode,
    reason: s.reason !== '' ? s.reason : s.exitCode === 0 ? 'Completed' : 'Error',
    startedAt: nanosToIso(s.startedAt),
    finishedAt: nanosToIso(s.finishedAt),
    containerID: `containerd://${s.id}`,
  };
}

function nanosToIso(nanos: string): string | null {
  const n = BigInt(nanos || '0');
  return n === 0n ? null : new Date(Number(n / 1_000_000n)).toISOString().replace(/\.\d{3}Z$/, 'Z');
}
