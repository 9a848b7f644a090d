// What the container runtime runs, seen the way talosctl shows it: pod sandboxes (`<ns>/<pod>`) with their
// containers (`<ns>/<pod>:<container>:<short id>`), and the log file behind a container ID.
import { CosiError } from '../../shared/errors.js';
import type { Container, CriReader, PodSandbox } from './cri.js';
import { confineLog, type ConfinedLog } from './log-confinement.js';

/** The kubelet's annotations on a sandbox: where the pod came from. */
const CONFIG_SOURCE = 'kubernetes.io/config.source';
const STATIC_SOURCES = new Set(['file', 'http']);
const SHORT_ID = 12;
const STATUS_CONCURRENCY = 16;
/** Running containers whose details are remembered between listings, at most. */
const MAX_KNOWN = 4096;
/** The kubelet's labels on a sandbox: its pod's namespace and name. */
const POD_NAMESPACE_LABEL = 'io.kubernetes.pod.namespace';
const POD_NAME_LABEL = 'io.kubernetes.pod.name';

export interface ContainerView {
  /** `<ns>/<pod>:<container>:<short id>` */
  id: string;
  name: string;
  containerId: string;
  image: string;
  pid: number;
  state: string;
  restartCount: number;
  createdAt: bigint;
}

export interface PodView {
  /** `<ns>/<pod>` */
  id: string;
  namespace: string;
  name: string;
  uid: string;
  sandboxId: string;
  image: string;
  pid: number;
  state: string;
  staticPod: boolean;
  createdAt: bigint;
  containers: ContainerView[];
}

interface SandboxDetails {
  pid: number;
  image: string;
}

interface ContainerDetails {
  pid: number;
  logPath: string;
}

/**
 * The container runtime as cosid shows it, read through one read-only CRI connection that the inspector owns
 * (close() closes it).
 *
 * It remembers what a verbose status said of a ready sandbox (PID, image) and of a running container (PID, log
 * path): none of it changes while it runs (a restart is a new ID; the log path is fixed at creation), so each is
 * asked once, not on every listing. A verbose status makes containerd marshal the whole runtime spec: 50 pods took
 * 100 of them, 160-390 ms on 2 cores (bench, 2026-11-30).
 */
export class RuntimeInspector {
  private readonly sandboxes = new Map<string, SandboxDetails>();
  private readonly containers = new Map<string, ContainerDetails>();

  constructor(
    private readonly cri: CriReader,
    /** Where the runtime writes the pods' logs: no container log is served from anywhere else. */
    private readonly podLogsDir: string,
  ) {}

  close(): void {
    this.cri.close();
  }

  /** Every pod sandbox and its containers (exited ones too), sandboxes by ID then age, containers by name then age. */
  async listPods(): Promise<PodView[]> {
    const [sandboxes, containers] = await Promise.all([this.cri.listPodSandboxes(), this.cri.listContainers()]);
    const bySandbox = new Map<string, Container[]>();
    for (const c of containers) bySandbox.set(c.podSandboxId, [...(bySandbox.get(c.podSandboxId) ?? []), c]);
    // Only what is listed stays known.
    const listed = new Set([...sandboxes.map((s) => s.id), ...containers.map((c) => c.id)]);
    for (const m of [this.sandboxes, this.containers]) for (const id of m.keys()) if (!listed.has(id)) m.delete(id);
    const sandboxStatus = new Map<string, SandboxDetails>();
    const pidOf = new Map<string, number>();
    // One pool for both kinds; a container that is not running shows PID 0 and needs no status.
    const asks: (() => Promise<void>)[] = [];
    for (const s of sandboxes) {
      const hit = this.sandboxes.get(s.id);
      if (hit !== undefined) sandboxStatus.set(s.id, hit);
      else {
        asks.push(async () => {
          const st = await this.cri.podSandboxStatus(s.id).catch(goneAsEmpty);
          if (st === undefined) return;
          const details = { pid: st.pid, image: st.image };
          sandboxStatus.set(s.id, details);
          if (st.status.state === 'SANDBOX_READY' && st.pid > 0) this.sandboxes.set(s.id, details);
        });
      }
    }
    for (const c of containers) {
      if (c.state !== 'CONTAINER_RUNNING') continue;
      const hit = this.containers.get(c.id);
      if (hit !== undefined) pidOf.set(c.id, hit.pid);
      else {
        asks.push(async () => {
          const st = await this.cri.containerStatus(c.id).catch(goneAsEmpty);
          if (st === undefined) return;
          pidOf.set(c.id, st.pid);
          if (st.status.state === 'CONTAINER_RUNNING' && st.pid > 0) this.containers.set(c.id, { pid: st.pid, logPath: st.status.logPath });
        });
      }
    }
    await mapLimit(asks, (ask) => ask());
    const pods = sandboxes.map((s): PodView => {
      const id = podId(s);
      const ctrs = (bySandbox.get(s.id) ?? []).map(
        (c): ContainerView => ({
          id: `${id}:${c.metadata.name}:${c.id.slice(0, SHORT_ID)}`,
          name: c.metadata.name,
          containerId: c.id,
          image: c.image.image,
          pid: c.state === 'CONTAINER_RUNNING' ? (pidOf.get(c.id) ?? 0) : 0,
          state: c.state,
          restartCount: c.metadata.attempt,
          createdAt: BigInt(c.createdAt || '0'),
        }),
      );
      ctrs.sort((a, b) => a.name.localeCompare(b.name) || cmp(a.createdAt, b.createdAt));
      const st = sandboxStatus.get(s.id);
      return {
        id,
        namespace: s.metadata.namespace,
        name: s.metadata.name,
        uid: s.metadata.uid,
        sandboxId: s.id,
        image: st?.image ?? '',
        pid: s.state === 'SANDBOX_READY' ? (st?.pid ?? 0) : 0,
        state: s.state,
        staticPod: STATIC_SOURCES.has(s.annotations[CONFIG_SOURCE] ?? ''),
        createdAt: BigInt(s.createdAt || '0'),
        containers: ctrs,
      };
    });
    return pods.sort((a, b) => a.id.localeCompare(b.id) || cmp(a.createdAt, b.createdAt));
  }

  /**
   * The log file of a container, confined to the pod logs directory (log-confinement.ts).
   * The kubelet labels each sandbox with its pod's namespace and name, so the runtime is asked for that pod's
   * sandboxes and containers only (as crictl does): the cost does not grow with the number of pods. A pod without
   * those labels (not started by a kubelet) is looked for among all; an unknown ID is NOT_FOUND with the IDs that exist.
   */
  async containerLog(ref: ContainerRef): Promise<ConfinedLog & { id: string }> {
    const labelled = await this.cri.listPodSandboxes({ labelSelector: { [POD_NAMESPACE_LABEL]: ref.namespace, [POD_NAME_LABEL]: ref.pod } });
    const sandboxes = labelled.filter((s) => s.metadata.namespace === ref.namespace && s.metadata.name === ref.pod);
    const containers = (await Promise.all(sandboxes.map((s) => this.cri.listContainers({ podSandboxId: s.id })))).flat();
    let candidates = pickContainers(sandboxes, containers, ref);
    if (candidates.length === 0) {
      const pods = await this.listPods();
      const podKey = `${ref.namespace}/${ref.pod}`;
      candidates = pods
        .filter((p) => p.id === podKey)
        .flatMap((p) => p.containers.map((c) => ({ id: c.id, containerId: c.containerId, sandboxCreatedAt: p.createdAt, createdAt: c.createdAt })))
        .filter((c) => c.id.split(':')[1] === ref.container && (ref.idPrefix === undefined || c.containerId.startsWith(ref.idPrefix)));
      if (candidates.length === 0) {
        const known = pods.flatMap((p) => p.containers.map((c) => c.id));
        const list = known.length === 0 ? 'there are no containers' : `containers: ${known.slice(0, 50).join(', ')}${known.length > 50 ? `, ... (${known.length} in all)` : ''}`;
        const asked = ref.idPrefix === undefined ? `${podKey}:${ref.container}` : `${podKey}:${ref.container}:${ref.idPrefix}`;
        throw new CosiError('not-found', `container ${asked} not found; ${list}`);
      }
    }
    if (ref.idPrefix !== undefined && new Set(candidates.map((c) => c.containerId)).size > 1) {
      throw new CosiError('invalid-argument', `container ID prefix ${ref.idPrefix} is ambiguous: ${candidates.map((c) => c.id).join(', ')}`);
    }
    // The latest instance: the newest sandbox's newest container.
    const c = candidates.reduce((a, b) => ((cmp(a.sandboxCreatedAt, b.sandboxCreatedAt) || cmp(a.createdAt, b.createdAt)) >= 0 ? a : b));
    const logPath = this.containers.get(c.containerId)?.logPath ?? (await this.askLogPath(c));
    if (logPath === '') throw new CosiError('not-found', `container ${c.id} has no log file`);
    return { id: c.id, ...(await confineLog(logPath, this.podLogsDir)) };
  }

  /** The log path a container's status gives, kept while it runs (a running container's log path cannot change). */
  private async askLogPath(c: Candidate): Promise<string> {
    const st = await this.cri.containerStatus(c.containerId).catch((err: unknown) => {
      // Removed between the listing and now (the kubelet keeps one exited instance per container).
      if (err instanceof CosiError && err.kind !== 'unavailable') throw new CosiError('not-found', `container ${c.id} is gone: ${err.message}`);
      throw err;
    });
    const logPath = st.status.logPath;
    // listPods forgets it once it is gone. Bounded: a client that only ever asks for logs (of a container restarting
    // again and again) is not a leak.
    if (this.containers.size >= MAX_KNOWN) this.containers.clear();
    if (st.status.state === 'CONTAINER_RUNNING' && st.pid > 0) this.containers.set(c.containerId, { pid: st.pid, logPath });
    return logPath;
  }
}

function podId(s: PodSandbox): string {
  return `${s.metadata.namespace}/${s.metadata.name}`;
}

function cmp(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Something removed between the list and its status, or whose status the runtime cannot give, is shown without the
 * details (PID 0) rather than failing the whole listing; a runtime that is down still fails it.
 */
function goneAsEmpty(err: unknown): undefined {
  if (err instanceof CosiError && err.kind !== 'unavailable') return undefined;
  throw err;
}

async function mapLimit<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(STATUS_CONCURRENCY, items.length) }, worker));
  return out;
}

// Kubernetes names: a namespace and a container are DNS labels, a pod name a DNS subdomain. Nothing else is
// accepted, so no ID can smuggle a path separator, "..", or a NUL into a file name.
const LABEL = '[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?';
const SUBDOMAIN = `${LABEL}(?:\\.${LABEL})*`;
const CONTAINER_ID = new RegExp(`^(${LABEL})/(${SUBDOMAIN}):(${LABEL})(?::([0-9a-f]{1,64}))?$`);

export interface ContainerRef {
  namespace: string;
  pod: string;
  container: string;
  /** A prefix of the runtime's container ID; absent: the latest instance. */
  idPrefix?: string;
}

export function parseContainerRef(id: string): ContainerRef {
  const m = id.length <= 400 ? CONTAINER_ID.exec(id) : null;
  if (m === null) {
    throw new CosiError(
      'invalid-argument',
      `invalid container ID ${JSON.stringify(id.slice(0, 200))}: use <namespace>/<pod>:<container> or <namespace>/<pod>:<container>:<id> (as listed by containers -k)`,
    );
  }
  const [, namespace = '', pod = '', container = '', idPrefix] = m;
  return idPrefix === undefined ? { namespace, pod, container } : { namespace, pod, container, idPrefix };
}

interface Candidate {
  id: string;
  containerId: string;
  sandboxCreatedAt: bigint;
  createdAt: bigint;
}

function pickContainers(sandboxes: PodSandbox[], containers: Container[], ref: ContainerRef): Candidate[] {
  const created = new Map(sandboxes.map((s) => [s.id, BigInt(s.createdAt || '0')]));
  return containers
    .filter((c) => c.metadata.name === ref.container && (ref.idPrefix === undefined || c.id.startsWith(ref.idPrefix)))
    .map((c) => ({
      id: `${ref.namespace}/${ref.pod}:${c.metadata.name}:${c.id.slice(0, SHORT_ID)}`,
      containerId: c.id,
      sandboxCreatedAt: created.get(c.podSandboxId) ?? 0n,
      createdAt: BigInt(c.createdAt || '0'),
    }));
}
