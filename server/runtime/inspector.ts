// What the container runtime runs, seen the way talosctl shows it: pod sandboxes (`<ns>/<pod>`) with their
// containers (`<ns>/<pod>:<container>:<short id>`), and the log file behind a container ID.
import { realpath } from 'node:fs/promises';
import { sep } from 'node:path';
import { CosiError } from '../../shared/errors.js';
import type { Container, CriClient, PodSandbox } from './cri.js';

/** The kubelet's annotations on a sandbox: where the pod came from. */
const CONFIG_SOURCE = 'kubernetes.io/config.source';
const STATIC_SOURCES = new Set(['file', 'http']);
const SHORT_ID = 12;
const STATUS_CONCURRENCY = 16;

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

/** Every pod sandbox and its containers (exited ones too), sandboxes by ID then age, containers by name then age. */
export async function listPods(cri: CriClient): Promise<PodView[]> {
  const [sandboxes, containers] = await Promise.all([cri.listPodSandboxes(), cri.listContainers()]);
  const bySandbox = new Map<string, Container[]>();
  for (const c of containers) bySandbox.set(c.podSandboxId, [...(bySandbox.get(c.podSandboxId) ?? []), c]);
  const sandboxStatus = await mapLimit(sandboxes, (s) => cri.podSandboxStatus(s.id).catch(goneAsEmpty));
  const containerStatus = await mapLimit(containers, (c) => cri.containerStatus(c.id).catch(goneAsEmpty));
  const pidOf = new Map(containers.map((c, i) => [c.id, containerStatus[i]?.pid ?? 0]));
  const pods = sandboxes.map((s, i): PodView => {
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
    const st = sandboxStatus[i];
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

function podId(s: PodSandbox): string {
  return `${s.metadata.namespace}/${s.metadata.name}`;
}

function cmp(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Something removed between the list and its status is shown without the details. */
function goneAsEmpty(err: unknown): undefined {
  if (err instanceof CosiError && err.kind === 'not-found') return undefined;
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

/**
 * The log file of a container, checked to lie inside the pod logs directory (after symlinks are resolved).
 * An unknown ID is NOT_FOUND with the IDs that exist.
 */
export async function resolveContainerLog(cri: CriClient, ref: ContainerRef, podLogsDir: string): Promise<{ container: ContainerView; path: string }> {
  const pods = await listPods(cri);
  const podKey = `${ref.namespace}/${ref.pod}`;
  const candidates = pods
    .filter((p) => p.id === podKey)
    .flatMap((p) => p.containers.map((c) => ({ p, c })))
    .filter(({ c }) => c.name === ref.container && (ref.idPrefix === undefined || c.containerId.startsWith(ref.idPrefix)));
  if (candidates.length === 0) {
    const known = pods.flatMap((p) => p.containers.map((c) => c.id));
    const list = known.length === 0 ? 'there are no containers' : `containers: ${known.slice(0, 50).join(', ')}${known.length > 50 ? `, ... (${known.length} in all)` : ''}`;
    const asked = ref.idPrefix === undefined ? `${podKey}:${ref.container}` : `${podKey}:${ref.container}:${ref.idPrefix}`;
    throw new CosiError('not-found', `container ${asked} not found; ${list}`);
  }
  if (ref.idPrefix !== undefined && new Set(candidates.map(({ c }) => c.containerId)).size > 1) {
    throw new CosiError('invalid-argument', `container ID prefix ${ref.idPrefix} is ambiguous: ${candidates.map(({ c }) => c.id).join(', ')}`);
  }
  // The latest instance: the newest sandbox's newest container.
  const { c } = candidates.reduce((a, b) => (cmp(a.p.createdAt, b.p.createdAt) || cmp(a.c.createdAt, b.c.createdAt)) >= 0 ? a : b);
  const { status } = await cri.containerStatus(c.containerId);
  if (status.logPath === '') throw new CosiError('not-found', `container ${c.id} has no log file`);
  return { container: c, path: await insideDir(status.logPath, podLogsDir) };
}

/** The real path of `file`, refused unless it is inside `dir`. */
export async function insideDir(file: string, dir: string): Promise<string> {
  const root = await realpath(dir).catch(() => {
    throw new CosiError('unavailable', `pod logs directory ${dir} does not exist`);
  });
  const real = await realpath(file).catch((err: NodeJS.ErrnoException) => {
    throw new CosiError('not-found', `log file ${file} ${err.code === 'ENOENT' ? 'does not exist' : `cannot be read (${err.code ?? String(err)})`}`);
  });
  if (!real.startsWith(root + sep)) throw new CosiError('permission-denied', `log file ${file} is outside the pod logs directory ${dir}`);
  return real;
}
