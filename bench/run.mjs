// npm run bench [-- --quick]: cosid next to etcd (Debian's etcd-server) and the grpc-js ceiling, same machine, same
// mTLS, same data, same client harness; prints a table with ratios and writes bench/out/results.json. Scenarios 8-10
// (bench/runtime.mjs) run containers and logs on a private real containerd, against peers measured in the same run.
import { execFileSync, fork, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Etcd3 } from 'etcd3';
import jsyaml from 'js-yaml';
import { connect } from '../dist/client/index.js';
import { serializeCosiConfig } from '../dist/client/cosiconfig.js';
import { wire } from '../dist/shared/wire.js';
import { CHANNEL_OPTIONS, freePort, makeBenchPki, podStatusPayload, procStats, readPem, rpc, sleep, summarize, timeProcess } from './common.mjs';
import { runtimeScenarios } from './runtime.mjs';

const QUICK = process.argv.includes('--quick');
// cosid's watchers use one event per message, as its client library does by default; BENCH_AGGREGATED=1 batches.
const AGGREGATED = process.env.BENCH_AGGREGATED === '1';
const cfg = QUICK
  ? { gets: 500, concurrentGets: 3000, list: 10_000, fanout: [1, 100], churnSeconds: 4, rate: 200, stalledSeconds: 4, pipelineRuns: 10, cliRuns: 5 }
  : { gets: 2000, concurrentGets: 20_000, list: 10_000, fanout: [1, 100, 1000], churnSeconds: 10, rate: 200, stalledSeconds: 10, pipelineRuns: 30, cliRuns: 15 };
const started = Date.now();
const progress = (msg) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)}s] ${msg}\n`);
const results = { machine: {}, scenarios: {} };
const children = [];
const cleanup = [];
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function ensureEtcd() {
  try {
    return execFileSync('etcd', ['--version']).toString().split('\n')[0];
  } catch {
    progress('etcd is missing: installing Debian etcd-server (apt-get)');
    execFileSync('apt-get', ['install', '-y', 'etcd-server'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    return execFileSync('etcd', ['--version']).toString().split('\n')[0];
  }
}

function forkServer(file, env, execArgv = []) {
  const child = fork(file, [], { env: { ...process.env, ...env }, execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    child.once('message', (m) => (m.ready ? resolve(child) : reject(new Error('not ready'))));
    child.once('exit', (code) => reject(new Error(`${file} exited with ${code}`)));
  });
}

// ---- start everything -------------------------------------------------------------------------------------
const etcdVersion = ensureEtcd();
const pki = await makeBenchPki();
const pem = readPem(pki);
results.machine = { aggregated: AGGREGATED, cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, etcd: etcdVersion, quick: QUICK, date: new Date().toISOString(), loadAverage1mAtStart: loadavg()[0] };
progress(`machine: ${results.machine.cpus} cores, node ${process.version}, ${etcdVersion}, load average ${loadavg()[0].toFixed(2)}`);

// On tmpfs when there is one, so etcd's fsyncs do not make it look slower than it is.
const etcdDir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'cosi-bench-etcd-'));
cleanup.push(() => rm(etcdDir, { recursive: true, force: true }));
const etcdPort = await freePort();
const peerPort = await freePort();
const etcdProc = spawn('etcd', [
  '--name', 'bench', '--data-dir', etcdDir,
  '--listen-client-urls', `https://127.0.0.1:${etcdPort}`, '--advertise-client-urls', `https://127.0.0.1:${etcdPort}`,
  '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
  '--initial-cluster', `bench=http://127.0.0.1:${peerPort}`,
  '--cert-file', pki.serverCert, '--key-file', pki.serverKey, '--client-cert-auth', '--trusted-ca-file', pki.caCert,
  '--quota-backend-bytes', String(4 * 2 ** 30), '--log-level', 'error', '--logger', 'zap',
], { stdio: 'ignore' });
children.push(etcdProc);
const etcd = new Etcd3({ hosts: `https://127.0.0.1:${etcdPort}`, credentials: { rootCertificate: Buffer.from(pem.caPem), privateKey: Buffer.from(pem.clientKeyPem), certChain: Buffer.from(pem.clientCertPem) }, grpcOptions: CHANNEL_OPTIONS });
for (let i = 0; ; i++) {
  try {
    await etcd.get('ping');
    break;
  } catch (err) {
    if (i > 100) throw err;
    await sleep(100);
  }
}
progress(`etcd up on 127.0.0.1:${etcdPort} (mTLS)`);
const env = { BENCH_PKI: JSON.stringify(pki) };
// BENCH_CPU_PROF=1 profiles the cosid process (node --cpu-prof) into bench/out.
const cosidServer = await forkServer(new URL('./servers/cosid.mjs', import.meta.url).pathname, env, process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', 'bench/out'] : []);
const cosidPort = await rpc(cosidServer, { op: 'port' });
const ceilingServer = await forkServer(new URL('./servers/ceiling.mjs', import.meta.url).pathname, env);
const ceilingPort = await rpc(ceilingServer, { op: 'port' });
progress(`cosid on 127.0.0.1:${cosidPort}, ceiling on 127.0.0.1:${ceilingPort}`);
const pids = { cosid: cosidServer.pid, etcd: etcdProc.pid, ceiling: ceilingServer.pid };
const grpcClient = (port, extra = {}) => new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(pem.caPem), Buffer.from(pem.clientKeyPem), Buffer.from(pem.clientCertPem)), { ...CHANNEL_OPTIONS, ...extra });
const cosidRaw = grpcClient(cosidPort);
const ceilingRaw = grpcClient(ceilingPort);
const unary = (client, path, body) => new Promise((res, rej) => client.makeUnaryRequest(path, (b) => b, (b) => b, body, (e, r) => (e ? rej(e) : res(r))));
// As on the cosid side, payloads are built once; only the time stamp is new per write.
const etcdPayloads = new Map();
const etcdValue = (i, bytes) => {
  const key = `${i}/${bytes}`;
  if (!etcdPayloads.has(key)) etcdPayloads.set(key, JSON.stringify(podStatusPayload(i, bytes)));
  return Buffer.from(`${String(Date.now()).padStart(13, '0')}|${etcdPayloads.get(key)}`);
};

// ---- 1. Get -----------------------------------------------------------------------------------------------
async function timeGets(fn, n, inFlight) {
  const lat = [];
  let next = 0;
  const t0 = Date.now();
  await Promise.all(Array.from({ length: inFlight }, async () => {
    while (next < n) {
      next++;
      const t = process.hrtime.bigint();
      await fn();
      lat.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
  }));
  return { ...summarize(lat), perSecond: n / ((Date.now() - t0) / 1000) };
}
progress('scenario 1: Get (2 KB PodStatus), sequential and 64 in flight');
await rpc(cosidServer, { op: 'load', count: 1, bytes: 2048 });
await etcd.put('status/default/pod-0').value(etcdValue(0, 2048));
// The ceiling streams messages of the size cosid sends for the same resource (a COSI resource carries its spec as
// both YAML and protobuf; an UPDATED event carries the old resource too), so the two move the same bytes.
const cosidSizesCache = new Map();
const cosidSizesFor = async (bytes) => {
  if (!cosidSizesCache.has(bytes)) cosidSizesCache.set(bytes, await rpc(cosidServer, { op: 'sizes', bytes }));
  return cosidSizesCache.get(bytes);
};
const cosidSizes = await cosidSizesFor(2048);
results.messageBytes = { etcdValue: etcdValue(0, 2048).length, cosidResource: cosidSizes.resource, cosidUpdatedEvent: cosidSizes.updatedEvent };
progress(`  message sizes: etcd value ${results.messageBytes.etcdValue} B, cosid resource ${cosidSizes.resource} B, cosid UPDATED event ${cosidSizes.updatedEvent} B`);
await rpc(ceilingServer, { op: 'size', bytes: cosidSizes.resource });
const getReq = Buffer.from(wire.getRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id: 'default/pod-0' }));
const gets = {
  cosid: () => unary(cosidRaw, '/cosi.resource.State/Get', getReq),
  etcd: () => etcd.get('status/default/pod-0').buffer(),
  ceiling: () => unary(ceilingRaw, '/bench.Ceiling/Get', Buffer.alloc(0)),
};
results.scenarios.get = {};
for (const [name, fn] of Object.entries(gets)) {
  await timeGets(fn, 200, 8); // warm up
  results.scenarios.get[name] = { sequential: await timeGets(fn, cfg.gets, 1), inFlight64: await timeGets(fn, cfg.concurrentGets, 64) };
  progress(`  ${name}: p99 ${results.scenarios.get[name].sequential.p99.toFixed(2)} ms sequential, ${results.scenarios.get[name].inFlight64.p99.toFixed(2)} ms at 64 in flight`);
}

// ---- 2. List 10,000 and 5. memory per 10,000 ------------------------------------------------------------
progress(`scenario 2: List ${cfg.list} resources of 2 KB; memory per ${cfg.list} stored`);
await rpc(cosidServer, { op: 'clear' });
const rssBefore = { etcd: procStats(pids.etcd).rss };
await rpc(cosidServer, { op: 'load', count: cfg.list, bytes: 2048 });
for (let i = 0; i < cfg.list; i += 500) {
  await Promise.all(Array.from({ length: Math.min(500, cfg.list - i) }, (_, j) => etcd.put(`status/default/pod-${i + j}`).value(etcdValue(i + j, 2048))));
}
await sleep(500);
const yamlBytes = jsyaml.dump(podStatusPayload(0, 2048), { noRefs: true, lineWidth: -1 }).length; // the spec as cosid's yaml_spec
results.scenarios.memory = { perStored: { etcd: (procStats(pids.etcd).rss - rssBefore.etcd) / cfg.list, specBytes: yamlBytes }, perStoredAfterList: {} };
const listReq = Buffer.from(wire.listRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev' }));
async function timeStream(client, path, body) {
  const t0 = process.hrtime.bigint();
  let bytes = 0;
  let messages = 0;
  const call = client.makeServerStreamRequest(path, (b) => b, (b) => b, body);
  for await (const m of call) {
    bytes += m.length;
    messages++;
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ms, messages, mbPerSecond: bytes / 2 ** 20 / (ms / 1000) };
}
const lists = {
  cosid: () => timeStream(cosidRaw, '/cosi.resource.State/List', listReq),
  etcd: async () => {
    const t0 = process.hrtime.bigint();
    const all = await etcd.getAll().prefix('status/').buffers();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const bytes = Object.values(all).reduce((n, b) => n + b.length, 0);
    return { ms, messages: 1, items: Object.keys(all).length, mbPerSecond: bytes / 2 ** 20 / (ms / 1000) };
  },
  ceiling: () => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(cfg.list, 0);
    return timeStream(ceilingRaw, '/bench.Ceiling/List', b);
  },
};
// The first List is reported on its own (cosid encodes each resource for the wire at its first read); the figure
// compared is the steady state: the median of 5 after 4 warm-up runs (Node's JIT needs a few to settle).
results.scenarios.list = {};
for (const [name, fn] of Object.entries(lists)) {
  const first = await fn();
  // cosid keeps each resource's wire encoding once it has been read: memory per resource after the first List too.
  if (name === 'etcd') results.scenarios.memory.perStoredAfterList.etcd = (procStats(pids.etcd).rss - rssBefore.etcd) / cfg.list;
  for (let i = 0; i < 3; i++) await fn();
  const runs = [];
  for (let i = 0; i < 5; i++) runs.push(await fn());
  runs.sort((a, b) => a.ms - b.ms);
  results.scenarios.list[name] = { ...runs[2], firstMs: first.ms };
  progress(`  ${name}: ${runs[2].ms.toFixed(0)} ms (median of 5), ${runs[2].mbPerSecond.toFixed(1)} MB/s; the first List took ${first.ms.toFixed(0)} ms`);
}

// cosid's memory per stored resource, in a server of its own: read after a full collection (--expose-gc), so the
// figure is live memory; forcing collections in the main server would change its GC behaviour for later scenarios.
{
  const server = await forkServer(new URL('./servers/cosid.mjs', import.meta.url).pathname, env, ['--expose-gc']);
  const usage = () => rpc(server, { op: 'gc' });
  const before = await usage();
  const per = (u, field) => (u[field] - before[field]) / cfg.list;
  await rpc(server, { op: 'load', count: cfg.list, bytes: 2048 });
  const loaded = await usage();
  results.scenarios.memory.perStored.cosid = per(loaded, 'rss');
  // The JS heap and buffers alone: the same figure without RSS's page-level noise.
  results.scenarios.memory.heapPerStored = { cosid: per(loaded, 'heapUsed') + per(loaded, 'external') };
  const client = grpcClient(await rpc(server, { op: 'port' }));
  await timeStream(client, '/cosi.resource.State/List', listReq);
  const listed = await usage();
  results.scenarios.memory.perStoredAfterList.cosid = per(listed, 'rss');
  results.scenarios.memory.heapPerStoredAfterList = { cosid: per(listed, 'heapUsed') + per(listed, 'external') };
  client.close();
  await rpc(server, { op: 'stop' }).catch(() => undefined);
  progress(`  memory per stored resource (${yamlBytes} B of YAML): cosid ${results.scenarios.memory.perStored.cosid.toFixed(0)} B, ${results.scenarios.memory.perStoredAfterList.cosid.toFixed(0)} B once listed; etcd ${results.scenarios.memory.perStored.etcd.toFixed(0)} B, ${results.scenarios.memory.perStoredAfterList.etcd.toFixed(0)} B`);
}

// ---- 7. A flood from one client does not starve another (SECURITY.md) -------------------------------------
progress('scenario 7: cosid, Get p99 of one client, alone and while another client floods List (8 at once)');
const flooder = grpcClient(cosidPort, { 'grpc.use_local_subchannel_pool': 1 });
const alone = await timeGets(gets.cosid, cfg.gets, 1);
let flooding = true;
let floodLists = 0;
const floods = Array.from({ length: 8 }, async () => {
  while (flooding) {
    await timeStream(flooder, '/cosi.resource.State/List', listReq);
    floodLists++;
  }
});
await sleep(200);
const underFlood = await timeGets(gets.cosid, cfg.gets, 1);
flooding = false;
await Promise.all(floods);
flooder.close();
results.scenarios.flood = { alone, underFlood, floodListsCompleted: floodLists };
progress(`  Get p99 ${alone.p99.toFixed(1)} ms alone, ${underFlood.p99.toFixed(1)} ms while ${floodLists} lists of ${cfg.list} streamed to the flooder`);

// ---- 3. Watch fan-out (and 5. memory per 1,000 idle watchers) -------------------------------------------
async function startWorkers(mode, total, { stall = false, processes } = {}) {
  const endpoint = mode === 'cosid' ? `127.0.0.1:${cosidPort}` : mode === 'ceiling' ? `127.0.0.1:${ceilingPort}` : `https://127.0.0.1:${etcdPort}`;
  const n = processes ?? (total >= 100 ? 4 : 1);
  const workers = [];
  for (let i = 0; i < n; i++) {
    const count = Math.floor(total / n) + (i < total % n ? 1 : 0);
    if (count === 0) continue;
    workers.push(await forkServer(new URL('./clients/watch-worker.mjs', import.meta.url).pathname, { BENCH_WORKER: JSON.stringify({ mode, endpoint, count, pki, stall, aggregated: AGGREGATED }) }, process.env.BENCH_CPU_PROF_CLIENTS && i === 0 ? ['--cpu-prof', '--cpu-prof-dir', 'bench/out'] : []));
    workers.at(-1).count = count;
  }
  for (let i = 0; ; i++) {
    const ready = await Promise.all(workers.map((w) => rpc(w, { op: 'ready' })));
    if (ready.every((r, j) => r >= workers[j].count)) break;
    if (i > 600) throw new Error(`${mode}: watchers not ready`);
    await sleep(100);
  }
  return workers;
}
async function churn(mode, rate, seconds, ids, bytes) {
  if (mode === 'cosid') return rpc(cosidServer, { op: 'churn', rate, seconds, ids });
  if (mode === 'ceiling') return rpc(ceilingServer, { op: 'churn', rate, seconds });
  const total = Math.round(rate * seconds);
  const t0 = Date.now();
  let behind = 0;
  const pending = [];
  for (let n = 0; n < total; n++) {
    const wait = t0 + (n * 1000) / rate - Date.now();
    if (wait > 0) await sleep(wait);
    else behind = Math.max(behind, -wait);
    // etcd3 builders are lazy: exec() sends the put now, not when awaited.
    pending.push(etcd.put(`status/default/pod-${n % ids}`).value(etcdValue(n % ids, bytes)).exec());
  }
  await Promise.all(pending);
  return { written: total, writerBehindMaxMs: behind, seconds: (Date.now() - t0) / 1000 };
}
async function fanout(mode, watchers, { rate = cfg.rate, seconds = cfg.churnSeconds, bytes = 2048, stall = false, sampleRss = false } = {}) {
  const serverPid = pids[mode];
  if (mode === 'ceiling') await rpc(ceilingServer, { op: 'size', bytes: (await cosidSizesFor(bytes)).updatedEvent });
  const rssIdle0 = procStats(serverPid).rss;
  const workers = await startWorkers(mode, watchers);
  const stalled = stall ? await startWorkers(mode, 1, { stall: true, processes: 1 }) : [];
  await sleep(300);
  const rssIdle = procStats(serverPid).rss - rssIdle0;
  await Promise.all(workers.map((w) => rpc(w, { op: 'reset' })));
  const cpu0 = procStats(serverPid).cpuSeconds;
  const clientCpu0 = await Promise.all(workers.map((w) => rpc(w, { op: 'report' }).then((r) => r.cpu)));
  const rss = [];
  const sampler = sampleRss ? setInterval(() => rss.push(Math.round(procStats(serverPid).rss / 2 ** 20)), 1000) : undefined;
  const written = await churn(mode, rate, seconds, 100, bytes);
  // Give stragglers until 3 s after the last write.
  const expected = written.written * watchers;
  for (let i = 0; i < 30; i++) {
    const got = (await Promise.all(workers.map((w) => rpc(w, { op: 'report' })))).reduce((n, r) => n + r.received, 0);
    if (got >= expected) break;
    await sleep(100);
  }
  clearInterval(sampler);
  const cpu = procStats(serverPid).cpuSeconds - cpu0;
  const reports = await Promise.all(workers.map((w) => rpc(w, { op: 'report' })));
  const received = reports.reduce((n, r) => n + r.received, 0);
  const errors = {};
  for (const r of reports) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
  if (Object.keys(errors).length > 0) progress(`  ${mode}: watches ended early: ${JSON.stringify(errors)}`);
  const within3s = reports.reduce((n, r) => n + r.within3s, 0);
  const lat = summarize(reports.flatMap((r) => r.samples));
  const clientCpu = reports.reduce((n, r, i) => n + (r.cpu.user + r.cpu.system - clientCpu0[i].user - clientCpu0[i].system) / 1e6, 0);
  await Promise.all([...workers, ...stalled].map((w) => rpc(w, { op: 'stop' }).catch(() => undefined)));
  await sleep(300);
  return {
    watchers,
    written: written.written,
    writerBehindMaxMs: Math.round(written.writerBehindMaxMs ?? 0),
    expected,
    delivered: received,
    deliveredPct: (100 * received) / expected,
    within3sPct: (100 * within3s) / expected,
    eventsPerSecond: received / written.seconds,
    p50: lat.p50,
    p99: lat.p99,
    serverCpuSeconds: cpu,
    cpuSecondsPerMillion: (cpu / Math.max(1, received)) * 1e6,
    clientCpuSeconds: clientCpu,
    idleWatcherRssBytes: rssIdle,
    ...(sampleRss ? { rssMiBOverTime: rss } : {}),
    watchErrors: errors,
  };
}
const describeFanout = (r) =>
  `${r.deliveredPct.toFixed(1)}% delivered (${r.within3sPct.toFixed(1)}% within 3 s), p50 ${r.p50} ms, p99 ${r.p99} ms, ${r.cpuSecondsPerMillion.toFixed(1)} server CPU s per million, client CPU ${r.clientCpuSeconds.toFixed(1)} s, writer at most ${r.writerBehindMaxMs} ms behind`;
results.scenarios.fanout = {};
if (process.env.BENCH_FANOUT) {
  // Profiling aid (with BENCH_CPU_PROF=1): only cosid's fan-out at the given size.
  progress(`  cosid: ${describeFanout(await fanout('cosid', Number(process.env.BENCH_FANOUT)))}`);
  await rpc(cosidServer, { op: 'stop' }).catch(() => undefined);
  await new Promise((res) => cosidServer.once('exit', res));
  process.exit(0);
}
for (const n of cfg.fanout) {
  for (const mode of ['cosid', 'etcd', 'ceiling']) {
    progress(`scenario 3: ${mode}, ${n} watchers, ${cfg.rate} updates/s for ${cfg.churnSeconds} s`);
    const r = await fanout(mode, n);
    (results.scenarios.fanout[n] ??= {})[mode] = r;
    progress(`  ${mode}: ${describeFanout(r)}`);
  }
}

// ---- 4. One stalled watcher among 100 ------------------------------------------------------------------
progress(`scenario 4: cosid, 100 healthy watchers, 4 KB updates, without and with one stalled watcher`);
const without = await fanout('cosid', 100, { seconds: cfg.stalledSeconds, bytes: 4096, sampleRss: true });
const withStalled = await fanout('cosid', 100, { seconds: cfg.stalledSeconds, bytes: 4096, stall: true, sampleRss: true });
results.scenarios.stalled = { without, with: withStalled, p99Increase: withStalled.p99 / Math.max(1, without.p99) - 1 };
progress(`  healthy p99 ${without.p99} ms without, ${withStalled.p99} ms with a stalled watcher; RSS MiB ${withStalled.rssMiBOverTime?.join(' ')}`);

// ---- 6. The pipeline: config change to event; cosictl as a process ---------------------------------------
progress('scenario 6: machine config change -> StaticPod event; cosictl get staticpods as a whole process');
const nodeDir = await mkdtemp(join(tmpdir(), 'cosi-bench-node-'));
cleanup.push(() => rm(nodeDir, { recursive: true, force: true }));
const configPath = join(nodeDir, 'machine.yaml');
const podConfig = (tag) => `version: v1alpha1\nmachine:\n  type: worker\n  pods:\n    - apiVersion: v1\n      kind: Pod\n      metadata: {name: nginx}\n      spec: {containers: [{name: nginx, image: "nginx:${tag}"}]}\n`;
await writeFile(configPath, podConfig(0));
const nodePort = await freePort();
const nodeProc = spawn(process.execPath, ['dist/server/main.js', '--pki', pki.dir, '--config', configPath, '--listen', `127.0.0.1:${nodePort}`, '--log-level', 'warn'], { stdio: 'inherit' });
children.push(nodeProc);
const nodeClient = connect({ endpoint: `127.0.0.1:${nodePort}`, caPem: pem.caPem, certPem: pem.clientCertPem, keyPem: pem.clientKeyPem });
for (let i = 0; ; i++) {
  try {
    await nodeClient.get('staticpods', 'default-nginx');
    break;
  } catch (err) {
    if (i > 100) throw err;
    await sleep(100);
  }
}
const pipeline = [];
let waiting;
const sub = nodeClient.watch('staticpods', { bootstrap: true }).subscribe((e) => {
  if (e.type === 'updated' && waiting && JSON.stringify(e.resource?.spec).includes(`nginx:${waiting.tag}`)) {
    pipeline.push(Date.now() - waiting.t0);
    waiting.done();
  }
});
await sleep(300);
for (let i = 1; i <= cfg.pipelineRuns; i++) {
  await new Promise((done) => {
    waiting = { tag: i, t0: Date.now(), done };
    writeFile(configPath, podConfig(i));
  });
  await sleep(150);
}
sub.unsubscribe();
nodeClient.close();
const cosiconfig = join(nodeDir, 'cosiconfig');
writeFileSync(cosiconfig, serializeCosiConfig({ currentContext: 'bench', contexts: new Map([['bench', { name: 'bench', endpoints: [`127.0.0.1:${nodePort}`], nodes: [], caPem: pem.caPem, certPem: pem.clientCertPem, keyPem: pem.clientKeyPem }]]) }));
const cli = [];
const bare = [];
for (let i = 0; i < cfg.cliRuns; i++) {
  cli.push(timeProcess(['dist/client/cli/main.js', '--cosiconfig', cosiconfig, 'get', 'staticpods']));
  bare.push(timeProcess(['-e', '']));
}
nodeProc.kill('SIGTERM');
results.scenarios.pipeline = { configToEvent: summarize(pipeline), cosictlMedianMs: summarize(cli).p50, nodeStartupMedianMs: summarize(bare).p50 };
progress(`  config -> event p50 ${results.scenarios.pipeline.configToEvent.p50} ms p99 ${results.scenarios.pipeline.configToEvent.p99} ms; cosictl median ${cli.length ? results.scenarios.pipeline.cosictlMedianMs.toFixed(0) : '-'} ms (node itself ${results.scenarios.pipeline.nodeStartupMedianMs.toFixed(0)} ms)`);

// ---- 8-10. Containers and logs from a real containerd (bench/runtime.mjs) -------------------------------------
// Skipped with a message where containerd cannot run; a failure is reported (exit code 1) after the other figures.
results.scenarios.runtime = await runtimeScenarios({ quick: QUICK, cliRuns: cfg.cliRuns, pki, pem, progress, children }).catch((err) => {
  progress(`scenarios 8-10 FAILED: ${err.stack ?? err}`);
  return { failed: err.message };
});

// ---- report ----------------------------------------------------------------------------------------------
const s = results.scenarios;
const fmt = (v, d = 1) => (v === undefined || Number.isNaN(v) ? '-' : typeof v === 'number' ? v.toFixed(d) : String(v));
const pair = (a, b, d = 1) => `${fmt(a, d)} / ${fmt(b, d)}`;
const ratio = (a, b) => (typeof a !== 'number' || typeof b !== 'number' || !b ? '-' : (a / b).toFixed(2));
const rows = [
  ['Get p99 sequential (ms)', s.get.cosid.sequential.p99, s.get.etcd.sequential.p99, s.get.ceiling.sequential.p99, '<= etcd'],
  ['Get p99, 64 in flight (ms)', s.get.cosid.inFlight64.p99, s.get.etcd.inFlight64.p99, s.get.ceiling.inFlight64.p99, '<= etcd'],
  [`List ${cfg.list} (ms)`, s.list.cosid.ms, s.list.etcd.ms, s.list.ceiling.ms, '<= etcd'],
  [`List ${cfg.list} (MB/s)`, s.list.cosid.mbPerSecond, s.list.etcd.mbPerSecond, s.list.ceiling.mbPerSecond, ''],
  [`List ${cfg.list}, first after loading (ms)`, s.list.cosid.firstMs, s.list.etcd.firstMs, s.list.ceiling.firstMs, ''],
  ['RSS per stored resource (bytes)', s.memory.perStored.cosid, s.memory.perStored.etcd, undefined, `<= 2 x ${s.memory.perStored.specBytes}`],
  ['RSS per stored resource, after a List (bytes)', s.memory.perStoredAfterList.cosid, s.memory.perStoredAfterList.etcd, undefined, `<= 2 x ${s.memory.perStored.specBytes}`],
  ['heap + buffers per stored resource / after a List (bytes)', pair(s.memory.heapPerStored.cosid, s.memory.heapPerStoredAfterList.cosid, 0), undefined, undefined, `<= 2 x ${s.memory.perStored.specBytes}`],
];
for (const n of cfg.fanout) {
  const f = s.fanout[n];
  rows.push([`${n} watchers: delivered within 3 s (%)`, f.cosid.within3sPct, f.etcd.within3sPct, f.ceiling.within3sPct, '100']);
  rows.push([`${n} watchers: delivery p99 (ms)`, f.cosid.p99, f.etcd.p99, f.ceiling.p99, '<= 500']);
  rows.push([`${n} watchers: events/s`, f.cosid.eventsPerSecond, f.etcd.eventsPerSecond, f.ceiling.eventsPerSecond, '']);
  rows.push([`${n} watchers: writer behind schedule, max (ms)`, f.cosid.writerBehindMaxMs, f.etcd.writerBehindMaxMs, f.ceiling.writerBehindMaxMs, 'writers never slowed']);
  rows.push([`${n} watchers: server CPU s / million events`, f.cosid.cpuSecondsPerMillion, f.etcd.cpuSecondsPerMillion, f.ceiling.cpuSecondsPerMillion, '<= etcd']);
  rows.push([`${n} watchers: client CPU s (all workers)`, f.cosid.clientCpuSeconds, f.etcd.clientCpuSeconds, f.ceiling.clientCpuSeconds, '']);
  rows.push([`${n} idle watchers: server RSS (MiB)`, f.cosid.idleWatcherRssBytes / 2 ** 20, f.etcd.idleWatcherRssBytes / 2 ** 20, f.ceiling.idleWatcherRssBytes / 2 ** 20, n >= 1000 ? '<= 20' : '']);
}
// cosid-only figures: "a / b" in the cosid column, no peer.
rows.push(['flood: Get p99 alone / under a List flood (ms)', pair(s.flood.alone.p99, s.flood.underFlood.p99), undefined, undefined, 'served throughout']);
rows.push(['stalled watcher: healthy p99 without / with (ms)', pair(s.stalled.without.p99, s.stalled.with.p99), undefined, undefined, '+ < 10%']);
rows.push(['config change -> event p50 / p99 (ms)', pair(s.pipeline.configToEvent.p50, s.pipeline.configToEvent.p99), undefined, undefined, 'p99 <= 50']);
rows.push(['cosictl get staticpods / bare node, median (ms)', pair(s.pipeline.cosictlMedianMs, s.pipeline.nodeStartupMedianMs), undefined, undefined, '<= 300']);
// Scenarios 8-10: the peer measured in the same run goes in the ceiling column (named in the figure).
const rt = s.runtime;
if (rt.skipped !== undefined || rt.failed !== undefined) {
  rows.push(['logs / follow / containers -k (scenarios 8-10)', rt.failed !== undefined ? 'FAILED' : 'skipped', undefined, undefined, rt.failed ?? 'no containerd here']);
} else {
  const lt = rt.logsTail;
  rows.push(['logs --tail 100 of 1 GiB, p50 (ms); ceiling: tail -n 100', lt.client.p50, undefined, lt.tail.p50, '< 50, < 2 x tail']);
  rows.push(['logs --tail 100 of 1 GiB, p99 (ms); ceiling: tail -n 100', lt.client.p99, undefined, lt.tail.p99, '< 50']);
  rows.push(['logs --tail 100: readLog in-process p50 / p99 (ms)', pair(lt.readLog.p50, lt.readLog.p99, 2), undefined, undefined, '']);
  rows.push([`logs --tail 100 with ${rt.containers.pods} pods, p50 / p99 (ms)`, pair(lt.with50Pods.p50, lt.with50Pods.p99), undefined, undefined, '< 50']);
  rows.push(['cosictl logs -k --tail 100 / get staticpods, median (ms)', pair(lt.cosictlMedianMs, rt.containers.cosictlGetMedianMs, 0), undefined, undefined, '']);
  rows.push(['follow latency p50 (ms); ceiling: tail -F', rt.follow.cosid.p50, undefined, rt.follow.tailF.p50, '']);
  rows.push(['follow latency p99 (ms); ceiling: tail -F', rt.follow.cosid.p99, undefined, rt.follow.tailF.p99, '< 50']);
  rows.push(['follow latency: readLog in-process p50 / p99 (ms)', pair(rt.follow.readLog.p50, rt.follow.readLog.p99), undefined, undefined, '']);
  rows.push([`cosictl containers -k, ${rt.containers.pods} pods, median (ms); ceiling: get staticpods`, rt.containers.cosictlContainersMedianMs, undefined, rt.containers.cosictlGetMedianMs, '< 2 x get staticpods']);
  rows.push([`Containers RPC / listPods in-process / its first listing, ${rt.containers.pods} pods, p50 (ms)`, `${pair(rt.containers.rpc.p50, rt.containers.listPods.p50)} / ${fmt(rt.containers.listPodsFirst.p50)}`, undefined, undefined, '']);
}
const header = ['figure', 'cosid', 'etcd', 'ceiling', 'cosid/etcd', 'cosid/ceiling', 'target'];
const table = [header, ...rows.map(([name, c, e, x, target]) => [name, fmt(c), fmt(e), fmt(x), ratio(c, e), ratio(c, x), target])];
const widths = header.map((_, i) => Math.max(...table.map((r) => String(r[i]).length)));
process.stdout.write('\n' + table.map((r) => r.map((c, i) => String(c).padEnd(widths[i] + 2)).join('').trimEnd()).join('\n') + '\n\n');
mkdirSync('bench/out', { recursive: true });
const out = `bench/out/results${QUICK ? '-quick' : ''}.json`;
writeFileSync(out, JSON.stringify({ ...results, table }, null, 2));
progress(`wrote ${out} (${((Date.now() - started) / 1000).toFixed(0)} s)`);

// Let the servers exit by themselves (a CPU profile is written on exit).
const exited = (c) => new Promise((r) => (c.exitCode !== null ? r() : c.once('exit', r)));
await rpc(cosidServer, { op: 'stop' }).catch(() => undefined);
await rpc(ceilingServer, { op: 'stop' }).catch(() => undefined);
await Promise.race([Promise.all([exited(cosidServer), exited(ceilingServer)]), sleep(10_000)]);
etcd.close();
cosidRaw.close();
ceilingRaw.close();
etcdProc.kill('SIGTERM');
for (const c of cleanup) await c();
await rm(pki.dir, { recursive: true, force: true });
process.exit(rt.failed !== undefined ? 1 : 0);
