// Scenario 12: the fleet (issue 23, docs/design/fleet.md §6 "Bench"). Per size (100 and 1000 simulated nodes x 5
// pods, 0.2 changes/s per node): a private single-member etcd (plaintext on loopback, tmpfs), the simulator
// (node-sim/fleet, forked) and 3 cosi-fleet replicas (forked, default --lease-ttl 5s). A library watchIter of the
// fleet's StaticPodStatuses through one replica (not the failover's victim) records every event; a second watcher
// reads a few sim nodes directly (the latency peer). Phases: steady window (latency, CPU, memory, etcd), at 1000
// nodes a window at 1000 changes/s (the projection's third point), the etcd peer (the same number of changes put
// straight into etcd, one watch per kind), new nodes, SIGKILL of the replica owning most nodes, whole-fleet restart.
// From the 3 points (100, 20/s), (1000, 200/s), (1000, 1000/s): cost = c0 + c_node*N + c_change*rate, projected to
// (10,000 nodes, 2,000/s) against the budgets. Every figure carries the 1-minute load average when it was taken.
import { fork, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { connect } from '../dist/client/index.js';
import { AT_ANNOTATION, forkSimFleet } from '../dist/node-sim/fleet/main.js';
import { freePort, procStats, rpc, sleep, summarize } from './common.mjs';

const REPLICAS = ['fleet-a', 'fleet-b', 'fleet-c'];
const PREFIX = '/bench-fleet/';
const NODE_LABEL = 'cosi-pods.dev/node';
const PODS = 5;
const PER_NODE_RATE = 0.2;
const FLEET_MAIN = new URL('../dist/server/fleet/main.js', import.meta.url).pathname;
const MiB = 2 ** 20;
const load = () => Number(loadavg()[0].toFixed(2));

/** Waits for `check` to return a truthy value; throws `what` (with the last state) past the deadline. */
async function until(what, ms, check, everyMs = 250) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await check().catch((err) => ({ error: err.message }));
    if (last === true || (last && last.ok)) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms / 1000} s (last: ${JSON.stringify(last)?.slice(0, 400)})`);
    await sleep(everyMs);
  }
}

function fdCount(pid) {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
  }
}

async function startEtcd(children) {
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'cosi-bench-fleet-etcd-'));
  const port = await freePort();
  const peerPort = await freePort();
  const proc = spawn('etcd', [
    '--name', 'fleet', '--data-dir', dir,
    '--listen-client-urls', `http://127.0.0.1:${port}`, '--advertise-client-urls', `http://127.0.0.1:${port}`,
    '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
    '--initial-cluster', `fleet=http://127.0.0.1:${peerPort}`,
    '--quota-backend-bytes', String(4 * 2 ** 30), '--log-level', 'error', '--logger', 'zap',
  ], { stdio: 'ignore' });
  children.push(proc);
  const endpoint = `http://127.0.0.1:${port}`;
  const client = new Etcd3({ hosts: endpoint });
  await until('etcd up', 15_000, async () => (await client.get('ping'), true), 100);
  const metric = async (name) => {
    const text = await (await fetch(`${endpoint}/metrics`)).text();
    const m = text.match(new RegExp(`^${name} (\\S+)$`, 'm'));
    return m ? Number(m[1]) : NaN;
  };
  return {
    proc,
    endpoint,
    client,
    /** Live data only: compacts all history first (physically), as auto-compaction would in time. */
    async compactedDb() {
      const rev = (await client.kv.range({ key: Buffer.from('ping') })).header.revision;
      await client.kv.compact({ revision: rev, physical: true });
      return { inUse: await metric('etcd_mvcc_db_total_size_in_use_in_bytes'), total: await metric('etcd_mvcc_db_total_size_in_bytes'), revision: Number(rev) };
    },
    dbInUse: () => metric('etcd_mvcc_db_total_size_in_use_in_bytes'),
    async stop() {
      client.close();
      proc.kill('SIGTERM');
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r)));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** One cosi-fleet process; its ports are fixed, so a restart serves at the same address (the watcher reconnects). */
async function startReplica(ctx, name) {
  const ports = (ctx.ports[name] ??= { listen: await freePort(), metrics: await freePort() });
  const args = [
    '--pki', ctx.simDir, '--nodes-file', ctx.nodesFile, '--listen', `127.0.0.1:${ports.listen}`, '--replica', name,
    '--etcd-endpoints', ctx.etcd.endpoint, '--etcd-insecure', '--etcd-prefix', PREFIX,
    '--metrics-listen', `127.0.0.1:${ports.metrics}`, '--log-level', 'warn',
  ];
  const child = fork(FLEET_MAIN, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: ctx.execArgv });
  ctx.children.push(child);
  const serving = await new Promise((resolve, reject) => {
    child.on('message', (m) => m?.event === 'serving' && resolve(m));
    child.once('exit', (code, sig) => reject(new Error(`replica ${name} ended before serving (${sig ?? code})`)));
  });
  const replica = { name, child, port: serving.port, metricsUrl: serving.metricsUrl };
  ctx.replicas.set(name, replica);
  return replica;
}

function replicaStats(r) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`replica ${r.name}: no stats answer`)), 10_000);
    const on = (m) => {
      if (m?.event !== 'stats') return;
      clearTimeout(t);
      r.child.off('message', on);
      resolve(m);
    };
    r.child.on('message', on);
    r.child.send({ op: 'stats' });
  });
}

async function scrape(url, name) {
  const text = await (await fetch(url)).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}

async function stopReplica(r, signal) {
  const ended = new Promise((res) => (r.child.exitCode !== null || r.child.signalCode !== null ? res() : r.child.once('exit', res)));
  r.child.kill(signal);
  await ended;
}

/** Every event of a watch, with the version seen per resource, event times per node, latencies and checks. */
class Watcher {
  constructor(stream, { nodeOf = (r) => r.metadata.labels[NODE_LABEL], idOf = (r) => r.metadata.id } = {}) {
    this.stream = stream;
    this.nodeOf = nodeOf;
    this.idOf = idOf;
    this.versions = new Map();
    this.samples = [];
    this.recording = false;
    this.events = 0;
    this.skipped = 0;
    this.repeated = 0;
    this.resyncs = 0;
    this.bootstrapped = false;
    this.listeners = new Set();
    this.nodeTimes = new Map(); // while `timesFor` is set: node -> receipt times
    this.timesFor = undefined;
    this.done = (async () => {
      for await (const ev of stream) this.observe(ev);
    })().catch((err) => (this.error = err));
  }

  observe(ev) {
    const now = Date.now();
    if (ev.type === 'bootstrapped') this.bootstrapped = true;
    const r = ev.resource;
    if (r === undefined) return;
    this.events++;
    if (ev.resync) this.resyncs++;
    const id = this.idOf(r);
    const node = this.nodeOf(r);
    const v = r.metadata.version;
    const prev = this.versions.get(id);
    if (ev.type === 'destroyed') this.versions.delete(id);
    else {
      if (prev !== undefined && ev.type === 'updated' && !ev.resync) {
        if (v > prev + 1) this.skipped += v - prev - 1;
        else if (v <= prev) this.repeated++;
      }
      this.versions.set(id, v);
    }
    const at = Number(r.metadata.annotations[AT_ANNOTATION]);
    if (this.recording && ev.type === 'updated' && Number.isFinite(at)) this.samples.push(now - at);
    if (this.timesFor?.has(node)) {
      let t = this.nodeTimes.get(node);
      if (t === undefined) this.nodeTimes.set(node, (t = []));
      t.push(now);
    }
    for (const l of this.listeners) l(node, id, v, now, ev);
  }

  /** True when every version the sim wrote (stats().nodes) is what this watcher holds. */
  missing(simNodes, key = (n, id) => `${n}/${id}`) {
    let missing = 0;
    for (const n of simNodes) for (const [id, v] of Object.entries(n.versions)) if ((this.versions.get(key(n.name, id)) ?? 0) < v) missing++;
    return missing;
  }

  close() {
    return this.stream.close();
  }
}

async function allFollowing(client, count, { lagZero = false } = {}) {
  const fns = await client.list('fleetnode', { namespace: 'fleet' });
  const byState = {};
  let lagging = 0;
  for (const r of fns) {
    byState[r.spec.state] = (byState[r.spec.state] ?? 0) + 1;
    if (r.spec.lagMs > 0) lagging++;
  }
  const ok = fns.length >= count && (byState.Following ?? 0) === fns.length && (!lagZero || lagging === 0);
  return { ok, nodes: fns.length, byState, lagging, fns };
}

/** CPU, memory and etcd figures over a window of `seconds` at the sim's current rate. */
async function steadyWindow(ctx, seconds, label) {
  const { sim, etcd, replicas, fleet } = ctx;
  const rs = [...replicas.values()];
  const snap = async () => ({
    t: Date.now(),
    cpu: rs.map((r) => procStats(r.child.pid).cpuSeconds),
    etcd: procStats(etcd.proc.pid).cpuSeconds,
    sim: procStats(sim.child.pid).cpuSeconds,
    bench: process.cpuUsage(),
    txns: (await Promise.all(rs.map((r) => scrape(r.metricsUrl, 'fleet_txns_total')))).reduce((a, b) => a + b, 0),
    ops: (await Promise.all(rs.map((r) => scrape(r.metricsUrl, 'fleet_ops_committed_total')))).reduce((a, b) => a + b, 0),
    changes: (await sim.call('stats')).changes,
    events: fleet.events,
    dbInUse: await etcd.dbInUse(),
  });
  fleet.samples = [];
  ctx.direct.samples = [];
  fleet.recording = ctx.direct.recording = true;
  const loads = [load()];
  const a = await snap();
  for (let i = 0; i < seconds / 10; i++) {
    await sleep(10_000);
    loads.push(load());
  }
  const b = await snap();
  fleet.recording = ctx.direct.recording = false;
  const dt = (b.t - a.t) / 1000;
  const changes = b.changes - a.changes;
  const cpu = rs.map((r, i) => (b.cpu[i] - a.cpu[i]) / dt);
  const stats = await Promise.all(rs.map((r) => replicaStats(r)));
  const rss = rs.map((r) => procStats(r.child.pid).rss);
  const benchCpu = (b.bench.user - a.bench.user + b.bench.system - a.bench.system) / 1e6 / dt;
  const out = {
    label,
    nodes: ctx.nodes,
    rate: (await sim.call('stats')).rate,
    seconds: dt,
    load: loads,
    changes,
    changesPerSecond: changes / dt,
    fleetEvents: b.events - a.events,
    latency: summarize(fleet.samples),
    directLatency: summarize(ctx.direct.samples),
    replicaCpu: cpu,
    replicaCpuMax: Math.max(...cpu),
    replicaCpuSum: cpu.reduce((x, y) => x + y, 0),
    etcdCpu: (b.etcd - a.etcd) / dt,
    simCpu: (b.sim - a.sim) / dt,
    benchCpu,
    txnsPerSecond: (b.txns - a.txns) / dt,
    opsPerSecond: (b.ops - a.ops) / dt,
    historyBytesPerChange: (b.dbInUse - a.dbInUse) / Math.max(1, changes),
    replicaRss: rss,
    replicaRssMax: Math.max(...rss),
    replicaHeap: stats.map((s) => s.memory.heapUsed),
    replicaHeapMax: Math.max(...stats.map((s) => s.memory.heapUsed)),
    replicaFds: rs.map((r) => fdCount(r.child.pid)),
    following: stats.map((s) => s.followers.following),
    etcdRss: procStats(etcd.proc.pid).rss,
    etcdFds: fdCount(etcd.proc.pid),
  };
  out.replicaFdsMax = Math.max(...out.replicaFds);
  out.cpuPerMillion = { replicas: (out.replicaCpuSum * dt * 1e6) / Math.max(1, changes), etcd: (out.etcdCpu * dt * 1e6) / Math.max(1, changes) };
  const db = await etcd.compactedDb();
  out.dbInUse = db.inUse;
  out.dbTotal = db.total;
  out.nodelistBytes = ((await etcd.client.get(`${PREFIX}nodelist`).buffer()) ?? Buffer.alloc(0)).length;
  ctx.progress(`  ${label}: ${changes} changes in ${dt.toFixed(0)} s (${out.changesPerSecond.toFixed(0)}/s), ${out.txnsPerSecond.toFixed(0)} txns/s; ` +
    `fleet watcher p50/p99 ${out.latency.p50}/${out.latency.p99} ms (n ${out.latency.n}), direct ${out.directLatency.p50}/${out.directLatency.p99} ms; ` +
    `CPU s/s replicas ${cpu.map((c) => c.toFixed(2)).join(' ')}, etcd ${out.etcdCpu.toFixed(2)}, sim ${out.simCpu.toFixed(2)}, bench ${benchCpu.toFixed(2)}; ` +
    `replica RSS MiB ${rss.map((x) => (x / MiB).toFixed(0)).join(' ')}, heap MiB ${out.replicaHeap.map((x) => (x / MiB).toFixed(0)).join(' ')}, fds ${out.replicaFds.join(' ')}; ` +
    `etcd RSS ${(out.etcdRss / MiB).toFixed(0)} MiB, db in use ${(db.inUse / MiB).toFixed(1)} MiB (total ${(db.total / MiB).toFixed(1)}); load ${loads.join(' ')}`);
  return out;
}

/** The etcd peer: as many changes as the fleet's window, put straight into etcd at its rate, one watch per kind. */
async function etcdPeer(ctx, rate, seconds) {
  const sample = await ctx.etcd.client.getAll().prefix(`${PREFIX}r/k8s/StaticPodStatuses.kubernetes.talos.dev/`).limit(1).buffers();
  const valueBytes = Object.values(sample)[0]?.length ?? 2000;
  await ctx.sim.call('setRate', 0);
  await sleep(2000);
  const worker = fork(new URL('./clients/etcd-churn.mjs', import.meta.url).pathname, [], {
    env: { ...process.env, BENCH_ETCD_CHURN: JSON.stringify({ endpoint: ctx.etcd.endpoint, prefix: '/bench-peer/r/', nodes: ctx.nodes, pods: PODS, valueBytes }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  ctx.children.push(worker);
  await new Promise((r) => worker.once('message', r));
  const rs = [...ctx.replicas.values()];
  const a = { t: Date.now(), etcd: procStats(ctx.etcd.proc.pid).cpuSeconds, worker: procStats(worker.pid).cpuSeconds, replicas: rs.map((r) => procStats(r.child.pid).cpuSeconds) };
  const loads = [load()];
  const res = await rpc(worker, { op: 'churn', rate, seconds });
  loads.push(load());
  const b = { t: Date.now(), etcd: procStats(ctx.etcd.proc.pid).cpuSeconds, worker: procStats(worker.pid).cpuSeconds, replicas: rs.map((r) => procStats(r.child.pid).cpuSeconds) };
  await rpc(worker, { op: 'stop' }).catch(() => undefined);
  await ctx.sim.call('setRate', ctx.rate);
  const m = (s) => (s * 1e6) / Math.max(1, res.written);
  const idleReplicas = rs.reduce((s, r, i) => s + b.replicas[i] - a.replicas[i], 0) / ((b.t - a.t) / 1000);
  const out = { rate, valueBytes, ...res, load: loads, etcdCpuPerMillion: m(b.etcd - a.etcd), clientCpuPerMillion: m(b.worker - a.worker), idleReplicaCpu: idleReplicas };
  ctx.progress(`  etcd peer: ${res.written} puts of ${valueBytes} B at ${rate}/s, ${res.seen} seen by the kind watchers, put->event p50/p99 ${res.delay.p50}/${res.delay.p99} ms; ` +
    `CPU s per million: etcd ${out.etcdCpuPerMillion.toFixed(0)}, client ${out.clientCpuPerMillion.toFixed(0)} (fleet idle meanwhile: ${idleReplicas.toFixed(2)} s/s); load ${loads.join(' ')}`);
  return out;
}

/** addNode() `count` times, each timed to its PODS StaticPodStatuses at the fleet watcher. */
async function newNodes(ctx, count) {
  const times = [];
  for (let i = 0; i < count; i++) {
    const seen = new Set();
    let name;
    let doneAt;
    const listener = (node, id, _v, now) => {
      if (node !== name || name === undefined) return;
      seen.add(id);
      if (seen.size >= PODS && doneAt === undefined) doneAt = now;
    };
    ctx.fleet.listeners.add(listener);
    const t0 = Date.now();
    try {
      ({ name } = await ctx.sim.call('addNode'));
      await until(`new node ${name} visible at the watcher`, 60_000, async () => doneAt !== undefined, 20);
      times.push(doneAt - t0);
    } finally {
      ctx.fleet.listeners.delete(listener);
    }
  }
  const s = summarize(times);
  ctx.progress(`  new node visible: median ${times.sort((a, b) => a - b)[Math.floor(times.length / 2)]} ms, max ${s.max} ms over ${count} (${times.join(' ')}); load ${load()}`);
  return { times, median: times[Math.floor(times.length / 2)], max: s.max, load: load() };
}

/** Waits until the watcher holds every version the sim wrote; returns the sim's stats then. */
async function caughtUp(ctx, ms, what) {
  let st;
  await until(what, ms, async () => {
    st = await ctx.sim.call('stats');
    const missing = ctx.fleet.missing(st.nodes);
    return missing === 0 ? true : { missing };
  }, 500);
  return st;
}

async function failover(ctx) {
  const { client, sim, fleet } = ctx;
  const { fns } = await allFollowing(client, 0);
  const owned = {};
  for (const r of fns) (owned[r.spec.replica] ??= []).push(r.metadata.id);
  const victimName = Object.entries(owned).sort((a, b) => b[1].length - a[1].length)[0][0];
  const victim = ctx.replicas.get(victimName);
  if (victimName === ctx.watcherReplica) throw new Error('the watcher is on the victim');
  const nodes = new Set(owned[victimName]);
  const before = await sim.call('stats');
  const skipped0 = fleet.skipped;
  fleet.nodeTimes = new Map();
  fleet.timesFor = nodes;
  const windowStart = Date.now();
  await sleep(5000);
  const killedAt = Date.now();
  await stopReplica(victim, 'SIGKILL');
  ctx.replicas.delete(victimName);
  // One change on each of its nodes right at the kill: its arrival at the watcher is that node's failover gap.
  await Promise.all([...nodes].map((n) => sim.call('bump', n, 1)));
  const target = new Map((await sim.call('stats')).nodes.filter((n) => nodes.has(n.name)).map((n) => [n.name, n.versions]));
  const recovered = new Map();
  const check = (node, _id, _v, now) => {
    const want = target.get(node);
    if (want === undefined || recovered.has(node)) return;
    if (Object.entries(want).every(([id, v]) => (fleet.versions.get(`${node}/${id}`) ?? 0) >= v)) recovered.set(node, now);
  };
  fleet.listeners.add(check);
  for (const n of nodes) check(n, '', 0, Date.now());
  try {
    await until(`the victim's ${nodes.size} nodes back at the watcher`, 120_000, async () => (recovered.size === nodes.size ? true : { recovered: recovered.size, of: nodes.size }), 200);
  } finally {
    fleet.listeners.delete(check);
  }
  const after = await caughtUp(ctx, 60_000, 'the watcher caught up after the failover');
  fleet.timesFor = undefined;
  // The silence at the watcher across the kill, per victim node: from its last event before the kill (or the kill,
  // if none in the 5 s before) to its first event after. At 0.2 changes/s a node is quiet ~5 s between changes anyway.
  const gaps = [...nodes].map((n) => {
    const ts = (fleet.nodeTimes.get(n) ?? []).filter((t) => t >= windowStart);
    const before = ts.filter((t) => t <= killedAt).at(-1) ?? killedAt;
    const after = ts.find((t) => t > killedAt) ?? recovered.get(n);
    return after - before;
  });
  const recoveries = [...recovered.values()].map((t) => t - killedAt);
  const out = {
    victim: victimName,
    owned: Object.fromEntries(Object.entries(owned).map(([k, v]) => [k, v.length])),
    nodes: nodes.size,
    gap: summarize(recoveries),
    longestEventGap: summarize(gaps),
    relists: after.bootstraps - before.bootstraps,
    overruns: after.overruns - before.overruns,
    skippedVersions: fleet.skipped - skipped0,
    load: load(),
  };
  ctx.progress(`  failover: killed ${victimName} (owned ${nodes.size} of ${fns.length}: ${JSON.stringify(out.owned)}); kill -> node's change at the watcher p50/max ${out.gap.p50}/${out.gap.max} ms; ` +
    `silence across the kill p50/max ${out.longestEventGap.p50}/${out.longestEventGap.max} ms; re-lists ${out.relists}, overruns ${out.overruns}, versions skipped ${out.skippedVersions}; load ${out.load}`);
  await startReplica(ctx, victimName);
  await until('all Following after the victim came back', 180_000, async () => allFollowing(client, ctx.nodes), 1000);
  return out;
}

async function wholeRestart(ctx) {
  const { client, sim, fleet } = ctx;
  const before = await caughtUp(ctx, 60_000, 'caught up before the restart');
  const resyncs0 = fleet.resyncs;
  const skipped0 = fleet.skipped;
  await Promise.all([...ctx.replicas.values()].map((r) => stopReplica(r, 'SIGTERM')));
  ctx.replicas.clear();
  ctx.progress('  whole-fleet restart: 3 replicas stopped (SIGTERM), churning 10 s');
  await sleep(10_000);
  const t0 = Date.now();
  await Promise.all(REPLICAS.map((n) => startReplica(ctx, n)));
  const servingMs = Date.now() - t0;
  let followingMs;
  let lagZeroMs;
  let caughtUpMs;
  let fleetCaughtUpMs;
  await until('whole-fleet restart: all Following, lag 0, watcher caught up', 300_000, async () => {
    if (followingMs === undefined && (await allFollowing(client, ctx.nodes)).ok) followingMs = Date.now() - t0;
    if (followingMs !== undefined && lagZeroMs === undefined && (await allFollowing(client, ctx.nodes, { lagZero: true })).ok) lagZeroMs = Date.now() - t0;
    const simNodes = (await sim.call('stats')).nodes;
    if (caughtUpMs === undefined && fleet.missing(simNodes) === 0) caughtUpMs = Date.now() - t0;
    // The fleet's own copy (a List), apart from the watcher, whose reconnects back off (1 s doubling, up to 30 s).
    if (fleetCaughtUpMs === undefined && followingMs !== undefined) {
      const listed = new Map((await client.list('staticpodstatus')).map((r) => [r.metadata.id, r.metadata.version]));
      if (simNodes.every((n) => Object.entries(n.versions).every(([id, v]) => (listed.get(`${n.name}/${id}`) ?? 0) >= v))) fleetCaughtUpMs = Date.now() - t0;
    }
    return followingMs !== undefined && lagZeroMs !== undefined && caughtUpMs !== undefined && fleetCaughtUpMs !== undefined ? true : { followingMs, lagZeroMs, caughtUpMs, fleetCaughtUpMs };
  }, 500);
  const after = await sim.call('stats');
  const maxBootstraps = Math.max(...(await Promise.all([...ctx.replicas.values()].map((r) => scrape(r.metricsUrl, 'fleet_bootstraps\\{stat="max"\\}').catch(() => NaN)))));
  const out = {
    servingMs,
    followingMs,
    lagZeroMs,
    caughtUpMs,
    fleetCaughtUpMs,
    totalMs: Math.max(followingMs, lagZeroMs, caughtUpMs),
    relists: after.bootstraps - before.bootstraps,
    overruns: after.overruns - before.overruns,
    watcherResyncs: fleet.resyncs - resyncs0,
    skippedVersions: fleet.skipped - skipped0,
    bootstrapsMax: maxBootstraps,
    load: load(),
  };
  ctx.progress(`  whole-fleet restart: serving ${servingMs} ms, all Following ${followingMs} ms, lag 0 ${lagZeroMs} ms, fleet (List) caught up ${fleetCaughtUpMs} ms, watcher caught up ${caughtUpMs} ms after the start; ` +
    `re-lists ${out.relists}, overruns ${out.overruns}, watcher resync events ${out.watcherResyncs}, versions skipped ${out.skippedVersions}, bootstrap slots max ${maxBootstraps}; load ${out.load}`);
  return out;
}

async function runSize(nodes, { quick, progress, children, windowSeconds }) {
  const rate = nodes * PER_NODE_RATE;
  const dir = await mkdtemp(join(tmpdir(), 'cosi-bench-fleet-'));
  const ctx = { nodes, rate, progress, children, replicas: new Map(), ports: {}, execArgv: process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', 'bench/out'] : [] };
  const result = { nodes, rate };
  try {
    ctx.etcd = await startEtcd(children);
    const simStart = Date.now();
    ctx.sim = await forkSimFleet({ nodes, pods: PODS, rate, dir, logLevel: 'warn' });
    children.push(ctx.sim.child);
    ctx.simDir = dir;
    ctx.nodesFile = ctx.sim.ready.nodesFile;
    result.simStartMs = Date.now() - simStart;
    const t0 = Date.now();
    await Promise.all(REPLICAS.map((n) => startReplica(ctx, n)));
    const pem = (f) => import('node:fs').then((fs) => fs.readFileSync(join(dir, f), 'utf8'));
    const creds = { caPem: await pem('ca.crt'), certPem: await pem('fleet.crt'), keyPem: await pem('fleet.key') };
    const any = connect({ endpoint: `127.0.0.1:${ctx.replicas.get(REPLICAS[0]).port}`, ...creds });
    await until(`${nodes} nodes all Following`, 600_000, async () => allFollowing(any, nodes), 1000);
    result.initialFollowMs = Date.now() - t0;
    // The watcher goes through a replica that does not own the most nodes (that one is killed later).
    const { fns } = await allFollowing(any, 0);
    any.close();
    const owned = {};
    for (const r of fns) owned[r.spec.replica] = (owned[r.spec.replica] ?? 0) + 1;
    const victim = Object.entries(owned).sort((a, b) => b[1] - a[1])[0][0];
    ctx.watcherReplica = REPLICAS.find((n) => n !== victim);
    ctx.client = connect({ endpoint: `127.0.0.1:${ctx.replicas.get(ctx.watcherReplica).port}`, ...creds });
    progress(`fleet ${nodes} nodes x ${PODS} pods at ${rate}/s: sim up in ${result.simStartMs} ms, all Following ${result.initialFollowMs} ms after the replicas started; owned ${JSON.stringify(owned)}; watcher via ${ctx.watcherReplica}; load ${load()}`);
    const listStart = Date.now();
    result.fleetListItems = (await ctx.client.list('staticpodstatus')).length;
    result.fleetListMs = Date.now() - listStart;
    ctx.fleet = new Watcher(ctx.client.watchIter('staticpodstatus', { bootstrap: true }));
    await until('fleet watcher bootstrapped', 60_000, async () => ctx.fleet.bootstrapped);
    // The latency peer: the same kind read straight from a few sim nodes (their events are among the fleet's).
    const st = await ctx.sim.call('stats');
    const directNodes = st.nodes.slice(0, Math.min(10, nodes));
    ctx.directClients = directNodes.map((n) => ({ name: n.name, client: connect({ endpoint: n.address, ...creds }) }));
    const directStreams = ctx.directClients.map(({ name, client }) => new Watcher(client.watchIter('staticpodstatus', { bootstrap: true }), { nodeOf: () => name, idOf: (r) => `${name}/${r.metadata.id}` }));
    // One recorder for all direct watchers: a merged view of their samples.
    ctx.direct = {
      get samples() { return directStreams.flatMap((w) => w.samples); },
      set samples(v) { for (const w of directStreams) w.samples = []; },
      set recording(v) { for (const w of directStreams) w.recording = v; },
    };
    await caughtUp(ctx, 120_000, 'fleet watcher caught up');
    await sleep(5000);
    result.steady = await steadyWindow(ctx, windowSeconds, `${nodes} nodes, ${rate}/s`);
    // BENCH_FLEET_FAST=0 skips the 1000/s window (it saturates a 2-core machine; the projection then is not made).
    if (nodes >= 1000 && process.env.BENCH_FLEET_FAST !== '0') {
      await ctx.sim.call('setRate', 1000);
      await sleep(5000);
      result.fast = await steadyWindow(ctx, windowSeconds, `${nodes} nodes, 1000/s`);
      await ctx.sim.call('setRate', rate);
      await caughtUp(ctx, 120_000, 'caught up after 1000/s');
    }
    result.peer = await etcdPeer(ctx, rate, Math.min(windowSeconds, 30));
    result.newNode = await newNodes(ctx, quick ? 5 : 10);
    ctx.nodes += result.newNode.times.length;
    result.failover = await failover(ctx);
    result.restart = await wholeRestart(ctx);
    result.watcher = { events: ctx.fleet.events, skippedVersions: ctx.fleet.skipped, repeated: ctx.fleet.repeated, resyncs: ctx.fleet.resyncs, error: ctx.fleet.error?.message };
    for (const w of directStreams) await w.close();
    await ctx.fleet.close();
    return result;
  } finally {
    for (const { client } of ctx.directClients ?? []) client.close();
    ctx.client?.close();
    await Promise.all([...ctx.replicas.values()].map((r) => stopReplica(r, 'SIGTERM')));
    await ctx.sim?.close();
    await ctx.etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Budgets at 10,000 nodes (docs/design/fleet.md §6), and what moves each. */
const BUDGETS = [
  { key: 'replicaCpuMax', name: 'replica event loop (busiest replica, core)', limit: 0.7, unit: 'core', remedy: 'more replicas (each follows N/replicas nodes) does not move what every replica does for the whole fleet (its etcd watch and cache decode): keep values encoded and decode lazily, or let only the owner decode a node\'s rows' },
  { key: 'replicaHeapMax', name: 'replica heap', limit: 2 * 2 ** 30, unit: 'bytes', remedy: 'keep the cached values encoded (decode on read), or shard the cache: each replica caches its own nodes and proxies the rest' },
  { key: 'replicaFdsMax', name: 'replica fds', limit: 20_000, unit: 'fds', remedy: 'more replicas (node connections are N/replicas per replica)' },
  { key: 'dbInUse', name: 'etcd db, live data (quota 2 GB)', limit: 2 * 10 ** 9, unit: 'bytes', remedy: 'a larger quota (8 GB is etcd\'s suggested maximum), smaller values' },
  { key: 'nodelistBytes', name: 'nodelist value (1.5 MiB request limit)', limit: 1.5 * MiB, unit: 'bytes', remedy: 'one key per node under <P>nodes/ instead of one value' },
];

/** Solves cost = c0 + cn*N + cr*rate through the 3 points (exact: 3 points, 3 unknowns). */
function fit3(points, key) {
  const [p1, p2, p3] = points;
  const cr = (p3[key] - p2[key]) / (p3.rate - p2.rate);
  const y1 = p1[key] - cr * p1.rate;
  const y2 = p2[key] - cr * p2.rate;
  const cn = (y2 - y1) / (p2.nodes - p1.nodes);
  const c0 = y1 - cn * p1.nodes;
  return { c0, cNode: cn, cChange: cr, at: (n, r) => c0 + cn * n + cr * r };
}

export function projection(results) {
  const r100 = results.find((r) => r.nodes === 100);
  const r1000 = results.find((r) => r.nodes === 1000);
  if (!r100?.steady || !r1000?.steady || !r1000.fast) return undefined;
  const point = (w) => ({ nodes: w.nodes, rate: w.changesPerSecond, replicaRssMax: w.replicaRssMax, replicaHeapMax: w.replicaHeapMax, replicaCpuMax: w.replicaCpuMax, etcdCpu: w.etcdCpu, etcdRss: w.etcdRss, dbInUse: w.dbInUse, txnsPerSecond: w.txnsPerSecond, replicaFdsMax: w.replicaFdsMax, nodelistBytes: w.nodelistBytes, historyBytesPerChange: w.historyBytesPerChange, load: w.load });
  const points = [point(r100.steady), point(r1000.steady), point(r1000.fast)];
  const keys = ['replicaRssMax', 'replicaHeapMax', 'replicaCpuMax', 'etcdCpu', 'etcdRss', 'dbInUse', 'txnsPerSecond', 'replicaFdsMax'];
  const fits = {};
  for (const k of keys) {
    const f = fit3(points, k);
    fits[k] = { c0: f.c0, cNode: f.cNode, cChange: f.cChange, at10k: f.at(10_000, 2000) };
  }
  // The node list grows with N only.
  const perNode = (r1000.steady.nodelistBytes - r100.steady.nodelistBytes) / 900;
  fits.nodelistBytes = { c0: r100.steady.nodelistBytes - perNode * 100, cNode: perNode, cChange: 0, at10k: r100.steady.nodelistBytes + perNode * 9900 };
  const budgets = BUDGETS.map((b) => ({ ...b, projected: fits[b.key].at10k, ratio: fits[b.key].at10k / b.limit })).sort((a, b) => b.ratio - a.ratio);
  // History between compactions: bytes per change (at 1000/s) x 2000/s; minutes until 2 GB less the live data.
  const hist = r1000.fast.historyBytesPerChange;
  const minutesToQuota = (2 * 10 ** 9 - fits.dbInUse.at10k) / (hist * 2000) / 60;
  // A fleet bootstrap of 50k items, linear from the 5k-item list at 1000 nodes.
  const list50kMs = (r1000.fleetListMs / r1000.fleetListItems) * 50_000;
  return { points, fits, budgets, first: budgets[0], historyBytesPerChange: hist, minutesToQuota, list50kMs };
}

export async function fleetScenario({ quick, progress, children, sizes }) {
  const windowSeconds = quick ? 20 : 60;
  const results = [];
  for (const n of sizes ?? (quick ? [100] : [100, 1000])) {
    progress(`scenario 12: fleet of ${n} simulated nodes x ${PODS} pods, ${n * PER_NODE_RATE} changes/s, 3 replicas (--lease-ttl 5s, the default), one etcd`);
    results.push(await runSize(n, { quick, progress, children, windowSeconds }));
  }
  return { sizes: results, projection: projection(results), leaseTtl: '5s', windowSeconds };
}

/** The rows of scenario 12: [figure, fleet, peer (same run), load, target]. */
export function fleetRows(s) {
  const f = (n, d = 0) => (Number.isFinite(n) ? n.toFixed(d) : 'n/a');
  const rows = [];
  const r100 = s.sizes.find((r) => r.nodes === 100);
  const r1000 = s.sizes.find((r) => r.nodes === 1000);
  for (const r of s.sizes) {
    const w = r.steady;
    const p = `${r.nodes} nodes:`;
    const avg = (a) => a.reduce((x, y) => x + y, 0) / a.length;
    rows.push([`${p} change -> fleet watcher p50 / p99 (ms); peer: read from the node`, `${f(w.latency.p50)} / ${f(w.latency.p99)}`, `${f(w.directLatency.p50)} / ${f(w.directLatency.p99)}`, f(avg(w.load), 1), 'p99 < 1000']);
    if (r.fast) rows.push([`${p} at 1000/s: change -> fleet watcher p50 / p99 (ms)`, `${f(r.fast.latency.p50)} / ${f(r.fast.latency.p99)}`, `${f(r.fast.directLatency.p50)} / ${f(r.fast.directLatency.p99)}`, f(avg(r.fast.load), 1), '']);
    rows.push([`${p} new node visible (5 statuses at the watcher), median / max (ms)`, `${f(r.newNode.median)} / ${f(r.newNode.max)}`, '', f(r.newNode.load, 1), '< 5000']);
    rows.push([`${p} CPU s per million changes: replicas + etcd; peer: etcd + its client`, `${f(w.cpuPerMillion.replicas)} + ${f(w.cpuPerMillion.etcd)}`, `${f(r.peer.etcdCpuPerMillion)} + ${f(r.peer.clientCpuPerMillion)}`, f(avg(w.load), 1), '']);
    rows.push([`${p} etcd txns/s (fleet_txns_total) for ${f(w.changesPerSecond)} changes/s; peer: puts/s`, f(w.txnsPerSecond), f(r.peer.written / r.peer.seconds), f(avg(w.load), 1), '']);
    rows.push([`${p} failover gap: kill -> node's next change at the watcher, p50 / max (ms)`, `${f(r.failover.gap.p50)} / ${f(r.failover.gap.max)}`, '', f(r.failover.load, 1), '< 10000']);
    rows.push([`${p} failover: silence at the watcher across the kill p50 / max (ms); re-lists, versions lost`, `${f(r.failover.longestEventGap.p50)} / ${f(r.failover.longestEventGap.max)}; ${r.failover.relists}, ${r.failover.skippedVersions}`, '', f(r.failover.load, 1), 'nothing lost']);
    rows.push([`${p} whole-fleet restart: all Following / lag 0 / List caught up / watcher caught up (ms)`, `${f(r.restart.followingMs)} / ${f(r.restart.lagZeroMs)} / ${f(r.restart.fleetCaughtUpMs)} / ${f(r.restart.caughtUpMs)}`, '', f(r.restart.load, 1), '']);
    rows.push([`${p} whole-fleet restart: re-lists, overruns, watcher resyncs, versions lost`, `${r.restart.relists}, ${r.restart.overruns}, ${r.restart.watcherResyncs}, ${r.restart.skippedVersions}`, '', f(r.restart.load, 1), '0, 0, -, 0']);
  }
  if (r100 && r1000) {
    const a = r100.steady;
    const b = r1000.steady;
    const per = (k) => (b[k] - a[k]) / 900;
    rows.push(['fleet memory per node, replica RSS / heapUsed (busiest replica, KiB)', `${f(per('replicaRssMax') / 1024, 1)} / ${f(per('replicaHeapMax') / 1024, 1)}`, '', `${f(a.load[0], 1)}..${f(b.load.at(-1), 1)}`, '']);
    rows.push(['etcd per node: RSS / db in use after compaction (KiB)', `${f(per('etcdRss') / 1024, 1)} / ${f(per('dbInUse') / 1024, 1)}`, '', '', '']);
  }
  const pr = s.projection;
  if (pr) {
    for (const b of pr.budgets) rows.push([`10,000 nodes, 2,000/s (projected): ${b.name}`, b.unit === 'bytes' ? `${f(b.projected / MiB)} MiB` : f(b.projected, 2), `budget ${b.unit === 'bytes' ? `${f(b.limit / MiB)} MiB` : b.limit}`, '', b.ratio > 1 ? `BREAKS (x${b.ratio.toFixed(1)})` : `ok (${(b.ratio * 100).toFixed(0)}%)`]);
  }
  return rows;
}
