// What the machine-service fuzzing runs against: a pod logs directory with a canary planted OUTSIDE it and every
// way of pointing at the canary from INSIDE (a symlinked file, a symlinked directory, a `..` path, an absolute path),
// a stand-in for containerd's CRI service that reports those paths as containers' log files, and a kubelet log.
// A Logs answer that ever carries the canary's text is a finding: the confinement to the pod logs directory broke.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROTO_DIR } from '../../shared/wire.js';

export interface MachineFixture {
  dir: string;
  podLogsDir: string;
  kubeletLog: string;
  /** unix:// path of a socket nobody listens on (Containers and Logs answer UNAVAILABLE). */
  missingCri: string;
  /** The fake runtime's endpoint (undefined until startFakeCri). */
  fakeCri?: string;
  /** Text of the file outside the pod logs directory. */
  canary: string;
  /** IDs the fake runtime knows: one readable log, the others pointing outside or nowhere. */
  ids: { readable: string[]; escaping: string[]; broken: string[] };
  close(): Promise<void>;
}

interface FakeContainer {
  namespace: string;
  pod: string;
  name: string;
  id: string;
  logPath: string;
  createdAt: number;
}

const hex = (s: string) => Buffer.from(s.padEnd(32, '0')).toString('hex').slice(0, 64);

/** The layout, with the fake CRI started when `fakeCri` is set (its socket in the same folder). */
export async function makeMachineFixture(opts: { fakeCri: boolean }): Promise<MachineFixture> {
  // Short: unix socket paths are limited to ~107 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'cosi-mfz-'));
  const podLogsDir = join(dir, 'pods');
  const outside = join(dir, 'outside');
  const canary = `CANARY-${randomBytes(12).toString('hex')}`;
  await mkdir(outside, { recursive: true });
  await writeFile(join(outside, 'canary.log'), `${new Date(0).toISOString()} stdout F ${canary}\n`);
  await writeFile(join(outside, '0.log'), `${canary}\n`);
  const kubeletLog = join(dir, 'kubelet.log');
  await writeFile(kubeletLog, Array.from({ length: 40 }, (_, i) => `{"ts":${i},"msg":"kubelet line ${i}"}\n`).join(''));

  const containers: FakeContainer[] = [];
  const add = async (pod: string, name: string, logPath: string, make?: () => Promise<unknown>) => {
    await make?.();
    containers.push({ namespace: 'default', pod, name, id: hex(`${pod}/${name}`), logPath, createdAt: containers.length + 1 });
  };
  const podDir = (pod: string) => join(podLogsDir, `default_${pod}_uid-${pod}`);
  // Readable: a real log inside.
  const good = join(podDir('good'), 'good', '0.log');
  await add('good', 'good', good, async () => {
    await mkdir(join(podDir('good'), 'good'), { recursive: true });
    await writeFile(good, Array.from({ length: 20 }, (_, i) => `2025-01-01T00:00:00.000000000Z stdout F good line ${i}\n`).join(''));
  });
  // Escaping: a symlinked file, a symlinked directory, `..`, an absolute path outside.
  const link = join(podDir('link'), 'link', '0.log');
  await add('link', 'link', link, async () => {
    await mkdir(join(podDir('link'), 'link'), { recursive: true });
    await symlink(join(outside, 'canary.log'), link);
  });
  await add('dirlink', 'dirlink', join(podDir('dirlink'), 'dirlink', '0.log'), async () => {
    await mkdir(podDir('dirlink'), { recursive: true });
    await symlink(outside, join(podDir('dirlink'), 'dirlink'));
  });
  await add('dotdot', 'dotdot', join(podLogsDir, '..', 'outside', 'canary.log'));
  await add('absolute', 'absolute', join(outside, 'canary.log'));
  // A relative path (resolved against cosid's working directory, never inside the pod logs directory).
  await add('relative', 'relative', join('..', 'outside', 'canary.log'));
  // Broken: no file, no path at all, a directory.
  await add('absent', 'absent', join(podDir('absent'), 'absent', '0.log'), () => mkdir(podDir('absent'), { recursive: true }));
  await add('nopath', 'nopath', '');
  await add('isdir', 'isdir', join(podDir('isdir'), 'isdir'), () => mkdir(join(podDir('isdir'), 'isdir'), { recursive: true }));

  const socket = join(dir, 'cri.sock');
  let server: grpc.Server | undefined;
  if (opts.fakeCri) server = await startFakeCri(socket, containers);
  const ref = (c: FakeContainer) => `${c.namespace}/${c.pod}:${c.name}`;
  const byPod = (pods: string[]) => containers.filter((c) => pods.includes(c.pod)).flatMap((c) => [ref(c), `${ref(c)}:${c.id.slice(0, 12)}`, `${ref(c)}:${c.id}`]);
  return {
    dir,
    podLogsDir,
    kubeletLog,
    missingCri: `unix://${join(dir, 'missing.sock')}`,
    ...(server !== undefined ? { fakeCri: `unix://${socket}` } : {}),
    canary,
    ids: {
      readable: byPod(['good']),
      escaping: byPod(['link', 'dirlink', 'dotdot', 'absolute', 'relative']),
      broken: byPod(['absent', 'nopath', 'isdir']),
    },
    async close() {
      if (server !== undefined) {
        const s = server;
        await new Promise<void>((r) => s.tryShutdown(() => r()));
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A stand-in for containerd's CRI: the calls cosid makes to list containers and find their logs. */
async function startFakeCri(socket: string, containers: FakeContainer[]): Promise<grpc.Server> {
  const def = protoLoader.loadSync(join(PROTO_DIR, 'runtime', 'v1', 'api.proto'), { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } } };
  const sandboxes = containers.map((c) => ({
    id: hex(`sandbox/${c.pod}`),
    metadata: { name: c.pod, uid: `uid-${c.pod}`, namespace: c.namespace, attempt: 0 },
    state: 'SANDBOX_READY',
    createdAt: String(c.createdAt),
    labels: {},
    annotations: { 'kubernetes.io/config.source': 'file' },
  }));
  const wire = (c: FakeContainer) => ({
    id: c.id,
    podSandboxId: hex(`sandbox/${c.pod}`),
    metadata: { name: c.name, attempt: 0 },
    image: { image: 'docker.io/library/busybox:1' },
    imageRef: 'docker.io/library/busybox:1',
    state: 'CONTAINER_RUNNING',
    createdAt: String(c.createdAt),
    labels: {},
    annotations: {},
  });
  type Call = grpc.ServerUnaryCall<Record<string, string>, unknown>;
  const server = new grpc.Server();
  server.addService(pkg.runtime.v1.RuntimeService.service, {
    ListPodSandbox: (_call: Call, cb: grpc.sendUnaryData<unknown>) => cb(null, { items: sandboxes }),
    ListContainers: (_call: Call, cb: grpc.sendUnaryData<unknown>) => cb(null, { containers: containers.map(wire) }),
    PodSandboxStatus: (call: Call, cb: grpc.sendUnaryData<unknown>) => {
      const s = sandboxes.find((x) => x.id === call.request['podSandboxId']);
      if (s === undefined) return cb({ code: grpc.status.NOT_FOUND, details: 'no such sandbox' });
      cb(null, { status: { id: s.id, metadata: s.metadata, state: s.state }, info: { info: JSON.stringify({ pid: 0, image: 'registry.k8s.io/pause:3.10' }) } });
    },
    ContainerStatus: (call: Call, cb: grpc.sendUnaryData<unknown>) => {
      const c = containers.find((x) => x.id === call.request['containerId']);
      if (c === undefined) return cb({ code: grpc.status.NOT_FOUND, details: 'no such container' });
      cb(null, { status: { ...wire(c), logPath: c.logPath }, info: { info: JSON.stringify({ pid: 0 }) } });
    },
  });
  await rm(socket, { force: true });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  return server;
}
