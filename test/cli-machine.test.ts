// cosictl containers and logs as a user runs them: the compiled binary, real cosids with real mTLS, and no containerd:
// one cosid points at a socket that does not exist, the other at a small stand-in CRI server on a unix socket.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { spawn } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LineMerger } from '../client/cli/logs.js';
import { Cosid } from '../server/cosid.js';
import { PROTO_DIR } from '../shared/wire.js';
import { makePki, type TestPki } from './harness.js';

const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');
const MISSING_SOCKET = '/nonexistent/containerd.sock';
const NGINX_ID = '4183a7d7a771' + 'a'.repeat(52);
const SIDECAR_ID = '9b1c0ffee000' + 'b'.repeat(52);
const ETCD_ID = 'e7cd00000001' + 'c'.repeat(52);

let pki: TestPki;
let tmp: string;
let kubeletLog: string;
let nginxLog: Buffer;
/** A cosid whose container runtime socket does not exist (node-1). */
let bare: Cosid;
/** A cosid in front of the stand-in CRI server (node-2). */
let withCri: Cosid;
let cri: grpc.Server;

beforeAll(async () => {
  pki = await makePki();
  tmp = await mkdtemp(join(tmpdir(), 'cosi-cli-machine-'));
  kubeletLog = join(tmp, 'kubelet.log');
  await writeFile(kubeletLog, ['{"msg":"one"}', '{"msg":"two"}', '{"msg":"three"}', '{"msg":"Could not process manifest file","err":"invalid pod: [spec.containers: Required value]"}', ''].join('\n'));
  const podLogs = join(tmp, 'pods');
  const nginxDir = join(podLogs, 'default_nginx-node-2_uid-1', 'nginx');
  await mkdir(nginxDir, { recursive: true });
  // As stored: CRI lines, bytes that are not UTF-8, a line longer than a chunk of the stream, no final newline.
  nginxLog = Buffer.concat([
    Buffer.from('2022-02-10T15:26:01.289208227Z stderr F 2022/02/10 15:26:01 [notice] 1#1: using the "epoll" event method\n'),
    Buffer.from('2022-02-10T15:26:01.2892466Z stdout F \xff\xfe raw\n', 'latin1'),
    Buffer.from(`2022-02-10T15:26:01.3Z stdout F ${'x'.repeat(200_000)}\n`),
    Buffer.from('2022-02-10T15:26:02Z stdout F last line without a newline'),
  ]);
  await writeFile(join(nginxDir, '0.log'), nginxLog);
  const socket = join(tmp, 'cri.sock');
  cri = await startFakeCri(socket, join(nginxDir, '0.log'));
  const tls = { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem };
  bare = await Cosid.start({ listen: '127.0.0.1:0', tls, nodeName: 'node-1', shutdownGraceMs: 1000, runtime: { criEndpoint: `unix://${MISSING_SOCKET}`, podLogsDir: podLogs, kubeletLog } });
  withCri = await Cosid.start({ listen: '127.0.0.1:0', tls, nodeName: 'node-2', shutdownGraceMs: 1000, runtime: { criEndpoint: `unix://${socket}`, podLogsDir: podLogs, kubeletLog } });
});

afterAll(async () => {
  await Promise.all([bare?.stop(), withCri?.stop()]);
  cri?.forceShutdown();
  await rm(tmp, { recursive: true, force: true });
  await rm(pki.dir, { recursive: true, force: true });
});

const endpointOf = (c: Cosid) => `127.0.0.1:${c.port}`;

interface Run {
  code: number | null;
  stdout: string;
  raw: Buffer;
  stderr: string;
}

/** Runs cosictl against `target` (-e endpoint) unless the args name nodes; `until` may act, and returns true to send Ctrl-C. */
function cosictl(args: string[], opts: { target?: Cosid; until?: (out: string) => boolean } = {}): Promise<Run> {
  const base = ['--cosiconfig', pki.cosiconfig, '-e', endpointOf(opts.target ?? bare)];
  const child = spawn(process.execPath, [CLI, ...base, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    chunks.push(d);
    if (opts.until?.(Buffer.concat(chunks).toString())) child.kill('SIGINT');
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      const raw = Buffer.concat(chunks);
      resolve({ code, stdout: raw.toString(), raw, stderr });
    }),
  );
}

const kubeletLines = () => readFileSync(kubeletLog, 'utf8').trimEnd().split('\n');

describe('cosictl containers -k', () => {
  it('prints talosctl\'s table: sandboxes, their containers below them, the PID (0 when not running)', async () => {
    const r = await cosictl(['containers', '-k'], { target: withCri });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        'NODE     NAMESPACE   ID                                             IMAGE                            PID    STATUS',
        'node-2   k8s.io      default/nginx-node-2                           registry.k8s.io/pause:3.6        4886   SANDBOX_READY',
        'node-2   k8s.io      └─ default/nginx-node-2:nginx:4183a7d7a771     docker.io/library/nginx:latest   4901   CONTAINER_RUNNING',
        'node-2   k8s.io      └─ default/nginx-node-2:sidecar:9b1c0ffee000   docker.io/library/busybox:1      0      CONTAINER_EXITED',
        'node-2   k8s.io      kube-system/etcd-node-2                        registry.k8s.io/pause:3.6        0      SANDBOX_NOTREADY',
        'node-2   k8s.io      └─ kube-system/etcd-node-2:etcd:e7cd00000001   registry.k8s.io/etcd:3.5         0      CONTAINER_EXITED',
        '',
      ].join('\n'),
    );
  });

  it('adds RESTARTS with -o wide (blank for a sandbox)', async () => {
    const r = await cosictl(['containers', '--kubernetes', '-o', 'wide'], { target: withCri });
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NODE\s+NAMESPACE\s+ID\s+IMAGE\s+PID\s+STATUS\s+RESTARTS$/);
    expect(lines[1]).toMatch(/SANDBOX_READY$/);
    expect(lines[3]).toMatch(/CONTAINER_EXITED\s+2$/);
  });

  it('fails with the socket path when the container runtime is not there', async () => {
    const r = await cosictl(['containers', '-k']);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(MISSING_SOCKET);
    expect(r.stderr).toMatch(/^error: container runtime at \/nonexistent\/containerd\.sock is unavailable/);
    expect(r.code).toBe(1);
  });

  it('asks each node of -n, labels rows with the -n name, and reports a failing node next to the others', async () => {
    const good = endpointOf(withCri);
    const r = await cosictl(['-n', `${good},${endpointOf(bare)}`, 'containers', '-k']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^error: node ${endpointOf(bare)}: container runtime at /nonexistent/containerd\\.sock is unavailable`));
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(6);
    for (const l of lines.slice(1)) expect(l.startsWith(`${good}   k8s.io   `)).toBe(true);
  });

  it.each([
    [['containers'], /Kubernetes containers only: use cosictl containers -k/],
    [['containers', '-k', 'extra'], /takes no arguments/],
    [['containers', '-k', '-f'], /-f does not apply to containers/],
    [['containers', '-k', '-o', 'json'], /-o "json" is not supported/],
  ])('usage error %j', async (args, message) => {
    const r = await cosictl(args);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toContain("run 'cosictl --help' for usage");
    expect(r.code).toBe(2);
  });
});

describe('cosictl logs kubelet', () => {
  it('prints every line prefixed with the node the server reports', async () => {
    const r = await cosictl(['logs', 'kubelet']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(kubeletLines().map((l) => `node-1: ${l}\n`).join(''));
  });

  it('--tail 2 prints the last two lines; --tail 0 none', async () => {
    const r = await cosictl(['logs', 'kubelet', '--tail', '2']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(kubeletLines().slice(-2).map((l) => `node-1: ${l}\n`).join(''));
    const none = await cosictl(['logs', 'kubelet', '--tail', '0']);
    expect(none.code).toBe(0);
    expect(none.stdout).toBe('');
  });

  it('-f prints a line written after it started, and Ctrl-C ends it with exit code 0', async () => {
    const appended = `{"msg":"appended ${Date.now()}"}`;
    let wrote = false;
    const r = await cosictl(['logs', 'kubelet', '-f', '--tail', '1'], {
      until: (out) => {
        if (!wrote && out.includes('\n')) {
          // The first line is out: the stream is open and at the end of the file.
          wrote = true;
          appendFileSync(kubeletLog, `${appended}\n`);
        }
        return out.includes(`node-1: ${appended}\n`);
      },
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`node-1: ${kubeletLines().at(-2) ?? ''}\nnode-1: ${appended}\n`);
  });

  it('merges the lines of several nodes, each whole and labelled with its -n name; a down node is reported', async () => {
    const a = endpointOf(bare);
    const b = endpointOf(withCri);
    const r = await cosictl(['-n', `${a},${b},127.0.0.1:1`, 'logs', 'kubelet']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: node 127\.0\.0\.1:1: /);
    const lines = r.stdout.trimEnd().split('\n');
    const expected = kubeletLines();
    expect(lines.filter((l) => l.startsWith(`${a}: `))).toEqual(expected.map((l) => `${a}: ${l}`));
    expect(lines.filter((l) => l.startsWith(`${b}: `))).toEqual(expected.map((l) => `${b}: ${l}`));
    expect(lines).toHaveLength(expected.length * 2);
  });
});

describe('cosictl logs -k', () => {
  it('prints a container log as stored: raw bytes, one prefix per line however it was chunked, a newline at the end', async () => {
    const r = await cosictl(['logs', '-k', 'default/nginx-node-2:nginx:4183a7d7a771'], { target: withCri });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const expected = Buffer.concat(
      splitLines(nginxLog).flatMap((line) => [Buffer.from('node-2: '), line, Buffer.from('\n')]),
    );
    expect(r.raw.equals(expected)).toBe(true);
    expect(r.stdout.split('\n')[0]).toBe('node-2: 2022-02-10T15:26:01.289208227Z stderr F 2022/02/10 15:26:01 [notice] 1#1: using the "epoll" event method');
  });

  it('a container ID without its short ID means the latest instance', async () => {
    const r = await cosictl(['logs', '-k', 'default/nginx-node-2:nginx', '--tail', '1'], { target: withCri });
    expect(r.stdout).toBe('node-2: 2022-02-10T15:26:02Z stdout F last line without a newline\n');
  });

  it('an unknown container is an error naming the containers there are', async () => {
    const r = await cosictl(['logs', '-k', 'default/nginx-node-2:nope'], { target: withCri });
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: container default\/nginx-node-2:nope not found; containers: default\/nginx-node-2:nginx:4183a7d7a771, /);
    expect(r.code).toBe(1);
  });

  it('an ID that is not a container ID is refused by the server', async () => {
    const r = await cosictl(['logs', '-k', 'default/../etc:x']);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: invalid container ID "default\/\.\.\/etc:x": use <namespace>\/<pod>:<container>/);
    expect(r.code).toBe(1);
  });

  it.each([
    [['logs', 'foo'], /without -k the only log is the kubelet's \(cosictl logs kubelet\), not "foo"; for a container's log use -k/],
    [['logs'], /logs needs an ID/],
    [['logs', 'kubelet', 'extra'], /takes one ID/],
    [['logs', '-k', 'kubelet'], /the kubelet's log is cosictl logs kubelet \(without -k\)/],
    [['logs', 'kubelet', '--tail', 'x'], /--tail needs a number of lines/],
    [['logs', 'kubelet', '--tail=-1'], /--tail needs a number of lines/],
    [['logs', 'kubelet', '-w'], /-w does not apply to logs/],
  ])('usage error %j', async (args, message) => {
    const r = await cosictl(args);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.code).toBe(2);
  });
});

describe('LineMerger', () => {
  const collect = () => {
    const out: Buffer[] = [];
    return { out, text: () => Buffer.concat(out).toString(), write: (b: Buffer) => (out.push(b), Promise.resolve()) };
  };

  it('prefixes each line once and never mixes two nodes within a line', async () => {
    const o = collect();
    const m = new LineMerger(o.write);
    const a = m.node(() => 'a');
    const b = m.node(() => 'b');
    await a.push(Buffer.from('one\ntw'));
    await b.push(Buffer.from('x\ny'));
    await a.push(Buffer.from('o\n'));
    await b.push(Buffer.from('y'));
    await b.push(Buffer.from('\n'));
    await a.push(Buffer.from('unfinished'));
    await a.end();
    await b.end();
    expect(o.text()).toBe('a: one\nb: x\na: two\nb: yy\na: unfinished\n');
  });

  it('writes a line longer than the carry limit as it comes, holding the other nodes until it ends', async () => {
    const o = collect();
    const m = new LineMerger(o.write, 8);
    const a = m.node(() => 'a');
    const b = m.node(() => 'b');
    await a.push(Buffer.from('aaaaaaaaaaaa'));
    expect(o.text()).toBe('a: aaaaaaaaaaaa');
    const bDone = b.push(Buffer.from('zz\n'));
    await new Promise((r) => setImmediate(r));
    expect(o.text()).toBe('a: aaaaaaaaaaaa');
    await a.push(Buffer.from('bb\nc'));
    await bDone;
    await a.end();
    expect(o.text()).toBe('a: aaaaaaaaaaaabb\nb: zz\na: c\n');
  });
});

/** Lines without their newline; a last line without one counts. */
function splitLines(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = b.indexOf(0x0a); i >= 0; i = b.indexOf(0x0a, start)) {
    out.push(b.subarray(start, i));
    start = i + 1;
  }
  if (start < b.length) out.push(b.subarray(start));
  return out;
}

/** A stand-in for containerd's CRI service: what cosid asks to list containers and find a log. */
async function startFakeCri(socket: string, nginxLogPath: string): Promise<grpc.Server> {
  const def = protoLoader.loadSync(join(PROTO_DIR, 'runtime', 'v1', 'api.proto'), { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } } };
  const meta = (namespace: string, name: string) => ({ name, uid: `uid-${name}`, namespace, attempt: 0 });
  const sandboxes = [
    { id: 'sb-etcd', metadata: meta('kube-system', 'etcd-node-2'), state: 'SANDBOX_NOTREADY', createdAt: '100', labels: {}, annotations: { 'kubernetes.io/config.source': 'file' } },
    { id: 'sb-nginx', metadata: meta('default', 'nginx-node-2'), state: 'SANDBOX_READY', createdAt: '200', labels: {}, annotations: { 'kubernetes.io/config.source': 'file' } },
  ];
  const containers = [
    { id: SIDECAR_ID, podSandboxId: 'sb-nginx', metadata: { name: 'sidecar', attempt: 2 }, image: { image: 'docker.io/library/busybox:1' }, state: 'CONTAINER_EXITED', createdAt: '210', pid: 77 },
    { id: NGINX_ID, podSandboxId: 'sb-nginx', metadata: { name: 'nginx', attempt: 0 }, image: { image: 'docker.io/library/nginx:latest' }, state: 'CONTAINER_RUNNING', createdAt: '220', pid: 4901 },
    { id: ETCD_ID, podSandboxId: 'sb-etcd', metadata: { name: 'etcd', attempt: 5 }, image: { image: 'registry.k8s.io/etcd:3.5' }, state: 'CONTAINER_EXITED', createdAt: '110', pid: 0 },
  ];
  const server = new grpc.Server();
  type Call = grpc.ServerUnaryCall<Record<string, string>, unknown>;
  server.addService(pkg.runtime.v1.RuntimeService.service, {
    ListPodSandbox: (_call: Call, cb: grpc.sendUnaryData<unknown>) => cb(null, { items: sandboxes }),
    ListContainers: (_call: Call, cb: grpc.sendUnaryData<unknown>) => cb(null, { containers: containers.map(({ pid: _pid, ...c }) => c) }),
    PodSandboxStatus: (call: Call, cb: grpc.sendUnaryData<unknown>) => {
      const s = sandboxes.find((x) => x.id === call.request['podSandboxId']);
      if (s === undefined) return cb({ code: grpc.status.NOT_FOUND, details: 'no such sandbox' });
      cb(null, { status: { id: s.id, metadata: s.metadata, state: s.state }, info: { info: JSON.stringify({ pid: s.id === 'sb-nginx' ? 4886 : 0, image: 'registry.k8s.io/pause:3.6' }) } });
    },
    ContainerStatus: (call: Call, cb: grpc.sendUnaryData<unknown>) => {
      const c = containers.find((x) => x.id === call.request['containerId']);
      if (c === undefined) return cb({ code: grpc.status.NOT_FOUND, details: 'no such container' });
      const logPath = c.id === NGINX_ID ? nginxLogPath : join(tmp, 'pods', 'absent.log');
      cb(null, { status: { id: c.id, metadata: c.metadata, state: c.state, image: c.image, logPath }, info: { info: JSON.stringify({ pid: c.pid }) } });
    },
  });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  return server;
}
