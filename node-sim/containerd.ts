// A private, real containerd (with its CRI plugin) for tests, benchmarks and `npm start`.
//
// Everything containerd, its shims and runc write goes under `dir`, except what containerd 1.6 hard-codes
// elsewhere: shim sockets in /run/containerd/s/<sha256(socket/ns/id)> (hashed with OUR socket path, so two
// containerds never collide) and the container cgroups under each cgroup hierarchy. stop() removes both.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

/** The containerd namespace the CRI plugin keeps Kubernetes' containers in. */
export const CRI_NAMESPACE = 'k8s.io';

export const APT_INSTALL = 'apt-get install -y containerd runc busybox-static umoci';

/** When not ok: the reason in one line, and apart: whether root is missing, and the Debian packages to install. */
export type CriPrerequisites = { ok: true } | { ok: false; reason: string; notRoot: boolean; packages: string[] };

/** The Debian package of each binary the real runtime needs. */
const PACKAGE_OF: Readonly<Record<string, string>> = { containerd: 'containerd', 'containerd-shim-runc-v2': 'containerd', ctr: 'containerd', runc: 'runc', umoci: 'umoci', tar: 'tar', umount: 'mount' };

export interface ContainerdOptions {
  /** Private directory (created if missing, removed by stop()); keep it short: it holds the unix socket. */
  dir: string;
  /** Progress and cleanup messages of this module (not containerd's own log: see `logFile`). */
  log?: (line: string) => void;
  /** Where built image tarballs are cached; default `<os.tmpdir()>/cosi-pods-images`. */
  imageCacheDir?: string;
}

export interface ContainerdHandle {
  /** Path of containerd's unix socket. */
  socket: string;
  /** `unix://` + socket, as grpc-js dials it. */
  endpoint: string;
  namespace: typeof CRI_NAMESPACE;
  /** Full references, already imported into the k8s.io namespace. `pause` is the CRI sandbox_image. */
  images: { pause: string; busybox: string };
  /**
   * Set PodSandboxConfig.linux.cgroup_parent to this: containerd 1.6 then puts the sandbox and all its
   * containers at <hierarchy><cgroupParent>/<id>, so stop() removes one tree of ours. Without it they land in
   * the shared <hierarchy>/k8s.io/<id>.
   */
  cgroupParent: string;
  /** containerd's stdout+stderr (removed with dir by stop(); read it first if needed). */
  logFile: string;
  pid: number;
  /** Stops containers, containerd and its shims, removes cgroups, mounts and dir. Idempotent. */
  stop(): Promise<void>;
}

const BINARIES = ['containerd', 'containerd-shim-runc-v2', 'runc', 'ctr', 'umoci', 'tar', 'umount'] as const;
const BUSYBOX = '/bin/busybox';
// runc lives in /usr/sbin, which a non-login PATH may lack; containerd and its shims look binaries up in PATH.
const CHILD_PATH = [...(process.env.PATH ?? '').split(':'), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']
  .filter((p, i, all) => p !== '' && all.indexOf(p) === i)
  .join(':');
const CHILD_ENV = { ...process.env, PATH: CHILD_PATH };
const SHIM_SOCKET_DIR = '/run/containerd/s';
const START_TIMEOUT_MS = 15_000;

function which(bin: string): string | undefined {
  for (const d of CHILD_PATH.split(':')) {
    const p = path.join(d, bin);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

// The image's rootfs holds busybox alone, so it must be the static build (Debian's `busybox` package is dynamic).
function isStaticElf(file: string): boolean {
  const b = fs.readFileSync(file);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false; // ELF64 only
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (b.readUInt32LE(phoff + i * phentsize) === 3) return false; // PT_INTERP: needs a dynamic loader
  }
  return true;
}

export function criPrerequisites(): CriPrerequisites {
  const problems: string[] = [];
  const uid = process.getuid?.();
  if (uid !== 0) problems.push(`must run as root (uid 0), running as uid ${uid ?? 'unknown'}`);
  const missingBinaries: string[] = BINARIES.filter((b) => which(b) === undefined);
  const missing = [...missingBinaries];
  const packages = new Set(missingBinaries.map((b) => PACKAGE_OF[b] ?? b));
  if (!fs.existsSync(BUSYBOX)) missing.push(`${BUSYBOX} (busybox-static)`);
  else if (!isStaticElf(BUSYBOX)) problems.push(`${BUSYBOX} is not statically linked (install busybox-static)`);
  if (!fs.existsSync(BUSYBOX) || !isStaticElf(BUSYBOX)) packages.add('busybox-static');
  if (missing.length > 0) problems.push(`missing ${missing.join(', ')}`);
  if (problems.length === 0) return { ok: true };
  return { ok: false, reason: `real containerd unavailable: ${problems.join('; ')}; install with: ${APT_INSTALL}`, notRoot: uid !== 0, packages: [...packages] };
}

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: CHILD_ENV, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message.trim()}\n${stderr}`.trim()));
      else resolve(stdout);
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
// For races: a pending timer that lost must not keep the process alive.
const timeout = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

// ---------------------------------------------------------------------------------------------------------
// Images: one OCI tarball holding busybox and pause, built with umoci once per busybox binary and recipe.

const RECIPE = 'v2';
// A stable name for the example machine config (examples/machine-config-containerd.yaml) whatever busybox's version.
export const BUSYBOX_REF = 'docker.io/cosi-pods/busybox:latest';
const PAUSE_REF = 'docker.io/cosi-pods/pause:1';
// busybox sh as PID 1 of its pid namespace: without a handler SIGTERM is ignored, so trap it and exit at once.
const PAUSE_SCRIPT = 'trap "kill $! 2>/dev/null; exit 0" TERM INT; sleep 2147483647 & wait';

export interface BuiltImages {
  tarball: string;
  pause: string;
  busybox: string;
}

export async function buildImages(cacheDir = path.join(os.tmpdir(), 'cosi-pods-images')): Promise<BuiltImages> {
  const bin = fs.readFileSync(BUSYBOX);
  const key = createHash('sha256').update(RECIPE).update(bin).digest('hex').slice(0, 16);
  const refs = { busybox: BUSYBOX_REF, pause: PAUSE_REF };
  const tarball = path.join(cacheDir, key, 'images.tar');
  if (fs.existsSync(tarball)) return { tarball, ...refs };

  // Build in a private directory and rename into place: concurrent builders (test workers) never see half a file.
  fs.mkdirSync(path.dirname(tarball), { recursive: true });
  const work = fs.mkdtempSync(path.join(cacheDir, 'build-'));
  try {
    const layout = path.join(work, 'oci');
    const bundle = path.join(work, 'bundle');
    const rootfs = path.join(bundle, 'rootfs');
    await run('umoci', ['init', '--layout', layout]);
    await run('umoci', ['new', '--image', `${layout}:busybox`]);
    await run('umoci', ['unpack', '--image', `${layout}:busybox`, bundle]);
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'root', 'tmp', 'var', 'proc', 'sys', 'dev']) {
      fs.mkdirSync(path.join(rootfs, d), { recursive: true });
    }
    fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
    fs.copyFileSync(BUSYBOX, path.join(rootfs, 'bin/busybox'));
    fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
    for (const applet of (await run(BUSYBOX, ['--list-full'])).split('\n').filter(Boolean)) {
      const link = path.join(rootfs, applet);
      if (!fs.existsSync(link)) fs.symlinkSync('/bin/busybox', link);
    }
    fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
    fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\nnobody:x:65534:\n');
    await run('umoci', ['repack', '--image', `${layout}:busybox`, bundle]);
    const env = '--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
    await run('umoci', ['config', '--image', `${layout}:busybox`, env, '--config.cmd=sh']);
    await run('umoci', ['config', '--image', `${layout}:busybox`, '--tag=pause', '--clear=config.cmd',
      '--config.entrypoint=/bin/sh', '--config.entrypoint=-c', `--config.entrypoint=${PAUSE_SCRIPT}`]);
    // ctr import names images after this annotation; it must be the full reference the CRI will look up.
    const indexFile = path.join(layout, 'index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { manifests: { annotations?: Record<string, string> }[] };
    for (const m of index.manifests) {
      const tag = m.annotations?.['org.opencontainers.image.ref.name'];
      if (tag !== 'busybox' && tag !== 'pause') throw new Error(`unexpected tag ${tag} in ${indexFile}`);
      m.annotations = { ...m.annotations, 'org.opencontainers.image.ref.name': refs[tag] };
    }
    fs.writeFileSync(indexFile, JSON.stringify(index));
    await run('tar', ['-C', layout, '-cf', path.join(work, 'images.tar'), '.']);
    fs.renameSync(path.join(work, 'images.tar'), tarball);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  return { tarball, ...refs };
}

// ---------------------------------------------------------------------------------------------------------
// containerd

function tomlString(s: string): string {
  return JSON.stringify(s); // TOML basic strings accept JSON's escapes for the paths we write
}

function configToml(dir: string, socket: string, runc: string, sandboxImage: string): string {
  const q = (p: string) => tomlString(path.join(dir, p));
  return `version = 2
root = ${q('root')}
state = ${q('state')}
# Fail fast instead of serving without CRI (e.g. when a plugin it depends on was disabled).
required_plugins = ["io.containerd.grpc.v1.cri"]
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.native",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = ${tomlString(socket)}

[plugins."io.containerd.internal.v1.opt"]
  path = ${q('opt')}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${tomlString(sandboxImage)}
  # Root here lacks CAP_SYS_RESOURCE: runc fails to lower oom_score_adj unless containerd clamps it.
  restrict_oom_score_adj = true
  disable_tcp_service = true
  disable_apparmor = true
  enable_selinux = false
  # Random port: two containerds (a test run and npm start) must not fight over the exec/attach server.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Pods use the node network (no CNI); should one ask for its own, keep the netns mount under our state.
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = ${q('cni/bin')}
    conf_dir = ${q('cni/conf')}

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = ${tomlString(runc)}
        # runc state goes to <Root>/k8s.io instead of the shared /run/containerd/runc/k8s.io.
        Root = ${q('runc')}
        SystemdCgroup = false
`;
}

/** Mount points of the cgroup hierarchies (v1 controllers, the v2 unified tree, or /sys/fs/cgroup alone). */
function cgroupRoots(): string[] {
  return mountInfo().filter((m) => m.fstype === 'cgroup' || m.fstype === 'cgroup2').map((m) => m.mountPoint);
}

function mountInfo(): { mountPoint: string; fstype: string }[] {
  // Fields: id parent major:minor root mountpoint options [optional...] - fstype source superopts
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((line) => {
    const f = line.split(' ');
    return { mountPoint: unescape(f[4] ?? ''), fstype: f[f.indexOf('-') + 1] ?? '' };
  });
}

function isAlive(pid: number): boolean {
  // Orphaned shims are reparented to PID 1, which does not reap them here: a zombie counts as gone.
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function killAndWait(pids: number[], graceMs: number): Promise<void> {
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  };
  pids.forEach((p) => signal(p, 'SIGTERM'));
  for (const deadline = Date.now() + graceMs; Date.now() < deadline && pids.some(isAlive); ) await sleep(20);
  const left = pids.filter(isAlive);
  left.forEach((p) => signal(p, 'SIGKILL'));
  for (const deadline = Date.now() + 2000; Date.now() < deadline && left.some(isAlive); ) await sleep(20);
}

/** Shims that serve this containerd: started as `containerd-shim-runc-v2 -namespace NS -id ID -address SOCK`. */
function shimPids(socket: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    const i = argv.indexOf('-address');
    if (path.basename(argv[0] ?? '').startsWith('containerd-shim') && i >= 0 && argv[i + 1] === socket) pids.push(Number(entry));
  }
  return pids;
}

function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function readIfExists(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function canConnect(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

export async function startContainerd(opts: ContainerdOptions): Promise<ContainerdHandle> {
  const pre = criPrerequisites();
  if (!pre.ok) throw new Error(pre.reason);
  const log = opts.log ?? (() => {});
  const dir = path.resolve(opts.dir);
  const socket = path.join(dir, 'containerd.sock');
  // sun_path holds 108 bytes and containerd also listens on SOCKET.ttrpc.
  if (Buffer.byteLength(socket) + '.ttrpc'.length > 107) throw new Error(`socket path too long: ${socket}`);
  fs.mkdirSync(dir, { recursive: true });
  const t0 = Date.now();

  const imagesBuilt = buildImages(opts.imageCacheDir);
  imagesBuilt.catch(() => {}); // awaited below; avoid an unhandled rejection while containerd starts
  const configFile = path.join(dir, 'config.toml');
  fs.writeFileSync(configFile, configToml(dir, socket, which('runc') ?? 'runc', PAUSE_REF));
  const cgroupParent = `/cosi-pods-${process.pid}-${randomBytes(4).toString('hex')}`;
  const hadK8sCgroup = new Set(cgroupRoots().filter((r) => fs.existsSync(path.join(r, CRI_NAMESPACE))));
  const runcRoot = path.join(dir, 'runc', CRI_NAMESPACE);
  const taskDir = path.join(dir, 'state', 'io.containerd.runtime.v2.task', CRI_NAMESPACE);
  const logFile = path.join(dir, 'containerd.log');

  const logFd = fs.openSync(logFile, 'w'); // truncated: the readiness checks below search this log
  // A process group of its own: Ctrl-C in a terminal (SIGINT to the foreground group) must not stop containerd
  // before the pods on it are stopped and removed; stop() stops it last.
  const child: ChildProcess = spawn('containerd', ['--config', configFile], { stdio: ['ignore', logFd, logFd], env: CHILD_ENV, detached: true });
  fs.closeSync(logFd);
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    const done = () => ((exited = true), resolve());
    child.once('exit', done);
    child.once('error', done); // a failed spawn emits no 'exit'
  });
  // A crashed test process must not leave containerd running (its shims and cgroups need stop()).
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      process.removeListener('exit', killOnExit);
      // What this containerd created, recorded before anything is torn down.
      const ids = new Set<string>(fs.existsSync(taskDir) ? fs.readdirSync(taskDir) : []);
      const runcList = await run('runc', ['--root', runcRoot, 'list', '--format', 'json']).catch(() => 'null');
      for (const c of (JSON.parse(runcList || 'null') ?? []) as { id: string }[]) ids.add(c.id);
      const shimSockets = new Set<string>();
      for (const id of ids) {
        const addr = readIfExists(path.join(taskDir, id, 'address')).trim().replace(/^unix:\/\//, '');
        if (addr.startsWith(SHIM_SOCKET_DIR + '/')) shimSockets.add(addr);
        const digest = createHash('sha256').update(path.join(socket, CRI_NAMESPACE, id)).digest('hex');
        shimSockets.add(path.join(SHIM_SOCKET_DIR, digest));
      }
      // 1. Containers: `runc delete --force` kills the process and removes its runc state and cgroups.
      await Promise.all([...ids].map((id) => run('runc', ['--root', runcRoot, 'delete', '--force', id], 10_000).catch(() => {})));
      // 2. containerd, by its PID.
      if (!exited && child.pid !== undefined) {
        child.kill('SIGTERM');
        await Promise.race([exit, timeout(5000)]);
        if (!exited) child.kill('SIGKILL');
        await Promise.race([exit, timeout(2000)]);
      }
      // 3. Shims outlive containerd; on SIGTERM they exit and remove their socket.
      await killAndWait(shimPids(socket), 2000);
      for (const s of shimSockets) fs.rmSync(s, { force: true });
      // 4. Cgroups: our own tree entirely (killing stragglers in it), and only our ids under the shared k8s.io.
      for (const root of cgroupRoots()) {
        await removeCgroupTree(path.join(root, cgroupParent), log);
        const shared = path.join(root, CRI_NAMESPACE);
        for (const id of ids) await removeCgroupTree(path.join(shared, id), log);
        if (!hadK8sCgroup.has(root)) rmdirQuiet(shared); // EBUSY while another containerd still uses it: fine
      }
      // 5. Mounts under dir (rootfs overlays, sandbox shm), deepest first, then dir itself.
      const under = (p: string) => p === dir || p.startsWith(dir + '/');
      const mounts = mountInfo().map((m) => m.mountPoint).filter(under).sort((a, b) => b.length - a.length);
      for (const m of mounts) {
        await run('umount', [m]).catch(() => run('umount', ['-l', m])).catch((e: Error) => log(`umount ${m}: ${e.message}`));
      }
      const left = mountInfo().map((m) => m.mountPoint).filter(under);
      if (left.length > 0) throw new Error(`containerd stop: still mounted, not removing ${dir}: ${left.join(', ')}`);
      fs.rmSync(dir, { recursive: true, force: true });
      log(`containerd stopped and cleaned up (${ids.size} container(s))`);
    })());

  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    // The socket answers once plugins are loaded; the CRI service finishes its own start right after and logs
    // no more than that (these log texts are containerd 1.6's; a changed text shows as a bounded timeout).
    const ready = async () => (await canConnect(socket)) && readIfExists(logFile).includes('Start streaming server');
    while (!(await ready())) {
      if (exited) throw new Error(`containerd exited during start (code ${child.exitCode})`);
      if (Date.now() > deadline) throw new Error(`containerd not ready after ${START_TIMEOUT_MS} ms`);
      await sleep(20);
    }
    const tReady = Date.now();
    const images = await imagesBuilt;
    await run('ctr', ['-a', socket, '-n', CRI_NAMESPACE, 'images', 'import', images.tarball]);
    // The CRI keeps its own image cache, fed by containerd's events; wait until it has seen both images,
    // or RunPodSandbox would try to pull the sandbox image from a registry.
    const seen = (ref: string) => readIfExists(logFile).includes(`ImageUpdate{Name:${ref},`);
    while (!(seen(images.pause) && seen(images.busybox))) {
      if (Date.now() > deadline) throw new Error('CRI did not register the imported images');
      await sleep(10);
    }
    log(`containerd ready in ${tReady - t0} ms, images imported after ${Date.now() - tReady} ms more (${dir})`);
    return {
      socket,
      endpoint: `unix://${socket}`,
      namespace: CRI_NAMESPACE,
      images: { pause: images.pause, busybox: images.busybox },
      cgroupParent,
      logFile,
      pid: child.pid ?? -1,
      stop,
    };
  } catch (err) {
    const message = `${(err as Error).message}\n--- tail of ${logFile} ---\n${tail(logFile)}`;
    await stop().catch((e: Error) => log(`cleanup after failed start: ${e.message}`));
    throw new Error(message);
  }
}

function rmdirQuiet(p: string): boolean {
  try {
    fs.rmdirSync(p);
    return true;
  } catch {
    return false;
  }
}

/** cgroup directories go with rmdir only (their files are virtual), children first, once no process is left. */
async function removeCgroupTree(p: string, log: (line: string) => void): Promise<void> {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(p, { withFileTypes: true });
  } catch {
    return; // not there
  }
  for (const e of entries) if (e.isDirectory()) await removeCgroupTree(path.join(p, e.name), log);
  for (const pid of readIfExists(path.join(p, 'cgroup.procs')).split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (let i = 0; i < 50 && !rmdirQuiet(p); i++) await sleep(10); // killed processes take a moment to leave
  if (fs.existsSync(p)) log(`could not remove cgroup ${p}`);
}
