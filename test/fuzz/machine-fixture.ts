// What the machine-service fuzzing runs against: a pod logs directory and a kubelet log (for a cosid whose runtime
// socket is missing), and, on a REAL containerd, pods whose containers' log files lead OUTSIDE that directory the
// ways a runtime can be made to report them: a sandbox log directory outside, a relative one full of `..`, a
// container log path with `..`, and a file, a container directory and a pod directory replaced by symlinks to
// outside once the container writes. Those containers print a canary; a Logs answer that ever carries it is a
// finding: the confinement to the pod logs directory broke.
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CriClient, type ContainerConfig, type PodSandboxConfig } from '../../node-sim/kubelet/cri-client.js';
import { eventually } from '../harness.js';

/** The Kubernetes namespace of the hostile pods: the containerd may be shared, nobody else uses this one. */
export const FUZZ_NAMESPACE = 'fuzz';

export interface MachineFixture {
  dir: string;
  /** The fuzzed cosid's --pod-logs-dir. */
  podLogsDir: string;
  /** Where the escaping containers' logs really are. */
  outsideDir: string;
  kubeletLog: string;
  /** unix:// path of a socket nobody listens on (Containers and Logs answer UNAVAILABLE). */
  missingCri: string;
  /** Printed by the escaping containers only: no Logs answer may carry it. */
  canary: string;
  close(): Promise<void>;
}

/** The directory layout and the kubelet log; no runtime. */
export async function makeMachineFixture(): Promise<MachineFixture> {
  // Short: unix socket paths are limited to ~107 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'cosi-mfz-'));
  const podLogsDir = join(dir, 'pods');
  const outsideDir = join(dir, 'outside');
  await mkdir(podLogsDir, { recursive: true });
  await mkdir(outsideDir, { recursive: true });
  const kubeletLog = join(dir, 'kubelet.log');
  await writeFile(kubeletLog, Array.from({ length: 40 }, (_, i) => `{"ts":${i},"msg":"kubelet line ${i}"}\n`).join(''));
  return {
    dir,
    podLogsDir,
    outsideDir,
    kubeletLog,
    missingCri: `unix://${join(dir, 'missing.sock')}`,
    canary: `CANARY-${randomBytes(12).toString('hex')}`,
    close: () => rm(dir, { recursive: true, force: true }),
  };
}

/** The containerd to run the pods on (test/cri/global-setup.ts's CriTestEnv, or a handle of startContainerd). */
export interface RealRuntime {
  endpoint: string;
  images: { busybox: string };
  cgroupParent: string;
}

export interface HostilePods {
  /** Container IDs in each form cosid takes (`ns/pod:ctr`, `...:<short id>`, `...:<full id>`). */
  ids: { readable: string[]; escaping: string[]; broken: string[] };
  /** Stops and removes every container and sandbox made here (the directories go with the fixture). */
  close(): Promise<void>;
}

// busybox sh as PID 1 ignores SIGTERM unless trapped.
const shell = (script: string) => ['/bin/sh', '-c', `trap 'exit 0' TERM; ${script}`];
const NS_OPTIONS = { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } as const;
const DEADLINE_MS = 30_000;

/**
 * Runs the hostile pods on a real containerd. The escaping containers' log files end up outside the pod logs
 * directory, holding the canary, before this returns; `good`'s is inside, holding lines without it.
 */
export async function startHostilePods(runtime: RealRuntime, fixture: MachineFixture): Promise<HostilePods> {
  const cri = new CriClient(runtime.endpoint);
  const sandboxes: string[] = [];
  const containers: string[] = [];
  const refs = new Map<string, { kind: 'readable' | 'escaping' | 'broken'; id: string }>();
  const P = fixture.podLogsDir;
  const O = fixture.outsideDir;
  const escaping = shell(`echo ${fixture.canary}; while true; do sleep 1; done`);
  const close = async () => {
    const errors: string[] = [];
    const note = (what: string) => (err: unknown) => void errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    await Promise.all(
      containers.map(async (id) => {
        await cri.stopContainer(id, 2).catch(note(`stop container ${id.slice(0, 12)}`));
        await cri.removeContainer(id).catch(note(`remove container ${id.slice(0, 12)}`));
      }),
    );
    for (const id of sandboxes) {
      await cri.stopPodSandbox(id).catch(note(`stop sandbox ${id.slice(0, 12)}`));
      await cri.removePodSandbox(id).catch(note(`remove sandbox ${id.slice(0, 12)}`));
    }
    cri.close();
    if (errors.length > 0) throw new Error(`hostile pods not all removed: ${errors.join('; ')}`);
  };

  /** A sandbox whose log directory is `logDirectory` (made first, at `mkdirAt` when that is relative). */
  const sandbox = async (name: string, logDirectory: string, mkdirAt = logDirectory) => {
    await mkdir(mkdirAt, { recursive: true });
    const config: PodSandboxConfig = {
      metadata: { name, uid: `uid-${name}`, namespace: FUZZ_NAMESPACE, attempt: 0 },
      logDirectory,
      labels: { 'io.kubernetes.pod.name': name, 'io.kubernetes.pod.namespace': FUZZ_NAMESPACE },
      annotations: { 'kubernetes.io/config.source': 'file' },
      linux: { cgroupParent: runtime.cgroupParent, securityContext: { namespaceOptions: NS_OPTIONS } },
    };
    const id = await cri.runPodSandbox(config);
    sandboxes.push(id);
    return { name, config, id };
  };
  /** A container with the given log path (relative to the sandbox's log directory), started unless `start` is false. */
  const container = async (pod: { name: string; config: PodSandboxConfig; id: string }, name: string, kind: 'readable' | 'escaping' | 'broken', logPath: string, command: string[], start = true) => {
    const config: ContainerConfig = {
      metadata: { name, attempt: 0 },
      image: { image: runtime.images.busybox },
      command,
      labels: { 'io.kubernetes.container.name': name, 'io.kubernetes.pod.name': pod.name, 'io.kubernetes.pod.namespace': FUZZ_NAMESPACE },
      logPath,
      linux: { securityContext: { namespaceOptions: NS_OPTIONS } },
    };
    const id = await cri.createContainer(pod.id, config, pod.config);
    containers.push(id);
    if (start) await cri.startContainer(id);
    refs.set(`${FUZZ_NAMESPACE}/${pod.name}:${name}`, { kind, id });
  };

  try {
    const podDir = (name: string) => join(P, `${FUZZ_NAMESPACE}_${name}_uid-${name}`);
    const inside = podDir('inside');
    const podlinkDir = podDir('podlink');
    // A relative log directory, climbing to / from wherever containerd (and cosid) run, then down to outside.
    const relTarget = join(O, 'rel');
    const relDirectory = `${'../'.repeat(32)}${relTarget.slice(1)}`;
    await Promise.all([
      (async () => {
        const pod = await sandbox('inside', inside);
        for (const d of ['good', 'link', 'dirlink', 'isdir']) await mkdir(join(inside, d), { recursive: true });
        await container(pod, 'good', 'readable', join('good', '0.log'), shell('i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo "good line $i"; done; while true; do sleep 1; echo "good tick"; done'));
        // Inside at first; the file, then its directory, replaced by symlinks to outside below.
        await container(pod, 'link', 'escaping', join('link', '0.log'), escaping);
        await container(pod, 'dirlink', 'escaping', join('dirlink', '0.log'), escaping);
        // containerd joins (and cleans) the log directory and a log path climbing out of it.
        await container(pod, 'dotdot', 'escaping', join('..', '..', 'outside', 'dotdot.log'), escaping);
        // No log path: containerd reports none.
        await container(pod, 'nopath', 'broken', '', escaping);
        // Never started: no file yet; and a directory where the file should be.
        await container(pod, 'absent', 'broken', join('absent', '0.log'), escaping, false);
        await container(pod, 'isdir', 'broken', 'isdir', escaping, false);
      })(),
      (async () => {
        const pod = await sandbox('podlink', podlinkDir);
        await mkdir(join(podlinkDir, 'podlink'), { recursive: true });
        await container(pod, 'podlink', 'escaping', join('podlink', '0.log'), escaping);
      })(),
      (async () => {
        const pod = await sandbox('absolute', join(O, 'absolute'));
        await mkdir(join(O, 'absolute', 'absolute'), { recursive: true });
        await container(pod, 'absolute', 'escaping', join('absolute', '0.log'), escaping);
      })(),
      (async () => {
        const pod = await sandbox('relative', relDirectory, relTarget);
        await mkdir(join(relTarget, 'relative'), { recursive: true });
        await container(pod, 'relative', 'escaping', join('relative', '0.log'), escaping);
      })(),
    ]);
    // The swaps, once the runtime has the files open (it keeps writing to what it opened, now outside).
    await rename(join(inside, 'link', '0.log'), join(O, 'link.log'));
    await symlink(join(O, 'link.log'), join(inside, 'link', '0.log'));
    await rename(join(inside, 'dirlink'), join(O, 'dirlink'));
    await symlink(join(O, 'dirlink'), join(inside, 'dirlink'));
    await rename(podlinkDir, join(O, 'podlink'));
    await symlink(join(O, 'podlink'), podlinkDir);
    // Every escaping log holds the canary (else a leak could not show), and `good`'s log its lines.
    const escapingFiles = [join(O, 'link.log'), join(O, 'dirlink', '0.log'), join(O, 'dotdot.log'), join(O, 'podlink', 'podlink', '0.log'), join(O, 'absolute', 'absolute', '0.log'), join(relTarget, 'relative', '0.log')];
    await until(async () => {
      for (const f of escapingFiles) if (!(await readFile(f, 'utf8').catch(() => '')).includes(fixture.canary)) return `no canary in ${f} yet`;
      if (!(await readFile(join(inside, 'good', '0.log'), 'utf8').catch(() => '')).includes('good line 20\n')) return 'good has not written its lines yet';
      return undefined;
    });
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }

  const forms = (kind: 'readable' | 'escaping' | 'broken') =>
    [...refs].filter(([, r]) => r.kind === kind).flatMap(([ref, r]) => [ref, `${ref}:${r.id.slice(0, 12)}`, `${ref}:${r.id}`]);
  return { ids: { readable: forms('readable'), escaping: forms('escaping'), broken: forms('broken') }, close };
}

/** Waits until `check` says nothing is missing (it returns what is), or fails after DEADLINE_MS saying what. */
async function until(check: () => Promise<string | undefined>): Promise<void> {
  await eventually(async () => {
    const missing = await check();
    if (missing !== undefined) throw new Error(`hostile pods not ready after ${DEADLINE_MS} ms: ${missing}`);
  }, DEADLINE_MS);
}
