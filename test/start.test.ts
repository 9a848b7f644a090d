// `npm start` as a user meets it: scripts/start.mjs in a process group of its own, stopped with a SIGINT to the
// whole group (what a terminal's Ctrl-C sends), a clean start's log, the statuses it shows, the commands it prints.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { connect, type CosiClient, type WatchEvent } from '../client/index.js';
import { loadCosiConfig, selectContext } from '../client/cosiconfig.js';
import { eventually } from './harness.js';
import { freePort } from './pipeline-harness.js';

const ROOT = process.cwd();
const started: ChildProcess[] = [];
const scripts: Started[] = [];
const dirs: string[] = [];
const clients: CosiClient[] = [];
afterAll(async () => {
  for (const c of clients) c.close();
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  // A start script a failed test left running stops as on Ctrl-C (containerd too); SIGKILL only if it does not.
  for (const s of scripts) {
    if (s.child.exitCode !== null || s.child.signalCode !== null) continue;
    s.child.kill('SIGTERM');
    const timer = setTimeout(() => s.child.kill('SIGKILL'), 30_000);
    await s.exited;
    clearTimeout(timer);
  }
  for (const d of dirs) await rm(d, { recursive: true, force: true });
}, 60_000);

interface Started {
  child: ChildProcess;
  state: string;
  port: number;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** scripts/start.mjs as the leader of a new process group, as a shell runs a foreground job. */
async function startScript(env: Record<string, string>, opts: { uid?: number } = {}): Promise<Started> {
  const state = await mkdtemp(join(tmpdir(), 'cosi-start-'));
  dirs.push(state);
  if (opts.uid !== undefined) {
    await chown(state, opts.uid, opts.uid);
    await chmod(state, 0o700);
  }
  const [port, manifestPort, kubeletPort] = [await freePort(), await freePort(), await freePort()];
  const child = spawn(process.execPath, ['scripts/start.mjs'], {
    cwd: ROOT,
    detached: true,
    ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid } : {}),
    env: {
      ...process.env,
      COSI_STATE_DIR: state,
      COSID_LISTEN: `127.0.0.1:${port}`,
      COSID_MANIFEST_LISTEN: `127.0.0.1:${manifestPort}`,
      KUBELET_SIM_LISTEN: `127.0.0.1:${kubeletPort}`,
      ...env,
    },
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const s = { child, state, port, stderr: () => stderr, exited };
  scripts.push(s);
  return s;
}

async function clientFor(s: Started): Promise<CosiClient> {
  const ctx = selectContext(await loadCosiConfig(join(s.state, 'pki', 'cosiconfig')));
  const client = connect({ endpoint: `127.0.0.1:${s.port}`, caPem: ctx.caPem, certPem: ctx.certPem, keyPem: ctx.keyPem });
  clients.push(client);
  return client;
}

/** The processes whose parent is `pid` (Linux: /proc/<pid>/stat, field 4). */
function childrenOf(pid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) found.push(Number(entry));
    } catch {
      // ended meanwhile
    }
  }
  return found;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const SHUTDOWN = 'cosid is shutting down; reconnect and resume from your last bookmark';

describe('npm start and a terminal Ctrl-C (SIGINT to the whole process group)', () => {
  it('simulated runtime: the pods and their files are removed, the open watch ends with the shutdown status, every process exits', async () => {
    const s = await startScript({ COSI_RUNTIME: 'simulated', COSI_NODE: 'group-node' });
    const sock = join(s.state, 'simulated-cri.sock');
    const podDirs = async () => (await readdir(join(s.state, 'pods'))).filter((d) => d.startsWith('default_'));
    await eventually(async () => {
      expect(s.stderr()).toContain('In another terminal, try:');
      expect(await podDirs()).toEqual([expect.stringMatching(/^default_nginx-group-node_[0-9a-f]+$/)]);
      expect(existsSync(sock)).toBe(true);
    }, 30_000);
    const pid = s.child.pid ?? 0;
    const processes = childrenOf(pid);
    expect(processes).toHaveLength(2); // cosid and the kubelet simulator

    const client = await clientFor(s);
    const events: WatchEvent[] = [];
    const ended = new Promise<unknown>((resolve) => client.watch('staticpods', { bootstrap: true, reconnect: false }).subscribe({ next: (e) => events.push(e), error: resolve, complete: () => resolve('completed') }));
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['created', 'bootstrapped']));

    process.kill(-pid, 'SIGINT');
    expect(await ended).toMatchObject({ code: grpc.status.UNAVAILABLE, message: SHUTDOWN });
    expect(await s.exited, s.stderr()).toEqual({ code: 0, signal: null });
    for (const p of processes) expect(alive(p), `process ${p} still runs`).toBe(false);
    expect(await podDirs(), s.stderr()).toEqual([]);
    expect(existsSync(sock)).toBe(false);
    expect(s.stderr()).not.toContain('second signal');
    expect(s.stderr()).toContain('kubelet-simulator: stopped');
  });

  const cri = inject('cri');
  it.skipIf(cri === null)('real runtime: the pods stop, then containerd stops, and what they made is removed', async () => {
    // Only the ticker (the example's web pod binds 127.0.0.1:8080, which other tests may hold).
    const config = join(await mkdtemp(join(tmpdir(), 'cosi-start-config-')), 'machine.yaml');
    dirs.push(join(config, '..'));
    await writeFile(
      config,
      [
        'version: v1alpha1',
        'machine:',
        '  type: worker',
        '  pods:',
        '    - apiVersion: v1',
        '      kind: Pod',
        '      metadata:',
        '        name: ticker',
        '      spec:',
        '        terminationGracePeriodSeconds: 5',
        '        containers:',
        '          - name: ticker',
        '            image: docker.io/cosi-pods/busybox:latest',
        '            command: [/bin/sh, -c, "trap \'exit 0\' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"]',
        '',
      ].join('\n'),
    );
    const s = await startScript({ COSI_RUNTIME: 'real', COSI_NODE: 'real-group-node', COSI_MACHINE_CONFIG: config });
    const note = await eventually(() => {
      const m = /REAL runtime: the pods run on containerd \(pid (\d+)\) at unix:\/\/(\/tmp\/cosi-ctrd-[^/\s]+)\//.exec(s.stderr());
      expect(m, s.stderr()).not.toBeNull();
      return { pid: Number(m?.[1]), dir: m?.[2] ?? '' };
    }, 60_000);
    const podDirs = async () => (await readdir(join(s.state, 'pods'))).filter((d) => d.startsWith('default_'));
    await eventually(async () => {
      const dirs = await podDirs();
      expect(dirs).toEqual([expect.stringMatching(/^default_ticker-real-group-node_[0-9a-f]+$/)]);
      expect(readdirSync(join(s.state, 'pods', dirs[0] ?? '', 'ticker'))).toContain('0.log');
    }, 60_000);
    const processes = childrenOf(s.child.pid ?? 0).filter((p) => p !== note.pid);
    expect(processes).toHaveLength(2); // cosid and the kubelet simulator
    expect(alive(note.pid)).toBe(true);

    process.kill(-(s.child.pid ?? 0), 'SIGINT');
    expect(await s.exited, s.stderr()).toEqual({ code: 0, signal: null });
    const log = s.stderr();
    const removed = log.indexOf('kubelet-simulator: removed default/ticker-real-group-node');
    const stopped = log.indexOf('npm start: containerd stopped; what it made is removed');
    expect(removed, log).toBeGreaterThan(-1);
    expect(stopped, log).toBeGreaterThan(removed);
    for (const p of [...processes, note.pid]) expect(alive(p), `process ${p} still runs`).toBe(false);
    expect(existsSync(note.dir)).toBe(false);
    expect(await podDirs()).toEqual([]);
  }, 120_000);
});

describe('npm start, a clean start', () => {
  it('logs no error, shows each status Pending then Running then Ready, and prints commands for this host that work', async () => {
    // No COSI_NODE: the node is this host's name.
    const node = hostname();
    const s = await startScript({ COSI_RUNTIME: 'simulated' });
    await eventually(() => expect(s.stderr()).toContain('"msg":"cosid serving"'), 30_000);
    // Watch the statuses from the start: the simulator fetches the pods only once cosid serves them.
    const client = await clientFor(s);
    const phases: string[] = [];
    const id = `default/nginx-${node}`;
    const sub = client.watch('staticpodstatus', { bootstrap: true }).subscribe({
      next: (e) => {
        const spec = e.resource?.metadata.id === id ? e.resource.spec : undefined;
        const phase = spec !== null && typeof spec === 'object' && !Array.isArray(spec) ? spec['phase'] : undefined;
        const ready = spec !== null && typeof spec === 'object' && !Array.isArray(spec) && Array.isArray(spec['conditions']) && JSON.stringify(spec['conditions']).includes('{"type":"Ready","status":"True"');
        if (typeof phase === 'string') {
          const seen = ready ? `${phase}+Ready` : phase;
          if (phases.at(-1) !== seen) phases.push(seen);
        }
      },
    });
    await eventually(() => expect(phases).toContain('Running+Ready'), 40_000);
    sub.unsubscribe();
    expect(phases).toEqual(['Pending', 'Running', 'Running+Ready']);

    // The start-up log holds no error and no warning: no "cannot fetch" from the simulator, no grpc-js lines.
    const log = s.stderr();
    expect(log).not.toMatch(/cannot fetch|"level":"(warn|error)"|^E /m);

    // The printed commands name this host's pod and this run's port, and run as printed.
    const printed = log.split('\n').filter((l) => l.startsWith('  node ')).map((l) => l.trim());
    const cosiconfig = join(s.state, 'pki', 'cosiconfig');
    expect(printed).toEqual([
      `node dist/client/cli/main.js --cosiconfig ${cosiconfig} get staticpods`,
      `node dist/client/cli/main.js --cosiconfig ${cosiconfig} get staticpodstatus -w`,
      `node dist/client/cli/main.js --cosiconfig ${cosiconfig} containers -k`,
      `node dist/client/cli/main.js --cosiconfig ${cosiconfig} logs -k default/nginx-${node}:nginx -f`,
      `node dist/client/cli/main.js --cosiconfig ${cosiconfig} logs kubelet`,
    ]);
    const follow = spawn(process.execPath, (printed[3] ?? '').split(' ').slice(1), { cwd: ROOT });
    started.push(follow);
    let out = '';
    follow.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await eventually(() => expect(out).toMatch(new RegExp(`^${node}: \\S+ stdout F nginx: tick \\d+$`, 'm')), 15_000);
    follow.kill('SIGINT');

    s.child.kill('SIGTERM');
    expect(await s.exited).toEqual({ code: 0, signal: null });
  });

  it.skipIf(process.getuid?.() !== 0)('when it falls back to the simulated runtime, says why and how to get the real one', async () => {
    // The same machine as an ordinary user (nobody): containerd cannot run without root.
    const s = await startScript({}, { uid: 65534 });
    await eventually(() => expect(s.stderr()).toContain('In another terminal, try:'), 30_000);
    const log = s.stderr();
    expect(log).toContain('SIMULATED runtime: nothing runs; fake containers and logs in ');
    expect(log).toMatch(/^The real runtime \(a private containerd\) cannot run here: not running as root \(uid 65534\)(; missing Debian packages: [a-z0-9 -]+)?\.$/m);
    expect(log).toMatch(/^To get it: (sudo apt-get install -y containerd runc busybox-static umoci, then )?run as root: sudo npm start\. COSI_RUNTIME=real npm start insists on it \(and says what is missing\)\.$/m);
    s.child.kill('SIGTERM');
    expect(await s.exited).toEqual({ code: 0, signal: null });
  });
});
