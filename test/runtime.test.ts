// Containers and logs of static pods on a REAL containerd (one per test run: test/cri/global-setup.ts), run by the
// kubelet simulator through CRI, seen through cosid's machine.MachineService with real mTLS.
import { appendFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { isCosiError, type CosiClient } from '../client/index.js';
import type { ContainerInfo } from '../client/machine.js';
import { CONTAINERS_ANNOTATION } from '../server/resources/k8s.js';
import { CriClient } from '../node-sim/kubelet/cri-client.js';
import type { Json } from '../shared/wire.js';
import { eventually } from './harness.js';
import { machineConfig, NODE, startNode, type TestNode } from './pipeline-harness.js';

const cri = inject('cri');
const describeCri = cri === null ? describe.skip : describe;

/** A pod whose container runs `script` under busybox sh, stopping at once on SIGTERM (sh as PID 1 ignores it). */
function shellPod(name: string, script: string, extra: Record<string, Json> = {}): Json {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, labels: { app: name } },
    spec: {
      terminationGracePeriodSeconds: 2,
      containers: [{ name, image: cri?.images.busybox ?? 'busybox', command: ['/bin/sh', '-c', `trap 'exit 0' TERM; ${script}`] }],
      ...extra,
    },
  };
}

// Numbered lines, 20 a second, so order, loss and repeats can be checked.
const counter = shellPod('counter', 'i=0; while true; do i=$((i+1)); echo "line $i"; sleep 0.05; done');
const web = shellPod('web', 'mkdir -p /www && echo hello > /www/index.html && httpd -f -p 127.0.0.1:0 -h /www & wait');
// Exits with 3 shortly after its first start; restarted by restartPolicy Always (a new log file), it runs on. The
// mark in /dev/shm outlives the container: the pod's IPC namespace, hence its shm, is the sandbox's.
const crasher = shellPod(
  'crasher',
  'if [ -f /dev/shm/crashed ]; then echo "started again"; while true; do sleep 1; done; fi; touch /dev/shm/crashed; echo "started"; sleep 0.5; echo "dying" >&2; exit 3',
);
// One 40,000-byte line: the runtime splits it into P (partial) records and a final F record.
const longLine = shellPod('longline', 'head -c 40000 /dev/zero | tr "\\000" x; echo; while true; do sleep 1; done');

async function collect(it: AsyncIterable<Buffer>, until: (text: string) => boolean): Promise<string> {
  let text = '';
  for await (const chunk of it) {
    text += chunk.toString('utf8');
    if (until(text)) break;
  }
  return text;
}

/** This file's pods (the containerd is shared with other test files). */
const ours = (s: { metadata: { namespace: string; name: string } }) => s.metadata.namespace === 'default' && s.metadata.name.endsWith(`-${NODE}`);

const CRI_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z (stdout|stderr) [PF] /;

describeCri('containers and logs on a real containerd', () => {
  let n: TestNode;
  let client: CosiClient;
  let kubeletLog: string;

  const running = async (): Promise<ContainerInfo[]> => {
    const all = await client.containers();
    for (const name of ['counter', 'web', 'crasher', 'longline']) {
      // The crasher's first instance runs only until it crashes: running means its restarted one.
      const c = all.find((x) => x.podId === `default/${name}-${NODE}` && x.id !== x.podId && x.status === 'CONTAINER_RUNNING' && (name !== 'crasher' || x.restartCount >= 1));
      if (c === undefined) throw new Error(`${name} is not running yet: ${all.map((x) => `${x.id} ${x.status}`).join(', ')}`);
    }
    return all;
  };

  beforeAll(async () => {
    if (cri === null) return;
    const tmp = (await import('node:os')).tmpdir();
    kubeletLog = join(tmp, `cosi-kubelet-${process.pid}.log`);
    await writeFile(kubeletLog, '{"ts":1,"msg":"Started kubelet"}\n{"ts":2,"msg":"Could not process manifest file","err":"invalid pod: [spec.containers: Required value]"}\n');
    n = await startNode(machineConfig([counter, web, crasher, longLine]), { runtime: { cri, kubeletLog } });
    client = n.client;
    await eventually(running, 30_000);
  });

  afterAll(async () => {
    await n?.close();
    if (kubeletLog !== undefined) await rm(kubeletLog, { force: true });
    if (cri === null) return;
    // Everything the simulator started is gone from the runtime (other test files' pods may be there: only ours).
    const check = new CriClient(cri.endpoint);
    const left = (await check.listPodSandboxes()).filter(ours);
    check.close();
    expect(left).toEqual([]);
  });

  it('lists every sandbox and container the runtime runs, with real PIDs, images and the static-pod mark', async () => {
    const listed = await running();
    const rt = n.runtime;
    if (rt === undefined) throw new Error('no runtime');
    const sandboxes = (await rt.cri.listPodSandboxes()).filter(ours);
    const sandboxIds = new Set(sandboxes.map((s) => s.id));
    const containers = (await rt.cri.listContainers()).filter((c) => sandboxIds.has(c.podSandboxId));
    // The same sets as the runtime's own lists.
    const mine = listed.filter((c) => c.podId.startsWith('default/') && c.podId.endsWith(`-${NODE}`));
    expect(new Set(mine.filter((c) => c.id === c.podId).map((c) => c.runtimeId))).toEqual(sandboxIds);
    expect(new Set(mine.filter((c) => c.id !== c.podId).map((c) => c.runtimeId))).toEqual(new Set(containers.map((c) => c.id)));
    const sandbox = listed.find((c) => c.id === `default/web-${NODE}`);
    expect(sandbox).toMatchObject({ podId: `default/web-${NODE}`, status: 'SANDBOX_READY', image: cri?.images.pause, staticPod: true });
    const ctr = listed.find((c) => c.podId === `default/web-${NODE}` && c.name === 'web');
    expect(ctr?.id).toMatch(new RegExp(`^default/web-${NODE}:web:[0-9a-f]{12}$`));
    expect(ctr).toMatchObject({ image: cri?.images.busybox, status: 'CONTAINER_RUNNING', restartCount: 0, staticPod: true, podUid: sandbox?.podUid });
    // Real processes: the PIDs are live and are busybox.
    for (const c of [sandbox, ctr]) {
      expect(c?.pid).toBeGreaterThan(1);
      expect((await stat(`/proc/${c?.pid ?? 0}`)).isDirectory()).toBe(true);
    }
    // The StaticPodStatus links to the same containers.
    const status = await eventually(async () => {
      const r = await client.get('staticpodstatus', `default/web-${NODE}`);
      if (r.metadata.annotations[CONTAINERS_ANNOTATION] !== ctr?.id) throw new Error(`not linked yet: ${JSON.stringify(r.metadata.annotations)}`);
      return r;
    });
    expect(status.metadata.annotations[CONTAINERS_ANNOTATION]).toBe(ctr?.id);
  });

  it('tails the last N lines and follows new ones, in CRI format', async () => {
    const id = `default/counter-${NODE}:counter`;
    const tail = await collect(client.logs(id, { tailLines: 3 }), () => false);
    const lines = tail.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    for (const l of lines) expect(l).toMatch(CRI_LINE);
    const numbers = lines.map((l) => Number(/line (\d+)$/.exec(l)?.[1]));
    expect(numbers[1]).toBe((numbers[0] ?? 0) + 1);
    expect(numbers[2]).toBe((numbers[0] ?? 0) + 2);
    // Follow: lines written after the call arrive, continuing the tail without a gap.
    const last = numbers[2] ?? 0;
    const followed = await collect(client.logs(id, { tailLines: 1, follow: true }), (t) => /line (\d+)\n/.test(t) && Number([...t.matchAll(/line (\d+)\n/g)].at(-1)?.[1]) >= last + 10);
    const seq = [...followed.matchAll(/line (\d+)\n/g)].map((m) => Number(m[1]));
    expect(seq.slice(1)).toEqual(seq.slice(1).map((_, i) => (seq[0] ?? 0) + i + 1));
  });

  it('follows across the kubelet-style rotation (rename + ReopenContainerLog) with no line lost or repeated', async () => {
    const rt = n.runtime;
    if (rt === undefined) throw new Error('no runtime');
    const abort = new AbortController();
    const seen: number[] = [];
    let rotations = 0;
    const reader = (async () => {
      let carry = '';
      for await (const chunk of client.logs(`default/counter-${NODE}:counter`, { tailLines: 0, follow: true, signal: abort.signal })) {
        carry += chunk.toString('utf8');
        const parts = carry.split('\n');
        carry = parts.pop() ?? '';
        for (const p of parts) seen.push(Number(/line (\d+)$/.exec(p)?.[1]));
        // Rotate twice while following, each once some lines have arrived since the last one.
        if (rotations < 2 && seen.length >= 10 * (rotations + 1)) {
          rotations++;
          await rt.rotate(`default/counter-${NODE}`, 'counter');
        }
        if (rotations === 2 && seen.length >= 40) break;
      }
    })();
    await reader;
    abort.abort();
    expect(rotations).toBe(2);
    expect(seen.every(Number.isInteger)).toBe(true);
    expect(seen).toEqual(seen.map((_, i) => (seen[0] ?? 0) + i));
    // The rotated files are there beside the live one, as the kubelet leaves them.
    const dir = (await readdir(n.podLogsDir)).find((d) => d.startsWith(`default_counter-${NODE}_`)) ?? '';
    const files = await readdir(join(n.podLogsDir, dir, 'counter'));
    expect(files.filter((f) => /^0\.log\.\d{8}-\d{6}/.test(f))).toHaveLength(2);
    expect(files).toContain('0.log');
  });

  it('restarts a crashing container: a new log file, the restart count in StaticPodStatus, the exited one readable', async () => {
    const status = await eventually(async () => {
      const r = await client.get('staticpodstatus', `default/crasher-${NODE}`);
      const cs = (r.spec as { containerStatuses?: { restartCount: number; state?: { running?: unknown }; lastState?: { terminated?: { exitCode: number } } }[] }).containerStatuses?.[0];
      if (cs === undefined || cs.restartCount < 1 || cs.lastState?.terminated === undefined || cs.state?.running === undefined) throw new Error(`not restarted and running yet: ${JSON.stringify(cs)}`);
      return cs;
    }, 30_000);
    expect(status.restartCount).toBe(1);
    expect(status.lastState?.terminated?.exitCode).toBe(3);
    const listed = await client.containers();
    const instances = listed.filter((c) => c.podId === `default/crasher-${NODE}` && c.name === 'crasher');
    expect(instances.map((c) => [c.restartCount, c.status])).toEqual([
      [0, 'CONTAINER_EXITED'],
      [1, 'CONTAINER_RUNNING'],
    ]);
    // The exited instance's own log, by its ID; the latest instance's by the ID without one.
    const text = await collect(client.logs(instances[0]?.id ?? '', {}), () => false);
    expect(text).toMatch(/ stdout F started\n/);
    expect(text).toMatch(/ stderr F dying\n/);
    const latest = await eventually(async () => {
      const t = await collect(client.logs(`default/crasher-${NODE}:crasher`, {}), () => false);
      if (!t.includes('started again')) throw new Error(`not yet: ${t}`);
      return t;
    });
    expect(latest).toMatch(/^\S+ stdout F started again\n$/);
    const dir = (await readdir(n.podLogsDir)).find((d) => d.startsWith(`default_crasher-${NODE}_`)) ?? '';
    const files = await readdir(join(n.podLogsDir, dir, 'crasher'));
    expect(files).toEqual(expect.arrayContaining(['0.log', '1.log']));
  });

  it('serves a line split by the runtime as P records followed by its F record', async () => {
    const text = await eventually(async () => {
      const t = await collect(client.logs(`default/longline-${NODE}:longline`, {}), () => false);
      if (!/ F x+\n/.test(t)) throw new Error('the long line is not complete yet');
      return t;
    });
    const records = text.trimEnd().split('\n');
    expect(records.length).toBeGreaterThan(1);
    for (const r of records.slice(0, -1)) expect(r).toMatch(/^\S+ stdout P x+$/);
    expect(records.at(-1)).toMatch(/^\S+ stdout F x+$/);
    const joined = records.map((r) => r.replace(/^\S+ stdout [PF] /, '')).join('');
    expect(joined).toBe('x'.repeat(40000));
  });

  it("serves the kubelet's log as `logs kubelet`, following appended lines", async () => {
    const all = await collect(client.logs('kubelet'), () => false);
    expect(all).toContain('invalid pod: [spec.containers: Required value]');
    const followed = collect(client.logs('kubelet', { tailLines: 0, follow: true }), (t) => t.includes('appended'));
    // The follower is open once the first append is seen; keep appending until it is.
    let done = false;
    void followed.finally(() => (done = true));
    await eventually(async () => {
      await appendFile(kubeletLog, '{"ts":3,"msg":"appended"}\n');
      if (!done) throw new Error('not yet seen');
    });
    expect(await followed).toContain('"msg":"appended"');
  });

  it('refuses IDs that could name a file outside the pod logs directory, and lists the IDs for an unknown one', async () => {
    for (const bad of ['default/../../etc:passwd', 'default/x:../../etc/passwd', 'default/x:y:zz', 'default/x\u0000:y', '/etc/passwd', 'default/x:y/../z', '../default/x:y']) {
      const err = await collect(client.logs(bad), () => false).catch((e: unknown) => e);
      expect(isCosiError(err, 'invalid-argument'), `${JSON.stringify(bad)}: ${String(err)}`).toBe(true);
    }
    const err = await collect(client.logs('default/nope:nope'), () => false).catch((e: unknown) => e);
    expect(isCosiError(err, 'not-found')).toBe(true);
    expect(String(err)).toContain(`default/counter-${NODE}:counter:`);
  });

  it('a pod removed from the machine config leaves containers -k, and a follow of its log ends', async () => {
    // The pod goes only once the follower has its first line: then the follow is known to be live.
    let firstLine: (() => void) | undefined;
    const following = new Promise<void>((resolve) => (firstLine = resolve));
    const follow = collect(client.logs(`default/counter-${NODE}:counter`, { tailLines: 0, follow: true }), (text) => {
      if (text.includes('\n')) firstLine?.();
      return false;
    });
    await following;
    await n.writeConfig(machineConfig([web, crasher, longLine]));
    await n.node.config.reload('test');
    await eventually(async () => {
      const listed = await client.containers();
      if (listed.some((c) => c.podId === `default/counter-${NODE}`)) throw new Error('counter is still listed');
      // Its log directory goes with it (the kubelet removes a deleted pod's logs).
      if ((await readdir(n.podLogsDir)).some((d) => d.startsWith(`default_counter-${NODE}_`))) throw new Error('its log directory is still there');
    }, 30_000);
    // The follower ended instead of waiting forever.
    const text = await follow;
    expect(text.length).toBeGreaterThan(0);
  });
});
