// Scenarios 8-10 (issue 10): containers and logs from a REAL containerd (a private one, node-sim/containerd.ts),
// served by a cosid process (dist/server/main.js) over mTLS, each against a peer measured in the same run:
//   8. logs --tail 100 of a 1 GiB log file        vs `tail -n 100` of the same file
//   9. follow latency (runtime's CRI time stamp -> client) vs `tail -F` of the same file, concurrently
//  10. cosictl containers -k with 50 running pods vs cosictl get staticpods against the same cosid
// Pods are run through CRI directly (no kubelet: its log rotation would rotate the 1 GiB file away), in the kubelet's
// layout (<logs>/<ns>_<pod>_<uid>/<container>/0.log). Everything started here is removed again, on failure too.
// Standalone (profiling aid): node bench/runtime.mjs [--quick]
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { connect } from '../dist/client/index.js';
import { serializeCosiConfig } from '../dist/client/cosiconfig.js';
import { CriClient } from '../dist/node-sim/kubelet/cri-client.js';
import { CriReader } from '../dist/server/runtime/cri.js';
import { RuntimeInspector } from '../dist/server/runtime/inspector.js';
import { readLog } from '../dist/server/runtime/log-file.js';
import { criPrerequisites, startContainerd } from '../dist/node-sim/containerd.js';
import { freePort, sleep, summarize, timeProcess } from './common.mjs';

const NODE = 'bench';
const GiB = 2 ** 30;
const STATIC = { 'kubernetes.io/config.source': 'file' };
// busybox sh as PID 1 ignores SIGTERM unless trapped: trap it so a stop takes no grace period.
const shell = (script) => ['/bin/sh', '-c', `trap 'exit 0' TERM; ${script}`];
const SLEEP = 'sleep 2147483647 & wait';
// 50 lines a second; busybox's date has no %N, so the latency is measured from the runtime's own CRI time stamp.
const TICK = 'i=0; while true; do i=$((i+1)); echo "tick $i"; usleep 20000; done';

/** ms since the epoch, with sub-ms precision. */
const nowMs = () => performance.timeOrigin + performance.now();

/** The CRI record's time stamp (RFC 3339 with up to 9 fraction digits), in ms since the epoch. */
export function criTimeMs(line) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d) /.exec(line);
  if (m === null) return NaN;
  return Date.parse(m[1] + m[3]) + Number(`0${m[2] ?? ''}`) * 1000;
}

/** About 4 MiB of CRI records of 100-200 bytes, time-stamped from `t0`, ending with a newline. */
function criRecords(t0, bytes = 4 << 20) {
  const parts = [];
  let n = 0;
  let size = 0;
  const verbs = ['GET', 'PUT', 'POST', 'PATCH', 'DELETE'];
  while (size < bytes) {
    const ts = new Date(t0 + n).toISOString().replace('Z', `${String(n % 1000).padStart(3, '0')}${String(n % 997).padStart(3, '0')}Z`);
    const pad = 'x'.repeat((n * 37) % 70);
    const line = `${ts} stdout F ${verbs[n % 5]} /api/v1/namespaces/default/pods/web-${n % 1000} ${200 + (n % 5)} ${n % 97}ms req=${(n * 2654435761 >>> 0).toString(16)} ${pad}\n`;
    parts.push(line);
    size += line.length;
    n++;
  }
  return { buf: Buffer.from(parts.join('')), lines: n };
}

/** Runs `fn` over `items` with at most `limit` at once. */
async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }));
  return out;
}

/**
 * @param {{ quick: boolean, cliRuns: number, pki: object, pem: object, progress: (msg: string) => void, children: import('node:child_process').ChildProcess[] }} ctx
 */
export async function runtimeScenarios(ctx) {
  const { quick, cliRuns, pki, pem, progress } = ctx;
  const pre = criPrerequisites();
  if (!pre.ok) {
    progress(`scenarios 8-10 SKIPPED (logs --tail, follow latency, containers -k need a real containerd): ${pre.reason}`);
    return { skipped: pre.reason };
  }
  const runs = quick ? 5 : 30;
  const followLines = quick ? 100 : 500;
  // The machine's load when each scenario starts: other work on the same cores shows in these figures.
  const out = { loadAverage1m: {} };
  const load = (name) => (out.loadAverage1m[name] = Number(loadavg()[0].toFixed(2)));
  const cleanup = [];
  // Ctrl-C or a kill while pods run: tear down first (containers, containerd, the 1 GiB file), then go.
  let tearingDown;
  const teardown = () =>
    (tearingDown ??= (async () => {
      for (const fn of cleanup.reverse()) await fn().catch((err) => progress(`  cleanup: ${err.message}`));
    })());
  const onSignal = (sig) => {
    progress(`  ${sig}: cleaning up the runtime scenarios`);
    void teardown().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // ---- containerd, the pods' log directory, cosid on both -------------------------------------------------
    const ctrdDir = await mkdtemp('/tmp/cosi-bench-ctrd-');
    const t0 = Date.now();
    const ctrd = await startContainerd({ dir: ctrdDir });
    cleanup.push(() => ctrd.stop());
    progress(`  containerd ${ctrd.pid} ready in ${Date.now() - t0} ms (${ctrd.endpoint})`);
    const podLogsDir = await mkdtemp(join(tmpdir(), 'cosi-bench-pods-'));
    cleanup.push(() => rm(podLogsDir, { recursive: true, force: true }));
    const nodeDir = await mkdtemp(join(tmpdir(), 'cosi-bench-rtnode-'));
    cleanup.push(() => rm(nodeDir, { recursive: true, force: true }));
    const cri = new CriClient(ctrd.endpoint);
    cleanup.push(async () => cri.close());

    /** The pods this run starts: removed (containers stopped, sandboxes removed) at the end or on failure. */
    const pods = new Map();
    cleanup.push(async () => {
      const t = Date.now();
      const all = [...pods.values()];
      await mapLimit(all, 8, (p) => removePod(p));
      if (all.length > 0) progress(`  removed ${all.length} pods in ${Date.now() - t} ms`);
    });
    async function removePod(p) {
      if (p.containerId !== undefined) {
        await cri.stopContainer(p.containerId, 2).catch(() => {});
        await cri.removeContainer(p.containerId).catch(() => {});
      }
      await cri.stopPodSandbox(p.sandboxId).catch(() => {});
      await cri.removePodSandbox(p.sandboxId).catch(() => {});
      await rm(p.logDir, { recursive: true, force: true });
      pods.delete(p.name);
    }
    /** A static pod `<container>-bench` of one busybox container, as the kubelet would run it. */
    async function runPod(container, script) {
      const name = `${container}-${NODE}`;
      const uid = randomUUID();
      const logDir = join(podLogsDir, `default_${name}_${uid}`);
      await mkdir(join(logDir, container), { recursive: true });
      const ns = { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' };
      const labels = { 'io.kubernetes.pod.name': name, 'io.kubernetes.pod.namespace': 'default', 'io.kubernetes.pod.uid': uid };
      const sandboxConfig = { metadata: { name, uid, namespace: 'default', attempt: 0 }, logDirectory: logDir, labels, annotations: STATIC, linux: { cgroupParent: ctrd.cgroupParent, securityContext: { namespaceOptions: ns } } };
      const p = { name, container, logDir, sandboxId: undefined, containerId: undefined };
      p.sandboxId = await cri.runPodSandbox(sandboxConfig);
      pods.set(name, p);
      p.containerId = await cri.createContainer(p.sandboxId, {
        metadata: { name: container, attempt: 0 },
        image: { image: ctrd.images.busybox },
        command: shell(script),
        labels: { ...labels, 'io.kubernetes.container.name': container },
        logPath: join(container, '0.log'),
        linux: { securityContext: { namespaceOptions: ns } },
      }, sandboxConfig);
      await cri.startContainer(p.containerId);
      p.logPath = (await cri.containerStatus(p.containerId)).status.logPath;
      p.id = `default/${name}:${container}:${p.containerId.slice(0, 12)}`;
      return p;
    }

    // The machine config holds the same 50 pods scenario 10 runs, so `get staticpods` lists 50 as containers -k does.
    const sleepers = Array.from({ length: 49 }, (_, i) => `sleeper-${String(i + 1).padStart(2, '0')}`);
    const podSpec = (c, script) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: c }, spec: { terminationGracePeriodSeconds: 2, containers: [{ name: c, image: ctrd.images.busybox, command: shell(script) }] } });
    const configPath = join(nodeDir, 'machine.yaml');
    await writeFile(configPath, JSON.stringify({ version: 'v1alpha1', machine: { type: 'worker', pods: [podSpec('biglog', SLEEP), ...sleepers.map((c) => podSpec(c, SLEEP))] } }));
    const port = await freePort();
    const cosid = spawn(process.execPath, ['dist/server/main.js', '--pki', pki.dir, '--config', configPath, '--listen', `127.0.0.1:${port}`, '--node', NODE,
      '--cri-endpoint', ctrd.endpoint, '--pod-logs-dir', podLogsDir, '--log-level', 'warn'], { stdio: 'inherit' });
    ctx.children?.push(cosid);
    cleanup.push(async () => {
      if (cosid.exitCode !== null || cosid.signalCode !== null) return;
      cosid.kill('SIGTERM');
      await Promise.race([new Promise((r) => cosid.once('exit', r)), sleep(5000)]);
    });
    const client = connect({ endpoint: `127.0.0.1:${port}`, caPem: pem.caPem, certPem: pem.clientCertPem, keyPem: pem.clientKeyPem });
    cleanup.push(async () => client.close());
    for (let i = 0; ; i++) {
      try {
        await client.get('staticpods', 'default-biglog');
        break;
      } catch (err) {
        if (i > 100) throw err;
        await sleep(100);
      }
    }
    const cosiconfig = join(nodeDir, 'cosiconfig');
    writeFileSync(cosiconfig, serializeCosiConfig({ currentContext: 'bench', contexts: new Map([['bench', { name: 'bench', endpoints: [`127.0.0.1:${port}`], nodes: [], caPem: pem.caPem, certPem: pem.clientCertPem, keyPem: pem.clientKeyPem }]]) }));
    const cosictl = (...args) => timeProcess(['dist/client/cli/main.js', '--cosiconfig', cosiconfig, ...args]);

    let t = Date.now();
    const [biglog, ticker] = await Promise.all([runPod('biglog', SLEEP), runPod('ticker', TICK)]);
    progress(`  cosid ${cosid.pid} on 127.0.0.1:${port}; 2 pods running in ${Date.now() - t} ms`);

    // ---- 8. logs --tail 100 of a 1 GiB file ---------------------------------------------------------------
    progress(`scenario 8: logs --tail 100 of a 1 GiB CRI log (${runs} runs) vs tail -n 100 of the same file (load average ${load('logsTail')})`);
    // Appended to the file the runtime itself has open (its container writes nothing), so the runtime's log_path
    // is the file read. Written, then flushed to disk so no writeback runs under the measurements.
    t = Date.now();
    const { buf, lines: perBuf } = criRecords(Date.now() - 86_400_000);
    const fh = await open(biglog.logPath, 'a');
    let written = 0;
    let records = 0;
    try {
      while (written < GiB) {
        const { bytesWritten } = await fh.write(buf);
        written += bytesWritten;
        records += perBuf;
      }
      const tWrite = Date.now() - t;
      await fh.datasync();
      progress(`  wrote ${(written / GiB).toFixed(2)} GiB (${(records / 1e6).toFixed(1)} M records of ${Math.round(written / records)} B on average) in ${tWrite} ms, synced in ${Date.now() - t - tWrite} ms`);
    } finally {
      await fh.close();
    }
    const size = (await stat(biglog.logPath)).size;
    const countLines = (text) => text.split('\n').length - 1;
    async function clientTail(id) {
      const t0 = process.hrtime.bigint();
      let text = '';
      for await (const chunk of client.logs(id, { tailLines: 100 })) text += chunk.toString('utf8');
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (countLines(text) !== 100) throw new Error(`logs --tail 100 gave ${countLines(text)} lines`);
      return ms;
    }
    async function readLogTail() {
      const t0 = process.hrtime.bigint();
      let n = 0;
      for await (const chunk of readLog(biglog.logPath, { tailLines: 100, follow: false })) n += chunk.length;
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (n === 0) throw new Error('readLog gave nothing');
      return ms;
    }
    const tailN = () => timeProcess(['-n', '100', biglog.logPath], { file: 'tail', read: true });
    for (let i = 0; i < 3; i++) {
      // warm up
      await clientTail(biglog.id);
      await readLogTail();
      tailN();
    }
    const lt = { client: [], readLog: [], tail: [] };
    // Interleaved, one at a time, so all three see the same machine.
    for (let i = 0; i < runs; i++) {
      lt.client.push(await clientTail(biglog.id));
      lt.readLog.push(await readLogTail());
      lt.tail.push(tailN());
    }
    const cli = [];
    for (let i = 0; i < cliRuns; i++) cli.push(cosictl('logs', '-k', biglog.id, '--tail', '100'));
    out.logsTail = { fileBytes: size, records, pods: pods.size, client: summarize(lt.client), readLog: summarize(lt.readLog), tail: summarize(lt.tail), cosictlMedianMs: summarize(cli).p50 };
    out.logsTail.ratioP50 = out.logsTail.client.p50 / out.logsTail.tail.p50;
    progress(`  client (Logs RPC on loopback, mTLS, warm connection): p50 ${out.logsTail.client.p50.toFixed(2)} ms p99 ${out.logsTail.client.p99.toFixed(2)} ms; readLog in-process p50 ${out.logsTail.readLog.p50.toFixed(2)} ms; tail -n 100 p50 ${out.logsTail.tail.p50.toFixed(2)} ms (ratio ${out.logsTail.ratioP50.toFixed(2)}); cosictl logs --tail 100 median ${out.logsTail.cosictlMedianMs.toFixed(0)} ms`);

    // ---- 9. follow latency ---------------------------------------------------------------------------------
    progress(`scenario 9: follow latency over ${followLines} lines (50/s, runtime time stamp -> receipt), cosid vs tail -F (load average ${load('follow')})`);
    for (let i = 0; ; i++) {
      if ((await stat(ticker.logPath)).size > 0) break;
      if (i > 100) throw new Error('the ticker writes nothing');
      await sleep(50);
    }
    const WARM = 10; // the first lines of each follower are dropped
    /** Latencies of whole lines out of a stream of chunks, each line at the time its chunk arrived. */
    const latencies = () => {
      let carry = '';
      const lat = [];
      return {
        lat,
        push(chunk) {
          const at = nowMs();
          carry += chunk.toString('utf8');
          const parts = carry.split('\n');
          carry = parts.pop() ?? '';
          for (const l of parts) lat.push(at - criTimeMs(l));
        },
      };
    };
    const abort = new AbortController();
    const ours = latencies();
    const peer = latencies();
    const inProc = latencies();
    const tailF = spawn('tail', ['-n', '0', '-F', ticker.logPath], { stdio: ['ignore', 'pipe', 'ignore'] });
    ctx.children?.push(tailF);
    tailF.stdout.on('data', (b) => peer.push(b));
    const followers = [
      (async () => {
        for await (const chunk of client.logs(ticker.id, { tailLines: 0, follow: true, signal: abort.signal })) {
          ours.push(chunk);
          if (ours.lat.length >= followLines + WARM) break;
        }
      })(),
      (async () => {
        for await (const chunk of readLog(ticker.logPath, { tailLines: 0, follow: true, signal: abort.signal })) {
          inProc.push(chunk);
          if (abort.signal.aborted) break;
        }
      })(),
    ];
    const deadline = setTimeout(() => abort.abort(), (followLines / 50) * 1000 * 3 + 10_000);
    await followers[0];
    abort.abort();
    clearTimeout(deadline);
    await followers[1];
    tailF.kill('SIGTERM');
    const cut = (l) => l.slice(WARM, WARM + followLines);
    out.follow = { lines: cut(ours.lat).length, cosid: summarize(cut(ours.lat)), tailF: summarize(cut(peer.lat)), readLog: summarize(cut(inProc.lat)) };
    out.follow.ratioP99 = out.follow.cosid.p99 / out.follow.tailF.p99;
    const f = out.follow;
    progress(`  cosid (client): p50 ${f.cosid.p50.toFixed(1)} ms p99 ${f.cosid.p99.toFixed(1)} ms max ${f.cosid.max.toFixed(1)} ms; tail -F p50 ${f.tailF.p50.toFixed(1)} p99 ${f.tailF.p99.toFixed(1)} ms (ratio ${f.ratioP99.toFixed(2)}); readLog in-process p50 ${f.readLog.p50.toFixed(1)} p99 ${f.readLog.p99.toFixed(1)} ms`);
    await removePod(ticker);

    // ---- 10. containers -k with 50 pods --------------------------------------------------------------------
    t = Date.now();
    await mapLimit(sleepers, 4, (c) => runPod(c, SLEEP));
    progress(`scenario 10: cosictl containers -k with ${pods.size} running pods (started in ${Date.now() - t} ms) vs cosictl get staticpods, same cosid (load average ${load('containers')})`);
    const listed = await client.containers();
    const running = listed.filter((c) => c.id !== c.podId && c.status === 'CONTAINER_RUNNING').length;
    if (running !== pods.size) throw new Error(`containers -k lists ${running} running containers, ${pods.size} pods were started`);
    for (let i = 0; i < 2; i++) {
      // warm up
      cosictl('containers', '-k');
      cosictl('get', 'staticpods');
    }
    const ck = { containers: [], get: [], bare: [], rpc: [], listPods: [] };
    for (let i = 0; i < cliRuns; i++) {
      ck.containers.push(cosictl('containers', '-k'));
      ck.get.push(cosictl('get', 'staticpods'));
      ck.bare.push(timeProcess(['-e', '']));
    }
    const timed = async (fn) => {
      const t0 = process.hrtime.bigint();
      await fn();
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    // An inspector keeps what a verbose status said of each running container and ready sandbox; a new one
    // starts without it, as cosid's first listing does (one verbose status per sandbox and per running container).
    ck.listPodsFirst = [];
    const inspector = new RuntimeInspector(new CriReader(ctrd.endpoint), podLogsDir);
    cleanup.push(async () => inspector.close());
    await inspector.listPods(); // this inspector's first listing
    for (let i = 0; i < runs; i++) {
      ck.rpc.push(await timed(() => client.containers()));
      ck.listPods.push(await timed(() => inspector.listPods()));
      const reader = new CriReader(ctrd.endpoint);
      await reader.version();
      const fresh = new RuntimeInspector(reader, podLogsDir);
      ck.listPodsFirst.push(await timed(() => fresh.listPods()));
      fresh.close();
    }
    out.containers = {
      pods: pods.size,
      rows: listed.length,
      cosictlContainersMedianMs: summarize(ck.containers).p50,
      cosictlGetMedianMs: summarize(ck.get).p50,
      nodeStartupMedianMs: summarize(ck.bare).p50,
      rpc: summarize(ck.rpc),
      listPods: summarize(ck.listPods),
      listPodsFirst: summarize(ck.listPodsFirst),
    };
    const c = out.containers;
    c.ratio = c.cosictlContainersMedianMs / c.cosictlGetMedianMs;
    progress(`  cosictl containers -k median ${c.cosictlContainersMedianMs.toFixed(0)} ms, get staticpods ${c.cosictlGetMedianMs.toFixed(0)} ms (ratio ${c.ratio.toFixed(2)}; bare node ${c.nodeStartupMedianMs.toFixed(0)} ms); Containers RPC p50 ${c.rpc.p50.toFixed(1)} ms, listPods in-process p50 ${c.listPods.p50.toFixed(1)} ms (a first listing, ${c.pods * 2} verbose statuses: ${c.listPodsFirst.p50.toFixed(1)} ms)`);
    // The Logs call finds its container with the same listing: the tail of scenario 8 again, with 50 pods running.
    const busy = [];
    for (let i = 0; i < runs; i++) busy.push(await clientTail(biglog.id));
    out.logsTail.with50Pods = summarize(busy);
    progress(`  logs --tail 100 of the 1 GiB file with ${pods.size} pods running: client p50 ${out.logsTail.with50Pods.p50.toFixed(1)} ms p99 ${out.logsTail.with50Pods.p99.toFixed(1)} ms`);
    return out;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await teardown();
  }
}

// ---- standalone ---------------------------------------------------------------------------------------------
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { makeBenchPki, readPem } = await import('./common.mjs');
  const quick = process.argv.includes('--quick');
  const started = Date.now();
  const progress = (msg) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)}s] ${msg}\n`);
  const pki = await makeBenchPki();
  const children = [];
  // Also after a Ctrl-C (the scenarios clean up, then exit).
  process.on('exit', () => {
    children.forEach((c) => c.kill('SIGKILL'));
    rmSync(pki.dir, { recursive: true, force: true });
  });
  const r = await runtimeScenarios({ quick, cliRuns: quick ? 5 : 15, pki, pem: readPem(pki), progress, children });
  process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  process.exit(0);
}
