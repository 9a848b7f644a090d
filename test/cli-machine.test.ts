// cosictl containers and logs as a user runs them: the compiled binary and real cosids with real mTLS.
// node-1's cosid points at a container runtime socket that does not exist. node-2's cosid is in front of the REAL
// containerd shared by the test run (test/cri/global-setup.ts), on which the kubelet simulator's runtime
// (CriPodRuntime) runs real busybox pods: one that wrote a log with non-UTF-8 bytes and a 200 KB line, one whose
// container failed twice and then exited 0 (restartPolicy OnFailure), and one whose sandbox was stopped.
// Other test files may run pods on the same containerd at the same time: the assertions look at this file's rows
// (namespace cli-machine) and never count the runtime's other pods. COSI_TEST_CRI=off skips what needs containerd.
import { spawn } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { LineMerger } from '../client/cli/logs.js';
import { Cosid } from '../server/cosid.js';
import { CriClient } from '../node-sim/kubelet/cri-client.js';
import type { Json } from '../shared/wire.js';
import { eventually, makePki, type TestPki } from './harness.js';
import { CriPodRuntime, type DesiredPod } from '../node-sim/kubelet/cri-runtime.js';

const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');
const MISSING_SOCKET = '/nonexistent/containerd.sock';

const cri = inject('cri');
const itCri = cri === null ? it.skip : it;

/** The Kubernetes namespace of this file's pods: no other test file uses it. */
const NS = 'cli-machine';
const LONG_LINE_BYTES = 200_000;
type JsonObject = { [key: string]: Json };

/** A static pod of node-2 whose one container runs `script` under busybox sh (stopping at once on SIGTERM). */
function shellPod(name: string, container: string, script: string, restartPolicy: 'Always' | 'OnFailure' | 'Never'): DesiredPod {
  const podName = `${name}-node-2`;
  const source: JsonObject = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: podName, namespace: NS },
    spec: {
      restartPolicy,
      terminationGracePeriodSeconds: 2,
      containers: [{ name: container, image: cri?.images.busybox ?? 'busybox', command: ['/bin/sh', '-c', `trap 'exit 0' TERM; ${script}`] }],
    },
  };
  return { key: `${NS}/${podName}`, namespace: NS, name: podName, uid: `${name}-${process.pid}`, source, annotations: { 'kubernetes.io/config.source': 'file' } };
}

// Writes its log at once, then idles: a stderr line, bytes that are not UTF-8, a line the runtime splits into P records.
const APP = shellPod(
  'app',
  'app',
  `echo "starting app" >&2; printf '\\377\\376 raw\\n'; head -c ${LONG_LINE_BYTES} /dev/zero | tr '\\000' x; echo; echo end; sleep 2147483647 & wait`,
  'Always',
);
// Fails twice, then exits 0: two instances stay (the runtime keeps the last one that ended), restart counts 1 and 2.
// /dev/shm is the sandbox's (IPC namespace of the pod), so the count survives from one instance to the next.
const CRASH = shellPod(
  'crash',
  'crash',
  'n=$(cat /dev/shm/n 2>/dev/null || echo 0); echo $((n+1)) > /dev/shm/n; if [ "$n" -ge 2 ]; then echo "attempt $n: done"; exit 0; fi; echo "attempt $n: failing" >&2; exit 3',
  'OnFailure',
);
// Idles until its sandbox is stopped (then SANDBOX_NOTREADY, its container exited).
const STOPPED = shellPod('stopped', 'idle', 'sleep 2147483647 & wait', 'Never');

let pki: TestPki;
let tmp: string;
let podLogs: string;
let kubeletLog: string;
/** A cosid whose container runtime socket does not exist (node-1). */
let bare: Cosid;
/** A cosid in front of the test run's real containerd (node-2); without one (COSI_TEST_CRI=off), a missing socket. */
let node2: Cosid;
/** The kubelet simulator's runtime: runs node-2's pods on the real containerd. */
let runtime: CriPodRuntime | undefined;
const runtimeLog: string[] = [];

/** What the runtime really runs for node-2's pods, read from the runtime once they have settled. */
interface Settled {
  app: { sandboxId: string; sandboxPid: number; id: string; pid: number; logPath: string };
  crash: { sandboxId: string; sandboxPid: number; failedId: string; doneId: string; failedLog: string; doneLog: string };
  stopped: { sandboxId: string; id: string };
}
let real: Settled;

beforeAll(async () => {
  pki = await makePki();
  tmp = await mkdtemp(join(tmpdir(), 'cosi-cli-machine-'));
  kubeletLog = join(tmp, 'kubelet.log');
  await writeFile(kubeletLog, ['{"msg":"one"}', '{"msg":"two"}', '{"msg":"three"}', '{"msg":"Could not process manifest file","err":"invalid pod: [spec.containers: Required value]"}', ''].join('\n'));
  podLogs = join(tmp, 'pods');
  const tls = { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem };
  // The endpoint the CLI dials: it passes calls naming node2 (-n) on, with the PKI's impersonator certificate.
  const impersonator = { caPem: pki.ca.certPem, certPem: pki.impersonator.certPem, keyPem: pki.impersonator.keyPem };
  bare = await Cosid.start({ listen: '127.0.0.1:0', tls, impersonator, nodeName: 'node-1', shutdownGraceMs: 1000, runtime: { criEndpoint: `unix://${MISSING_SOCKET}`, podLogsDir: podLogs, kubeletLog } });
  node2 = await Cosid.start({ listen: '127.0.0.1:0', tls, nodeName: 'node-2', shutdownGraceMs: 1000, runtime: { criEndpoint: cri?.endpoint ?? `unix://${MISSING_SOCKET}`, podLogsDir: podLogs, kubeletLog } });
  if (cri === null) return;
  const rt = new CriPodRuntime({ endpoint: cri.endpoint, podLogsDir: podLogs, cgroupParent: cri.cgroupParent, restartBackoffMs: 200, log: (l) => runtimeLog.push(l) });
  runtime = rt;
  await rt.apply([APP, CRASH, STOPPED]);
  real = await settle(rt);
}, 120_000);

afterAll(async () => {
  let left: string[] = [];
  try {
    await runtime?.stopAll();
    if (cri !== null) {
      // Everything this file started is gone from the runtime (other files' pods are theirs).
      const check = new CriClient(cri.endpoint);
      try {
        left = (await check.listPodSandboxes()).filter((s) => s.metadata.namespace === NS).map((s) => `${NS}/${s.metadata.name} ${s.id}`);
      } finally {
        check.close();
      }
    }
  } finally {
    await Promise.all([bare?.stop(), node2?.stop()]);
    if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
    if (pki !== undefined) await rm(pki.dir, { recursive: true, force: true });
  }
  expect(left).toEqual([]);
}, 120_000);

/** Waits (relisting as the kubelet does) until APP has written its whole log, CRASH has exited 0, STOPPED's sandbox is stopped. */
async function settle(rt: CriPodRuntime): Promise<Settled> {
  const why = (msg: string) => new Error(`${msg}\nruntime: ${runtimeLog.slice(-10).join('\n')}`);
  const sandboxOf = async (pod: DesiredPod) => {
    const s = (await rt.cri.listPodSandboxes()).find((x) => x.metadata.namespace === NS && x.metadata.name === pod.name);
    if (s === undefined) throw why(`no sandbox for ${pod.key}`);
    return s;
  };
  const statusOf = (pod: DesiredPod) => {
    const cs = (rt.podStatus(pod.key)?.['containerStatuses'] as JsonObject[] | undefined)?.[0];
    if (cs === undefined) throw why(`no status for ${pod.key}`);
    return cs as { containerID?: string; restartCount: number; state: { running?: JsonObject; terminated?: { exitCode: number; containerID: string } }; lastState?: { terminated?: { exitCode: number; containerID: string } } };
  };
  const idOf = (containerID: string | undefined) => (containerID ?? '').replace(/^containerd:\/\//, '');

  const app = await eventually(async () => {
    await rt.sync();
    const cs = statusOf(APP);
    if (cs.state.running === undefined) throw why(`app is not running: ${JSON.stringify(cs)}`);
    const id = idOf(cs.containerID);
    const { status, pid } = await rt.cri.containerStatus(id);
    const log = await readFile(status.logPath).catch(() => Buffer.alloc(0));
    if (!log.includes(' stderr F starting app\n') || !log.includes(' stdout F end\n')) throw why(`the log of app is not complete yet (${log.length} bytes)`);
    const sb = await sandboxOf(APP);
    return { sandboxId: sb.id, sandboxPid: (await rt.cri.podSandboxStatus(sb.id)).pid, id, pid, logPath: status.logPath };
  }, 60_000);

  const crash = await eventually(async () => {
    await rt.sync();
    const cs = statusOf(CRASH);
    const done = cs.state.terminated;
    if (cs.restartCount !== 2 || done?.exitCode !== 0 || cs.lastState?.terminated?.exitCode !== 3) throw why(`crash has not settled: ${JSON.stringify(cs)}`);
    const failedId = idOf(cs.lastState.terminated.containerID);
    const doneId = idOf(done.containerID);
    const sb = await sandboxOf(CRASH);
    return {
      sandboxId: sb.id,
      sandboxPid: (await rt.cri.podSandboxStatus(sb.id)).pid,
      failedId,
      doneId,
      failedLog: (await rt.cri.containerStatus(failedId)).status.logPath,
      doneLog: (await rt.cri.containerStatus(doneId)).status.logPath,
    };
  }, 60_000);

  const sb = await eventually(() => sandboxOf(STOPPED), 60_000);
  const idle = await eventually(async () => {
    const c = (await rt.cri.listContainers({ podSandboxId: sb.id })).find((x) => x.metadata.name === 'idle');
    if (c?.state !== 'CONTAINER_RUNNING') throw why(`idle is not running: ${JSON.stringify(c)}`);
    return c;
  }, 60_000);
  await rt.cri.stopPodSandbox(sb.id);
  await eventually(async () => {
    await rt.sync();
    const s = await rt.cri.podSandboxStatus(sb.id);
    const c = await rt.cri.containerStatus(idle.id);
    if (s.status.state !== 'SANDBOX_NOTREADY' || c.status.state !== 'CONTAINER_EXITED') throw why(`stopped is not stopped yet: ${s.status.state} ${c.status.state}`);
  }, 60_000);
  return { app, crash, stopped: { sandboxId: sb.id, id: idle.id } };
}

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

const short = (id: string) => id.slice(0, 12);
const PID = /^[1-9]\d*$/;

/**
 * A table's rows cut at the header's column starts. Each cell must start at its column and (but the last) be
 * followed by at least talosctl's 3 spaces of padding, whatever other rows widened the column to.
 */
function cells(table: string): { header: string[]; rows: string[][] } {
  const [head = '', ...lines] = table.trimEnd().split('\n');
  const starts = [...head.matchAll(/\S+/g)].map((m) => m.index);
  const cut = (line: string) =>
    starts.map((s, i) => {
      const next = starts[i + 1];
      const cell = line.slice(s, next);
      const padded = next !== undefined && line.length > next;
      if (padded && cell.trim() !== '' && !/^\S(.*\S)? {3,}$/.test(cell)) throw new Error(`misaligned column ${i} in ${JSON.stringify(line)}`);
      if (s > 0 && cell.trim() !== '' && line[s - 1] !== ' ') throw new Error(`column ${i} does not start at ${s} in ${JSON.stringify(line)}`);
      return cell.trimEnd();
    });
  return { header: cut(head), rows: lines.map(cut) };
}

/** This file's rows (namespace cli-machine), which `containers -k` lists together: one pod namespace sorts as a block. */
function ours(rows: string[][]): string[][] {
  const mine = rows.map((r, i) => [r, i] as const).filter(([r]) => /^(└─ )?cli-machine\//.test(r[2] ?? ''));
  const first = mine[0]?.[1] ?? 0;
  expect(mine.map(([, i]) => i)).toEqual(mine.map((_, k) => first + k));
  return mine.map(([r]) => r);
}

/** The rows node-2's pods make, as the runtime runs them. */
function expectedRows(node: string): string[][] {
  const pause = cri?.images.pause ?? '';
  const busybox = cri?.images.busybox ?? '';
  const { app, crash, stopped } = real;
  return [
    [node, 'k8s.io', `${NS}/app-node-2`, pause, String(app.sandboxPid), 'SANDBOX_READY'],
    [node, 'k8s.io', `└─ ${NS}/app-node-2:app:${short(app.id)}`, busybox, String(app.pid), 'CONTAINER_RUNNING'],
    [node, 'k8s.io', `${NS}/crash-node-2`, pause, String(crash.sandboxPid), 'SANDBOX_READY'],
    [node, 'k8s.io', `└─ ${NS}/crash-node-2:crash:${short(crash.failedId)}`, busybox, '0', 'CONTAINER_EXITED'],
    [node, 'k8s.io', `└─ ${NS}/crash-node-2:crash:${short(crash.doneId)}`, busybox, '0', 'CONTAINER_EXITED'],
    [node, 'k8s.io', `${NS}/stopped-node-2`, pause, '0', 'SANDBOX_NOTREADY'],
    [node, 'k8s.io', `└─ ${NS}/stopped-node-2:idle:${short(stopped.id)}`, busybox, '0', 'CONTAINER_EXITED'],
  ];
}

describe('cosictl containers -k', () => {
  itCri("prints talosctl's table: sandboxes, their containers below them, the PID (0 when not running)", async () => {
    const r = await cosictl(['containers', '-k'], { target: node2 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^NODE {3,}NAMESPACE {3}ID {3,}IMAGE {3,}PID {3,}STATUS$/);
    expect(r.stdout.endsWith('\n')).toBe(true);
    const { header, rows } = cells(r.stdout);
    expect(header).toEqual(['NODE', 'NAMESPACE', 'ID', 'IMAGE', 'PID', 'STATUS']);
    const mine = ours(rows);
    expect(mine).toEqual(expectedRows('node-2'));
    // Real processes: the PIDs of what runs are numbers the runtime reports, and live.
    for (const pid of [mine[0]?.[4], mine[1]?.[4], mine[2]?.[4]]) {
      expect(pid).toMatch(PID);
      expect(readFileSync(`/proc/${pid ?? ''}/stat`, 'utf8')).toMatch(/^\d+ \(/);
    }
    // Container rows name their container by its short ID: 12 hex digits.
    for (const row of mine.filter((x) => x[2]?.startsWith('└─ '))) expect(row[2]).toMatch(/^└─ cli-machine\/[a-z-]+-node-2:[a-z]+:[0-9a-f]{12}$/);
  });

  itCri('adds RESTARTS with -o wide (blank for a sandbox)', async () => {
    const r = await cosictl(['containers', '--kubernetes', '-o', 'wide'], { target: node2 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^NODE\s+NAMESPACE\s+ID\s+IMAGE\s+PID\s+STATUS\s+RESTARTS$/);
    const { header, rows } = cells(r.stdout);
    expect(header).toEqual(['NODE', 'NAMESPACE', 'ID', 'IMAGE', 'PID', 'STATUS', 'RESTARTS']);
    const restarts = ['', '0', '', '1', '2', '', '0'];
    expect(ours(rows)).toEqual(expectedRows('node-2').map((row, i) => [...row, restarts[i]]));
  });

  it('fails with the socket path when the container runtime is not there', async () => {
    const r = await cosictl(['containers', '-k']);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(MISSING_SOCKET);
    expect(r.stderr).toMatch(/^error: container runtime at \/nonexistent\/containerd\.sock is unavailable/);
    expect(r.code).toBe(1);
  });

  itCri('asks each node of -n, labels rows with the -n name, and reports a failing node next to the others', async () => {
    const good = endpointOf(node2);
    const r = await cosictl(['-n', `${good},${endpointOf(bare)}`, 'containers', '-k']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^error: node ${endpointOf(bare)}: container runtime at /nonexistent/containerd\\.sock is unavailable`));
    const lines = r.stdout.trimEnd().split('\n');
    for (const l of lines.slice(1)) expect(l.startsWith(`${good}   k8s.io   `)).toBe(true);
    const { header, rows } = cells(r.stdout);
    expect(header).toEqual(['NODE', 'NAMESPACE', 'ID', 'IMAGE', 'PID', 'STATUS']);
    expect(ours(rows)).toEqual(expectedRows(good));
  });

  itCri('ends quietly with exit code 0 on a pipe whose reader has gone (cosictl containers -k | head), as logs -k does', async () => {
    /** Runs cosictl with its stdout a pipe closed at once, or after the first chunk. */
    const closing = (args: string[], when: 'at once' | 'after the first chunk') =>
      new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, '--cosiconfig', pki.cosiconfig, '-e', endpointOf(node2), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        if (when === 'at once') child.stdout.destroy();
        else child.stdout.once('data', () => child.stdout.destroy());
        const kill = setTimeout(() => child.kill('SIGKILL'), 45_000);
        child.on('close', (code, signal) => {
          clearTimeout(kill);
          resolve({ code, signal, stderr });
        });
      });
    for (let i = 0; i < 3; i++) {
      // The table is one write: it meets a pipe already closed.
      expect(await closing(['containers', '-k'], 'at once')).toEqual({ code: 0, signal: null, stderr: '' });
      // app's log holds a 200 KB line: more than a pipe holds, so the rest meets the closed pipe.
      expect(await closing(['logs', '-k', `${NS}/app-node-2:app`], 'after the first chunk')).toEqual({ code: 0, signal: null, stderr: '' });
    }
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
    expect(r.stderr).toContain("run 'cosictl containers --help' for usage");
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
    const b = endpointOf(node2);
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
  /** What cosictl prints for a log file: each of its lines prefixed with the node, and a newline. */
  const prefixed = (stored: Buffer, node = 'node-2') => Buffer.concat(splitLines(stored).flatMap((line) => [Buffer.from(`${node}: `), line, Buffer.from('\n')]));

  itCri('prints a container log as stored: raw bytes, one prefix per line however it was chunked, a newline at the end', async () => {
    const r = await cosictl(['logs', '-k', `${NS}/app-node-2:app:${short(real.app.id)}`], { target: node2 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    // Byte for byte what the runtime stored, read from the file after the container wrote its last line.
    const stored = await readFile(real.app.logPath);
    expect(r.raw.equals(prefixed(stored))).toBe(true);
    expect(r.stdout.endsWith(' stdout F end\n')).toBe(true);
    // What the container wrote arrived: its stderr line, the bytes that are not UTF-8, the long line in P records.
    const lines = splitLines(r.raw);
    expect(lines.filter((l) => /^node-2: \S+Z stderr F starting app$/.test(l.toString()))).toHaveLength(1);
    const rawLine = lines.find((l) => l.includes(Buffer.from(' stdout F \xff\xfe raw', 'latin1')));
    expect(rawLine?.toString('latin1')).toMatch(/^node-2: \S+Z stdout F \xff\xfe raw$/);
    const long = lines.map((l) => l.toString()).filter((l) => / stdout [PF] x+$/.test(l));
    expect(long.length).toBeGreaterThan(LONG_LINE_BYTES / (16 << 10));
    for (const l of long.slice(0, -1)) expect(l).toMatch(/^node-2: \S+Z stdout P x+$/);
    expect(long.at(-1)).toMatch(/^node-2: \S+Z stdout F x+$/);
    expect(long.map((l) => l.replace(/^node-2: \S+ stdout [PF] /, '')).join('')).toBe('x'.repeat(LONG_LINE_BYTES));
  });

  itCri('a container ID without its short ID means the latest instance', async () => {
    const latest = await cosictl(['logs', '-k', `${NS}/crash-node-2:crash`, '--tail', '1'], { target: node2 });
    expect(latest.stderr).toBe('');
    expect(latest.code).toBe(0);
    const done = await readFile(real.crash.doneLog);
    expect(latest.raw.equals(prefixed(splitLines(done).at(-1) ?? Buffer.alloc(0)))).toBe(true);
    expect(latest.stdout).toMatch(/^node-2: \S+Z stdout F attempt 2: done\n$/);
    // The instance before it is there too, by its short ID.
    const failed = await cosictl(['logs', '-k', `${NS}/crash-node-2:crash:${short(real.crash.failedId)}`], { target: node2 });
    expect(failed.code).toBe(0);
    expect(failed.raw.equals(prefixed(await readFile(real.crash.failedLog)))).toBe(true);
    expect(failed.stdout).toMatch(/^node-2: \S+Z stderr F attempt 1: failing\n$/);
  });

  itCri('an unknown container is an error naming the containers there are', async () => {
    const r = await cosictl(['logs', '-k', `${NS}/app-node-2:nope`], { target: node2 });
    expect(r.stdout).toBe('');
    const m = /^error: container cli-machine\/app-node-2:nope not found; containers: (.*)$/m.exec(r.stderr);
    expect(m, r.stderr).not.toBeNull();
    const named = (m?.[1] ?? '').split(', ');
    const { app, crash, stopped } = real;
    expect(named).toEqual(
      expect.arrayContaining([
        `${NS}/app-node-2:app:${short(app.id)}`,
        `${NS}/crash-node-2:crash:${short(crash.failedId)}`,
        `${NS}/crash-node-2:crash:${short(crash.doneId)}`,
        `${NS}/stopped-node-2:idle:${short(stopped.id)}`,
      ]),
    );
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
