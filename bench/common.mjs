// Shared bits of the benchmark: PKI, payloads of realistic size, process CPU/RSS, percentiles.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FLOW_CONTROL_WINDOW } from '../dist/client/client.js';
import { generateCa, issueClientCert, issueServerCert } from '../dist/shared/pki.js';

export const STATUS_KIND = { namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev' };

/**
 * Every gRPC client of the benchmark (cosid, ceiling, and the etcd3 client's channel) uses the same options: cosid's
 * client library's flow-control window, so no peer is held back by grpc-js's 64 KiB default.
 */
export const CHANNEL_OPTIONS = { 'grpc.max_receive_message_length': 256 << 20, 'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW };

/** A CA, a server certificate for 127.0.0.1 and an admin client certificate, as files. */
export async function makeBenchPki() {
  const dir = await mkdtemp(join(tmpdir(), 'cosi-bench-'));
  const ca = await generateCa({ commonName: 'bench CA' });
  const server = await issueServerCert(ca, { sans: ['127.0.0.1', 'localhost'] });
  const client = await issueClientCert(ca, { commonName: 'bench', organizations: ['os:admin'] });
  const files = {};
  for (const [name, pair] of Object.entries({ ca, server, client })) {
    files[`${name}Cert`] = join(dir, `${name}.crt`);
    files[`${name}Key`] = join(dir, `${name}.key`);
    await writeFile(files[`${name}Cert`], pair.certPem);
    await writeFile(files[`${name}Key`], pair.keyPem);
  }
  return { dir, ...files };
}

export function readPem(pki) {
  return {
    caPem: readFileSync(pki.caCert, 'utf8'),
    serverCertPem: readFileSync(pki.serverCert, 'utf8'),
    serverKeyPem: readFileSync(pki.serverKey, 'utf8'),
    clientCertPem: readFileSync(pki.clientCert, 'utf8'),
    clientKeyPem: readFileSync(pki.clientKey, 'utf8'),
  };
}

/** A PodStatus as the kubelet reports it, padded with container statuses to about `bytes` of JSON. */
export function podStatusPayload(i, bytes, seq = 0) {
  const status = {
    phase: 'Running',
    conditions: ['PodScheduled', 'Initialized', 'ContainersReady', 'Ready'].map((type) => ({ type, status: 'True', lastProbeTime: null, lastTransitionTime: '2026-11-25T04:00:00Z' })),
    hostIP: '10.5.0.2',
    hostIPs: [{ ip: '10.5.0.2' }],
    podIP: '10.5.0.2',
    podIPs: [{ ip: '10.5.0.2' }],
    startTime: '2026-11-25T04:00:00Z',
    qosClass: 'Burstable',
    containerStatuses: [],
    seq,
  };
  let n = 0;
  while (JSON.stringify(status).length < bytes) {
    status.containerStatuses.push({
      name: `container-${i}-${n}`,
      image: `registry.k8s.io/component-${n}:v1.34.1`,
      imageID: `registry.k8s.io/component-${n}@sha256:${'0123456789abcdef'.repeat(4)}`,
      containerID: `containerd://${'fedcba9876543210'.repeat(4)}`,
      ready: true,
      started: true,
      restartCount: 0,
      state: { running: { startedAt: '2026-11-25T04:00:01Z' } },
    });
    n++;
  }
  return status;
}

/** CPU seconds (user + system) and RSS bytes of a process by pid, from /proc. */
export function procStats(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const rssPages = Number(fields[21]);
  return { cpuSeconds: ticks / 100, rss: rssPages * 4096 };
}

/** CPU seconds the whole machine spent busy (all cores, all processes; /proc/stat, not idle or iowait). */
export function machineBusySeconds() {
  const [, ...f] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq, steal] = f.map(Number);
  return (user + nice + system + irq + softirq + steal) / 100;
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export function summarize(samples) {
  const s = Float64Array.from(samples).sort();
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99), max: s.length ? s[s.length - 1] : NaN };
}

/** Sends a request to a forked child and waits for the reply with the same id. */
export function rpc(child, msg) {
  const id = Math.random().toString(36).slice(2);
  return new Promise((resolve, reject) => {
    const onMessage = (m) => {
      if (m?.id !== id) return;
      child.off('message', onMessage);
      if (m.error) reject(new Error(m.error));
      else resolve(m.result);
    };
    child.on('message', onMessage);
    child.send({ ...msg, id });
  });
}

/** Serves rpc() requests in a child: handlers by op name. */
export function serveRpc(handlers) {
  process.on('message', async (m) => {
    try {
      const h = handlers[m.op];
      if (!h) throw new Error(`unknown op ${m.op}`);
      process.send({ id: m.id, result: await h(m) });
    } catch (err) {
      process.send({ id: m.id, error: err instanceof Error ? err.message : String(err) });
    }
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Latencies in ms of `n` calls of `fn`, `inFlight` at a time (each worker starts the next call when its own ends). */
export async function callLatencies(fn, n, inFlight) {
  const lat = [];
  let next = 0;
  await Promise.all(Array.from({ length: inFlight }, async () => {
    while (next < n) {
      next++;
      const t = process.hrtime.bigint();
      await fn();
      lat.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
  }));
  return lat;
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * The markdown table of two checkouts' figures (`figures.A[name]`, `figures.B[name]`: a value per round): median
 * [range] of each, and B/A. A figure one side lacks is left out.
 */
export function abTable(figures) {
  const fmt = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2));
  const lines = ['| figure | A median [range] | B median [range] | B/A |', '|---|---:|---:|---:|'];
  for (const name of new Set([...Object.keys(figures.A), ...Object.keys(figures.B)])) {
    const a = figures.A[name] ?? [];
    const b = figures.B[name] ?? [];
    if (a.length === 0 || b.length === 0) continue;
    lines.push(`| ${name} | ${fmt(median(a))} [${fmt(Math.min(...a))}-${fmt(Math.max(...a))}] | ${fmt(median(b))} [${fmt(Math.min(...b))}-${fmt(Math.max(...b))}] | ${(median(b) / median(a)).toFixed(2)} |`);
  }
  return lines;
}

export function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

/** Wall time of a whole process (node with `args`, or `file`), in ms; its output goes to /dev/null, or with `read` is read by us. */
export function timeProcess(args, { file = process.execPath, read = false } = {}) {
  const t0 = process.hrtime.bigint();
  execFileSync(file, args, { stdio: ['ignore', read ? 'pipe' : 'ignore', 'ignore'], maxBuffer: 64 << 20 });
  return Number(process.hrtime.bigint() - t0) / 1e6;
}
