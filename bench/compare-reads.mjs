// Before/after for scenarios 1 and 2 alone (memory cosid): two built checkouts' bench servers (bench/servers/cosid.mjs,
// compression off, as run.mjs starts them) run side by side, and each round times both in alternating order, so load
// from other processes on a shared machine falls on both alike. Per round: Get of one 2 KB PodStatus (500 sequential,
// 3,000 at 64 in flight), then 10,000 resources loaded afresh into each (new resources: nothing encoded yet), the
// first List of each, 3 warm-up Lists and 5 timed. Prints each figure's median and range over rounds, and B/A.
//   node bench/compare-reads.mjs --a /work/wt-base --b . [--rounds 5] [--out bench/out/compare-reads.json]
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { wire } from '../dist/shared/wire.js';
import { abTable, callLatencies, CHANNEL_OPTIONS, makeBenchPki, readPem, rpc, summarize } from './common.mjs';

const opt = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? fallback : process.argv[i + 1];
};
const trees = { A: resolve(opt('a', '.')), B: resolve(opt('b', '.')) };
const rounds = Number(opt('rounds', 5));
const out = resolve(opt('out', 'bench/out/compare-reads.json'));
const pki = await makeBenchPki();
const pem = readPem(pki);
const children = [];
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function startServer(tree) {
  const child = fork(`${tree}/bench/servers/cosid.mjs`, [], { cwd: tree, env: { ...process.env, BENCH_PKI: JSON.stringify(pki), BENCH_WATCH_COMPRESSION: '0' }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(child);
  return new Promise((res, rej) => {
    child.once('message', (m) => (m.ready ? res(child) : rej(new Error('not ready'))));
    child.once('exit', (code) => rej(new Error(`${tree}: server exited with ${code}`)));
  });
}
const servers = {};
const clients = {};
for (const label of ['A', 'B']) {
  servers[label] = await startServer(trees[label]);
  const port = await rpc(servers[label], { op: 'port' });
  clients[label] = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(pem.caPem), Buffer.from(pem.clientKeyPem), Buffer.from(pem.clientCertPem)), CHANNEL_OPTIONS);
}

const KIND = { namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev' };
const getReq = Buffer.from(wire.getRequest.encode({ ...KIND, id: 'default/pod-0' }));
const listReq = Buffer.from(wire.listRequest.encode(KIND));
const get = (label) => new Promise((res, rej) => clients[label].makeUnaryRequest('/cosi.resource.State/Get', (b) => b, (b) => b, getReq, (e, r) => (e ? rej(e) : res(r))));
async function timeGets(label, n, inFlight) {
  return summarize(await callLatencies(() => get(label), n, inFlight));
}
async function timeList(label) {
  const t0 = process.hrtime.bigint();
  let n = 0;
  for await (const _ of clients[label].makeServerStreamRequest('/cosi.resource.State/List', (b) => b, (b) => b, listReq)) n++;
  if (n !== 10_000) throw new Error(`${label}: List gave ${n} resources`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const figures = { A: {}, B: {} };
const add = (label, name, x) => (figures[label][name] ??= []).push(x);
const loads = [];
for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? ['A', 'B'] : ['B', 'A'];
  loads.push(Number(loadavg()[0].toFixed(2)));
  for (const label of order) {
    await rpc(servers[label], { op: 'clear' });
    await rpc(servers[label], { op: 'load', count: 1, bytes: 2048 });
    await timeGets(label, 200, 8);
  }
  for (const label of order) {
    const s = await timeGets(label, 500, 1);
    add(label, 'Get p50 ms', s.p50);
    add(label, 'Get p99 ms', s.p99);
  }
  for (const label of order) add(label, 'Get p99 at 64 in flight ms', (await timeGets(label, 3000, 64)).p99);
  for (const label of order) {
    await rpc(servers[label], { op: 'clear' });
    await rpc(servers[label], { op: 'load', count: 10_000, bytes: 2048 });
  }
  for (const label of order) add(label, 'first List 10,000 ms', await timeList(label));
  for (let i = 0; i < 3; i++) for (const label of order) await timeList(label);
  const lists = { A: [], B: [] };
  for (let i = 0; i < 5; i++) for (const label of order) lists[label].push(await timeList(label));
  for (const label of order) add(label, 'List 10,000 ms (median of 5)', summarize(lists[label]).p50);
  process.stderr.write(`round ${r + 1}/${rounds} (load ${loads.at(-1)}): ${['A', 'B'].map((l) => `${l} ${Object.entries(figures[l]).map(([k, v]) => `${k} ${v.at(-1).toFixed(2)}`).join(', ')}`).join('; ')}\n`);
}
loads.push(Number(loadavg()[0].toFixed(2)));

const lines = abTable(figures);
writeFileSync(out, JSON.stringify({ trees, rounds, loadAverage1m: loads, figures }, null, 2));
process.stdout.write(`A = ${trees.A}\nB = ${trees.B}\nload average (1 min) at each round: ${loads.join(', ')}\n\n${lines.join('\n')}\n`);
for (const label of ['A', 'B']) await rpc(servers[label], { op: 'stop' }).catch(() => undefined);
await rm(pki.dir, { recursive: true, force: true });
process.exit(0);
