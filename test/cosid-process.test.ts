// cosid and `npm start` as processes: the printed command works, SIGTERM ends streams with a status.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { connect, type WatchEvent } from '../client/index.js';
import { loadCosiConfig, selectContext } from '../client/cosiconfig.js';
import { eventually, makePki } from './harness.js';
import { freePort } from './pipeline-harness.js';
import { CriClient } from '../node-sim/kubelet/cri-client.js';

const ROOT = process.cwd();
const children: ChildProcess[] = [];
const dirs: string[] = [];
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // Bounded: a cosid that should have refused to start is killed, and the test fails on what it said.
    const c = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, timeout: 30_000 });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('npm start', () => {
  it('runs the whole loop: prints cosictl commands that show default-nginx and its status going Ready; SIGTERM drains', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cosi-state-'));
    dirs.push(state);
    const [port, manifestPort, kubeletPort] = [await freePort(), await freePort(), await freePort()];
    const child = spawn(process.execPath, ['scripts/start.mjs'], {
      cwd: ROOT,
      env: {
        ...process.env,
        COSI_STATE_DIR: state,
        COSI_RUNTIME: 'simulated',
        COSI_NODE: 'demo-node',
        COSID_LISTEN: `127.0.0.1:${port}`,
        COSID_MANIFEST_LISTEN: `127.0.0.1:${manifestPort}`,
        KUBELET_SIM_LISTEN: `127.0.0.1:${kubeletPort}`,
      },
    });
    children.push(child);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await eventually(() => expect(stderr).toContain('In another terminal, try:'), 30_000);
    const printed = /^\s+node (dist\/client\/cli\/main\.js .*get staticpods)$/m.exec(stderr)?.[1];
    expect(printed).toBeDefined();
    const out = await run(process.execPath, (printed ?? '').split(' '));
    expect(out.stderr).toBe('');
    expect(out.stdout).toMatch(/^NODE\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+ERROR\ndemo-node\s+k8s\s+StaticPod\s+default-nginx\s+1\n$/);

    // The second printed command watches the status go Ready through the kubelet simulator.
    const watchCmd = /^\s+node (dist\/client\/cli\/main\.js .*get staticpodstatus -w)$/m.exec(stderr)?.[1];
    expect(watchCmd).toBeDefined();
    const watcher = spawn(process.execPath, (watchCmd ?? '').split(' '), { cwd: ROOT });
    children.push(watcher);
    let watched = '';
    watcher.stdout.on('data', (d: Buffer) => (watched += d.toString()));
    await eventually(() => expect(watched, `watch printed:\n${watched}`).toMatch(/^demo-node\s+(\+\s+)?k8s\s+StaticPodStatus\s+default\/nginx-demo-node\s+\d+\s+True\s+0\s*$/m), 30_000);
    watcher.kill('SIGINT');

    // Simulated runtime: containers -k and logs -k answer from the simulator's CRI socket and its log files.
    expect(stderr).toContain('SIMULATED runtime (COSI_RUNTIME=simulated)');
    const cli = ['dist/client/cli/main.js', '--cosiconfig', join(state, 'pki', 'cosiconfig')];
    const containers = await run(process.execPath, [...cli, 'containers', '-k']);
    expect(containers.stdout).toMatch(/^demo-node\s+k8s\.io\s+└─ default\/nginx-demo-node:nginx:[0-9a-f]{12}\s+nginx\s+0\s+CONTAINER_RUNNING$/m);
    const simLogs = await run(process.execPath, [...cli, 'logs', '-k', 'default/nginx-demo-node:nginx', '--tail', '1']);
    expect(simLogs.stdout).toMatch(/^demo-node: \S+ stdout F /);

    // A watch open during SIGTERM ends with UNAVAILABLE (a status, not a connection reset).
    const ctx = selectContext(await loadCosiConfig(join(state, 'pki', 'cosiconfig')));
    const client = connect({ endpoint: `127.0.0.1:${port}`, caPem: ctx.caPem, certPem: ctx.certPem, keyPem: ctx.keyPem });
    const events: WatchEvent[] = [];
    const ended = new Promise<unknown>((resolve) => client.watch('staticpods', { bootstrap: true, reconnect: false }).subscribe({ next: (e) => events.push(e), error: resolve, complete: () => resolve('completed') }));
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['created', 'bootstrapped']));
    child.kill('SIGTERM');
    const err = await ended;
    expect(err).toMatchObject({ code: grpc.status.UNAVAILABLE, message: expect.stringContaining('shutting down') });
    expect(await exited).toBe(0);
    client.close();
  });
});

const cri = inject('cri');

describe.skipIf(cri === null)('npm start on a real containerd', () => {
  it('says it runs the real runtime, runs the example pods for real, serves their logs, and removes them on SIGTERM', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cosi-state-'));
    dirs.push(state);
    const [port, manifestPort, kubeletPort] = [await freePort(), await freePort(), await freePort()];
    // The test run's containerd (one per run) stands in for the one npm start would start itself.
    const child = spawn(process.execPath, ['scripts/start.mjs'], {
      cwd: ROOT,
      env: {
        ...process.env,
        COSI_STATE_DIR: state,
        COSI_NODE: 'real-node',
        COSI_CRI_ENDPOINT: cri?.endpoint ?? '',
        COSID_LISTEN: `127.0.0.1:${port}`,
        COSID_MANIFEST_LISTEN: `127.0.0.1:${manifestPort}`,
        KUBELET_SIM_LISTEN: `127.0.0.1:${kubeletPort}`,
      },
    });
    children.push(child);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await eventually(() => expect(stderr).toContain('In another terminal, try:'), 60_000);
    expect(stderr).toContain(`REAL runtime: the pods run on containerd at ${cri?.endpoint ?? ''}`);
    expect(stderr).toContain('examples/machine-config-containerd.yaml');
    const cli = ['dist/client/cli/main.js', '--cosiconfig', join(state, 'pki', 'cosiconfig')];
    const table = await eventually(async () => {
      const r = await run(process.execPath, [...cli, 'containers', '-k']);
      expect(r.stdout, `containers -k said: ${r.stderr}\nnpm start said: ${stderr.slice(-2000)}`).toMatch(/^real-node\s+k8s\.io\s+└─ default\/ticker-real-node:ticker:[0-9a-f]{12}\s+docker\.io\/cosi-pods\/busybox:latest\s+\d+\s+CONTAINER_RUNNING$/m);
      expect(r.stdout).toMatch(/^real-node\s+k8s\.io\s+└─ default\/web-real-node:httpd:[0-9a-f]{12}\s+docker\.io\/cosi-pods\/busybox:latest\s+\d+\s+CONTAINER_RUNNING$/m);
      return r.stdout;
    }, 60_000);
    expect(table.split('\n')[0]).toMatch(/^NODE\s+NAMESPACE\s+ID\s+IMAGE\s+PID\s+STATUS$/);
    const logs = await eventually(async () => {
      const r = await run(process.execPath, [...cli, 'logs', '-k', 'default/ticker-real-node:ticker', '--tail', '1']);
      expect(r.stdout).toMatch(/^real-node: \S+ stdout F tick \d+\n$/);
      return r;
    }, 15_000);
    expect(logs.code).toBe(0);
    // The kubelet's log holds the simulator's lines.
    const kubelet = await run(process.execPath, [...cli, 'logs', 'kubelet']);
    expect(kubelet.stdout).toMatch(/^real-node: \{.*"msg":"kubelet-simulator: sandbox [0-9a-f]{12} for default\/web-real-node"\}$/m);

    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    // Its pods are gone from the runtime.
    const client = new CriClient(cri?.endpoint ?? '');
    const left = (await client.listPodSandboxes()).filter((s) => s.metadata.name.endsWith('-real-node'));
    client.close();
    expect(left).toEqual([]);
  });
});

const etcd = inject('etcd');

describe.skipIf(etcd === null)('cosid on etcd', () => {
  it('writes only JSON log lines: Node\'s warning about the etcd client\'s IP server name (DEP0123) is a debug line', async () => {
    if (etcd === null) return;
    const pki = await makePki();
    dirs.push(pki.dir);
    const port = await freePort();
    const args = ['dist/server/main.js', '--pki', pki.dir, '--config', 'examples/machine-config.yaml', '--listen', `127.0.0.1:${port}`];
    const store = ['--store', 'etcd', '--etcd-endpoints', etcd.endpoints.join(','), '--etcd-ca', etcd.tls.caFile, '--etcd-cert', etcd.tls.certFile, '--etcd-key', etcd.tls.keyFile, '--etcd-prefix', `/cosid-process/${process.pid}/`];
    const started = async (level: string) => {
      const child = spawn(process.execPath, [...args, ...store, '--log-level', level], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
      children.push(child);
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      await eventually(() => expect(stderr).toContain('"msg":"cosid serving"'), 30_000);
      // The etcd client has connected by the time cosid serves (it refuses to start otherwise).
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
      return stderr.split('\n').filter((line) => line !== '');
    };
    const info = await started('info');
    for (const line of info) expect(() => JSON.parse(line), line).not.toThrow();
    expect(info.join('\n')).not.toContain('DEP0123');
    const debug = await started('debug');
    for (const line of debug) expect(() => JSON.parse(line), line).not.toThrow();
    expect(debug.some((line) => line.includes('"msg":"node warning"') && line.includes('DEP0123'))).toBe(true);
  });
});

describe('cosid start-up failures: one line in cosid\'s words, before anything serves', () => {
  it('a port in use: exit 1, one line naming the address, no grpc-js log line', async () => {
    const pki = await makePki();
    dirs.push(pki.dir);
    const blocker = createServer();
    const port = await new Promise<number>((resolve) => blocker.listen(0, '127.0.0.1', () => resolve((blocker.address() as AddressInfo).port)));
    try {
      const r = await run(process.execPath, ['dist/server/main.js', '--pki', pki.dir, '--config', 'examples/machine-config.yaml', '--listen', `127.0.0.1:${port}`]);
      expect(r.stderr).toBe(`cosid: cannot listen on 127.0.0.1:${port}: the address is already in use (is another cosid running? choose another address with --listen)\n`);
      expect(r.code).toBe(1);
    } finally {
      blocker.close();
    }
  });

  it('a machine config that cannot be read: exit 1, one line naming the file, nothing served', async () => {
    const pki = await makePki();
    dirs.push(pki.dir);
    const port = await freePort();
    const missing = join(pki.dir, 'no-such-machine.yaml');
    const r = await run(process.execPath, ['dist/server/main.js', '--pki', pki.dir, '--config', missing, '--listen', `127.0.0.1:${port}`]);
    expect(r.stderr).toBe(`cosid: cannot read the machine config ${missing}: no such file (ENOENT)\n`);
    expect(r.code).toBe(1);
    const dir = await run(process.execPath, ['dist/server/main.js', '--pki', pki.dir, '--config', pki.dir, '--listen', `127.0.0.1:${port}`]);
    expect(dir.stderr).toBe(`cosid: cannot read the machine config ${pki.dir}: a directory, not a file (EISDIR)\n`);
    expect(dir.code).toBe(1);
  });
});

describe('cosid --version, --help and usage errors', () => {
  it('--version prints the package version and exits 0; --help prints the usage and exits 0', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const v = await run(process.execPath, ['dist/server/main.js', '--version']);
    expect(v).toEqual({ code: 0, stdout: `cosid ${pkg.version}\n`, stderr: '' });
    const h = await run(process.execPath, ['dist/server/main.js', '--help']);
    expect(h.code).toBe(0);
    expect(h.stderr).toBe('');
    expect(h.stdout).toMatch(/^Usage: cosid --pki DIR --config MACHINE\.yaml \[flags\]\n/);
    expect(h.stdout).toContain('  --version                 print cosid\'s version and exit\n');
  });

  it('every mistake in the command line exits 2 with one line saying what is wrong', async () => {
    const pki = await makePki();
    dirs.push(pki.dir);
    const base = ['dist/server/main.js', '--pki', pki.dir, '--config', 'examples/machine-config.yaml', '--listen', '127.0.0.1:0'];
    const cases: [string[], string][] = [
      [['--store', 'disk'], 'cosid: unknown --store "disk": use memory or etcd\n'],
      [['--kubelet-cert', join(pki.dir, 'admin.crt')], 'cosid: --kubelet-cert and --kubelet-key go together\n'],
      [['--kubelet-interval', 'soon'], 'cosid: invalid duration "soon": use for example 15s or 500ms\n'],
      [['--etcd-insecure'], 'cosid: --etcd-insecure needs --store etcd\n'],
    ];
    for (const [extra, message] of cases) {
      const r = await run(process.execPath, [...base, ...extra]);
      expect({ args: extra, code: r.code, stderr: r.stderr }).toEqual({ args: extra, code: 2, stderr: message });
    }
  });
});

describe('cosid command line', () => {
  it('explains a missing PKI and a broken config, and exits non-zero', async () => {
    const missing = await run(process.execPath, ['dist/server/main.js', '--pki', '/nonexistent', '--config', 'examples/machine-config.yaml']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/cannot read \/nonexistent\/ca\.crt: ENOENT \(create the PKI with: cosictl gen pki --out \/nonexistent\)/);
    const usage = await run(process.execPath, ['dist/server/main.js']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('--pki and --config are required');
  });
});
