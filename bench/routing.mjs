// Scenario 11: one endpoint, many nodes (issue 21). A node's cosid, and an endpoint cosid that proxies the calls
// naming it (metadata node); the same client harness reads the node directly and through the endpoint, in the same
// run: Get p50/p99 (sequential, and 64 in flight), and a fan-out to 100 watchers (delivery within 3 s, p99, CPU per
// event of the node and of the endpoint). The node runs with watchCompression off, as the fan-out rows of run.mjs.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { issueClientCert } from '../dist/shared/pki.js';
import { wire } from '../dist/shared/wire.js';
import { callLatencies, CHANNEL_OPTIONS, procStats, rpc, sleep, summarize } from './common.mjs';

const NODE = 'node-1';

export async function routingScenario({ pki, pem, cfg, progress, forkServer }) {
  const dir = await mkdtemp(join(tmpdir(), 'cosi-bench-routing-'));
  const servers = [];
  const clients = [];
  try {
    const serverFile = new URL('./servers/cosid.mjs', import.meta.url).pathname;
    const env = { BENCH_PKI: JSON.stringify(pki), BENCH_WATCH_COMPRESSION: '0' };
    const node = await forkServer(serverFile, { ...env, BENCH_NODE_NAME: NODE });
    servers.push(node);
    const nodePort = await rpc(node, { op: 'port' });
    const imp = await issueClientCert({ certPem: pem.caPem, keyPem: readFileSync(pki.caKey, 'utf8') }, { commonName: 'bench-endpoint', organizations: ['os:impersonator'] });
    const files = { cert: join(dir, 'impersonator.crt'), key: join(dir, 'impersonator.key') };
    await writeFile(files.cert, imp.certPem);
    await writeFile(files.key, imp.keyPem);
    const nodesFile = join(dir, 'nodes.yaml');
    await writeFile(nodesFile, `nodes:\n  - name: ${NODE}\n    address: 127.0.0.1:${nodePort}\n`);
    const endpoint = await forkServer(serverFile, { ...env, BENCH_NODE_NAME: 'endpoint', BENCH_NODES_FILE: nodesFile, BENCH_IMPERSONATOR: JSON.stringify(files) });
    servers.push(endpoint);
    const endpointPort = await rpc(endpoint, { op: 'port' });
    progress(`scenario 11: node ${NODE} on 127.0.0.1:${nodePort} (pid ${node.pid}), its endpoint on 127.0.0.1:${endpointPort} (pid ${endpoint.pid})`);

    // ---- Get, direct and through the endpoint, in alternating rounds (the machine's load drifts) -------------
    await rpc(node, { op: 'load', count: 100, bytes: 2048 });
    const client = (port) => {
      const c = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(pem.caPem), Buffer.from(pem.clientKeyPem), Buffer.from(pem.clientCertPem)), CHANNEL_OPTIONS);
      clients.push(c);
      return c;
    };
    const direct = client(nodePort);
    const viaEndpoint = client(endpointPort);
    const named = new grpc.Metadata();
    named.set('node', NODE);
    const getReq = Buffer.from(wire.getRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id: 'default/pod-0' }));
    const get = (c, md) => new Promise((res, rej) => c.makeUnaryRequest('/cosi.resource.State/Get', (b) => b, (b) => b, getReq, md ?? new grpc.Metadata(), (e, r) => (e ? rej(e) : res(r))));
    const paths = { direct: () => get(direct), endpoint: () => get(viaEndpoint, named) };
    for (const fn of Object.values(paths)) await callLatencies(fn, 300, 8); // warm up
    const lat = { direct: { seq: [], flight: [] }, endpoint: { seq: [], flight: [] } };
    const rounds = 4;
    for (let r = 0; r < rounds; r++) {
      for (const [name, fn] of Object.entries(paths)) {
        lat[name].seq.push(...(await callLatencies(fn, cfg.gets / rounds, 1)));
        lat[name].flight.push(...(await callLatencies(fn, cfg.concurrentGets / rounds / 4, 64)));
      }
    }
    const get11 = Object.fromEntries(Object.entries(lat).map(([k, v]) => [k, { sequential: summarize(v.seq), inFlight64: summarize(v.flight) }]));
    for (const [k, g] of Object.entries(get11)) progress(`  Get ${k}: p50 / p99 ${g.sequential.p50.toFixed(2)} / ${g.sequential.p99.toFixed(2)} ms sequential, p99 ${g.inFlight64.p99.toFixed(2)} ms at 64 in flight`);

    // ---- 100 watchers, direct and through the endpoint ---------------------------------------------------------
    const watchers = 100;
    const fanout = {};
    for (const [name, port, nodeName] of [['direct', nodePort, undefined], ['endpoint', endpointPort, NODE]]) {
      const workers = [];
      for (let i = 0; i < 4; i++) {
        const w = await forkServer(new URL('./clients/watch-worker.mjs', import.meta.url).pathname, { BENCH_WORKER: JSON.stringify({ mode: 'cosid', endpoint: `127.0.0.1:${port}`, count: watchers / 4, pki, aggregated: true, ...(nodeName !== undefined ? { node: nodeName } : {}) }) });
        workers.push(w);
      }
      for (let i = 0; ; i++) {
        const ready = await Promise.all(workers.map((w) => rpc(w, { op: 'ready' })));
        if (ready.every((r) => r >= watchers / 4)) break;
        if (i > 600) throw new Error(`${name}: watchers not ready`);
        await sleep(100);
      }
      await Promise.all(workers.map((w) => rpc(w, { op: 'reset' })));
      const cpu0 = { node: procStats(node.pid).cpuSeconds, endpoint: procStats(endpoint.pid).cpuSeconds };
      const written = await rpc(node, { op: 'churn', rate: cfg.rate, seconds: cfg.churnSeconds, ids: 100 });
      const expected = written.written * watchers;
      for (let i = 0; i < 30; i++) {
        const got = (await Promise.all(workers.map((w) => rpc(w, { op: 'report' })))).reduce((n, r) => n + r.received, 0);
        if (got >= expected) break;
        await sleep(100);
      }
      const cpu = { node: procStats(node.pid).cpuSeconds - cpu0.node, endpoint: procStats(endpoint.pid).cpuSeconds - cpu0.endpoint };
      const reports = await Promise.all(workers.map((w) => rpc(w, { op: 'report' })));
      const received = reports.reduce((n, r) => n + r.received, 0);
      const within3s = reports.reduce((n, r) => n + r.within3s, 0);
      const l = summarize(reports.flatMap((r) => r.samples));
      const errors = Object.assign({}, ...reports.map((r) => r.errors));
      await Promise.all(workers.map((w) => rpc(w, { op: 'stop' }).catch(() => undefined)));
      const perMillion = (s) => (received > 0 ? (s / received) * 1e6 : NaN);
      fanout[name] = {
        watchers,
        expected,
        delivered: received,
        within3sPct: (within3s / expected) * 100,
        p50: l.p50,
        p99: l.p99,
        nodeCpuSecondsPerMillion: perMillion(cpu.node),
        endpointCpuSecondsPerMillion: perMillion(cpu.endpoint),
        errors,
      };
      const f = fanout[name];
      progress(`  ${watchers} watchers ${name}: ${f.within3sPct.toFixed(1)}% within 3 s, p50 / p99 ${f.p50} / ${f.p99} ms; CPU s / million events: node ${f.nodeCpuSecondsPerMillion.toFixed(1)}, endpoint ${f.endpointCpuSecondsPerMillion.toFixed(1)}`);
      await sleep(300);
    }
    return { get: get11, fanout, rate: cfg.rate, seconds: cfg.churnSeconds };
  } finally {
    for (const c of clients) c.close();
    for (const s of servers) await rpc(s, { op: 'stop' }).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

/** The rows of scenario 11: [what, through the endpoint, direct, (unused), target]. */
export function routingRows(r) {
  const f = (n, d = 2) => (Number.isFinite(n) ? n.toFixed(d) : 'n/a');
  const g = r.get;
  const fe = r.fanout.endpoint;
  const fd = r.fanout.direct;
  return [
    ['endpoint: Get p99 via endpoint / direct (ms), sequential', `${f(g.endpoint.sequential.p99)} / ${f(g.direct.sequential.p99)}`, undefined, undefined, 'via < 1.5x direct'],
    ['endpoint: Get p99 via endpoint / direct (ms), 64 in flight', `${f(g.endpoint.inFlight64.p99)} / ${f(g.direct.inFlight64.p99)}`, undefined, undefined, ''],
    [`endpoint: ${fe.watchers} watchers, within 3 s (%) via / direct`, `${f(fe.within3sPct, 1)} / ${f(fd.within3sPct, 1)}`, undefined, undefined, 'unchanged (100)'],
    [`endpoint: ${fe.watchers} watchers, delivery p99 (ms) via / direct`, `${f(fe.p99, 0)} / ${f(fd.p99, 0)}`, undefined, undefined, ''],
    [`endpoint: ${fe.watchers} watchers, CPU s / million events: endpoint / node`, `${f(fe.endpointCpuSecondsPerMillion, 1)} / ${f(fe.nodeCpuSecondsPerMillion, 1)}`, undefined, undefined, 'endpoint < node'],
  ];
}
