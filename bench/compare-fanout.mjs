// Before/after for scenario 3 at N watchers (memory cosid) alone: two built checkouts' bench servers (compression off,
// 10,000 resources of 2 KB loaded, as run.mjs leaves them before its fan-out) run side by side, and each round runs
// the fan-out on both in alternating order, with each checkout's own watch workers (4 processes). The fan-out is
// run.mjs's: 200 updates/s of 100 resources for 10 s, then up to 3 s for stragglers; figures as run.mjs reports them.
//   node bench/compare-fanout.mjs --a /work/wt-base --b . [--rounds 6] [--watchers 100] [--out bench/out/compare-fanout.json]
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { abTable, machineBusySeconds, makeBenchPki, procStats, rpc, sleep, summarize } from './common.mjs';

const opt = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? fallback : process.argv[i + 1];
};
const trees = { A: resolve(opt('a', '.')), B: resolve(opt('b', '.')) };
const rounds = Number(opt('rounds', 6));
const watchers = Number(opt('watchers', 100));
const rate = 200;
const seconds = Number(opt('seconds', 10));
const out = resolve(opt('out', 'bench/out/compare-fanout.json'));
const pki = await makeBenchPki();
const children = [];
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function forkReady(file, cwd, env) {
  const child = fork(file, [], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(child);
  return new Promise((res, rej) => {
    child.once('message', (m) => (m.ready ? res(child) : rej(new Error('not ready'))));
    child.once('exit', (code) => rej(new Error(`${file} exited with ${code}`)));
  });
}
const servers = {};
const ports = {};
for (const label of ['A', 'B']) {
  servers[label] = await forkReady(`${trees[label]}/bench/servers/cosid.mjs`, trees[label], { BENCH_PKI: JSON.stringify(pki), BENCH_WATCH_COMPRESSION: '0' });
  ports[label] = await rpc(servers[label], { op: 'port' });
  await rpc(servers[label], { op: 'load', count: 10_000, bytes: 2048 });
}

async function fanout(label) {
  const server = servers[label];
  const workers = [];
  for (let i = 0; i < 4; i++) {
    const count = Math.floor(watchers / 4) + (i < watchers % 4 ? 1 : 0);
    const w = await forkReady(`${trees[label]}/bench/clients/watch-worker.mjs`, trees[label], { BENCH_WORKER: JSON.stringify({ mode: 'cosid', endpoint: `127.0.0.1:${ports[label]}`, count, pki, stall: false, aggregated: true }) });
    w.count = count;
    workers.push(w);
  }
  for (let i = 0; ; i++) {
    const ready = await Promise.all(workers.map((w) => rpc(w, { op: 'ready' })));
    if (ready.every((r, j) => r >= workers[j].count)) break;
    if (i > 600) throw new Error(`${label}: watchers not ready`);
    await sleep(100);
  }
  await sleep(300);
  await Promise.all(workers.map((w) => rpc(w, { op: 'reset' })));
  const load0 = loadavg()[0];
  const cpu0 = procStats(server.pid).cpuSeconds;
  const busy0 = machineBusySeconds();
  const written = await rpc(server, { op: 'churn', rate, seconds, ids: 100 });
  const expected = written.written * watchers;
  for (let i = 0; i < 30; i++) {
    const got = (await Promise.all(workers.map((w) => rpc(w, { op: 'report' })))).reduce((n, r) => n + r.received, 0);
    if (got >= expected) break;
    await sleep(100);
  }
  const cpu = procStats(server.pid).cpuSeconds - cpu0;
  const busy = machineBusySeconds() - busy0;
  const reports = await Promise.all(workers.map((w) => rpc(w, { op: 'report' })));
  await Promise.all(workers.map((w) => rpc(w, { op: 'stop' }).catch(() => undefined)));
  await sleep(300);
  const received = reports.reduce((n, r) => n + r.received, 0);
  const lat = summarize(reports.flatMap((r) => r.samples));
  return {
    'delivered %': (100 * received) / expected,
    'within 3 s %': (100 * reports.reduce((n, r) => n + r.within3s, 0)) / expected,
    'p50 ms': lat.p50,
    'p99 ms': lat.p99,
    'server CPU s per million events': (cpu / Math.max(1, received)) * 1e6,
    'writer behind max ms': written.writerBehindMaxMs,
    'machine busy CPU s (2 cores)': busy,
    'load average 1 min at start': Number(load0.toFixed(2)),
  };
}

const figures = { A: {}, B: {} };
for (let r = 0; r < rounds; r++) {
  for (const label of r % 2 === 0 ? ['A', 'B'] : ['B', 'A']) {
    const f = await fanout(label);
    for (const [k, v] of Object.entries(f)) (figures[label][k] ??= []).push(v);
    process.stderr.write(`round ${r + 1}/${rounds} ${label}: ${Object.entries(f).map(([k, v]) => `${k} ${Number(v.toFixed(2))}`).join(', ')}\n`);
  }
}

const lines = abTable(figures);
writeFileSync(out, JSON.stringify({ trees, rounds, watchers, rate, seconds, figures }, null, 2));
process.stdout.write(`A = ${trees.A}\nB = ${trees.B}\n${watchers} watchers, ${rate} updates/s for ${seconds} s\n\n${lines.join('\n')}\n`);
for (const label of ['A', 'B']) await rpc(servers[label], { op: 'stop' }).catch(() => undefined);
await rm(pki.dir, { recursive: true, force: true });
process.exit(0);
