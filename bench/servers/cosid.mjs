// The cosid side of the benchmark: a real Cosid over mTLS; the writer runs in-process, as a controller does.
// BENCH_STORE=etcd puts its store on the bench's etcd (BENCH_ETCD: {"endpoint", "prefix"}, mTLS with the bench's
// client certificate); the writes then go to etcd and come back to the hub through the kind's etcd watch.
// BENCH_WATCH_COMPRESSION=0 starts it with watchCompression off (every grpc-js client accepts gzip: without it, all
// the bench's watchers would get gzipped messages). Metrics are served on 127.0.0.1 (op `metricsUrl`), so the bench
// reads cosi_watch_bytes_sent_total{form} around each fan-out run. BENCH_NODE_NAME names it (default bench);
// BENCH_NODES_FILE and BENCH_IMPERSONATOR ({"cert", "key"}: files of an os:impersonator certificate) make it an endpoint
// that proxies calls naming another node (bench/routing.mjs).
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { WatchFraming } from '../../dist/server/api/watch-sink.js';
import { Cosid } from '../../dist/server/cosid.js';
import { EtcdStore } from '../../dist/server/store/etcd.js';
import { podStatusPayload, serveRpc, STATUS_KIND, summarize } from '../common.mjs';

const pki = JSON.parse(process.env.BENCH_PKI);
const backend = process.env.BENCH_STORE ?? 'memory';

/** The etcd-backed store, or a loud exit: a bench that silently measured the memory store instead would lie. */
async function etcdStore() {
  const { endpoint, prefix } = JSON.parse(process.env.BENCH_ETCD ?? '{}');
  try {
    if (typeof endpoint !== 'string' || typeof prefix !== 'string') throw new Error('BENCH_ETCD must give {"endpoint", "prefix"}');
    return await EtcdStore.connect({
      endpoints: [endpoint],
      tls: { caPem: readFileSync(pki.caCert, 'utf8'), certPem: readFileSync(pki.clientCert, 'utf8'), keyPem: readFileSync(pki.clientKey, 'utf8') },
      prefix,
    });
  } catch (err) {
    process.stderr.write(`bench: the etcd-backed cosid cannot start: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  }
}

/** The endpoint's certificate for dialing nodes, with the CA their certificates have. */
function impersonator({ cert, key }) {
  return { caPem: readFileSync(pki.caCert, 'utf8'), certPem: readFileSync(cert, 'utf8'), keyPem: readFileSync(key, 'utf8') };
}

let store;
if (backend === 'etcd') store = await etcdStore();
else if (backend !== 'memory') throw new Error(`BENCH_STORE=${backend}: use memory or etcd`);
const cosid = await Cosid.start({
  listen: '127.0.0.1:0',
  tls: { caPem: readFileSync(pki.caCert, 'utf8'), certPem: readFileSync(pki.serverCert, 'utf8'), keyPem: readFileSync(pki.serverKey, 'utf8') },
  nodeName: process.env.BENCH_NODE_NAME ?? 'bench',
  ...(process.env.BENCH_NODES_FILE !== undefined ? { nodesFile: process.env.BENCH_NODES_FILE } : {}),
  ...(process.env.BENCH_IMPERSONATOR !== undefined ? { impersonator: impersonator(JSON.parse(process.env.BENCH_IMPERSONATOR)) } : {}),
  maxWatchesPerConnection: 4096,
  maxConnectionsPerAddress: 4096,
  watchCompression: process.env.BENCH_WATCH_COMPRESSION !== '0',
  metricsListen: '127.0.0.1:0',
  ...(store !== undefined ? { store } : {}),
});
store = cosid.store;
if (store.backend !== backend) throw new Error(`asked for a ${backend} store, cosid runs on ${store.backend}`);

/**
 * The kind's history once it holds every change committed before the call: memory's commits are there before their
 * writer's promise settles; etcd's history is fed by the kind's watch, read once it reached etcd's revision now.
 */
async function caughtUp(kind) {
  const history = await store.feed.history(kind);
  if (store.backend === 'etcd') {
    const { header } = await store.etcd.client.maintenance.status({});
    await store.feed.reach(kind, Number(header.revision));
  }
  return history;
}

let payloadBytes = 2048;
// The writer's own work (building payloads) is not the server's: build each once, then only bump seq.
const payloads = new Map();
const payload = (i, seq) => {
  let base = payloads.get(i);
  if (base === undefined || base.bytes !== payloadBytes) {
    base = { bytes: payloadBytes, spec: podStatusPayload(i, payloadBytes) };
    payloads.set(i, base);
  }
  return { ...base.spec, seq };
};

/** Runs fn(0..count-1) with at most `width` in flight (etcd: each write is a read and a transaction). */
async function inParallel(count, width, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, count) }, async () => {
    while (next < count) await fn(next++);
  }));
}

serveRpc({
  port: () => cosid.port,
  backend: () => store.backend,
  metricsUrl: () => cosid.metricsUrl,
  load: async ({ count, bytes }) => {
    payloadBytes = bytes;
    await inParallel(count, 32, (i) => store.create({ ...STATUS_KIND, id: `default/pod-${i}`, spec: podStatusPayload(i, bytes) }, 'bench'));
    // The API reads the kind's history: loaded means there (etcd: once the kind's watch has delivered every write).
    const h = await caughtUp(STATUS_KIND);
    return h.list().length;
  },
  // The bytes cosid sends for one resource of `bytes` of JSON: as a Get/List message, and as an UPDATED event.
  sizes: async ({ bytes }) => {
    const probe = { ...STATUS_KIND, id: 'size-probe' };
    await store.create({ ...probe, spec: podStatusPayload(0, bytes) }, 'bench');
    const before = (await caughtUp(STATUS_KIND)).revision;
    await store.update({ ...probe, spec: podStatusPayload(0, bytes, 1) }, 'bench');
    const h = await caughtUp(STATUS_KIND);
    // Revisions may have gaps (etcd): the probe's update is the change after `before` that names it.
    const change = h.readChanges(before, 16).changes.find((c) => c.type === 'updated' && c.resource.metadata.id === probe.id);
    if (change === undefined) throw new Error('sizes: the probe update is not in the kind history');
    const current = h.current(probe.id) ?? (await store.get(probe));
    // Each form's single-event WatchResponse, and its gRPC message as a gzip watcher gets it (5 bytes of framing).
    const events = cosid.hub.events;
    const gzipMessage = (payload) => new WatchFraming().frame({ payload, events: 1, shared: true }, true);
    const full = events.response(events.change(change, 1, h, 'full'));
    const lean = events.response(events.change(change, 1, h, 'lean'));
    const sizes = {
      resource: cosid.hub.frames.single(current).length,
      updatedEvent: full.length,
      leanUpdatedEvent: lean.length,
      updatedEventGzipMessage: gzipMessage(full).length,
      leanUpdatedEventGzipMessage: gzipMessage(lean).length,
    };
    await store.destroy(probe, 'bench');
    return sizes;
  },
  // A full collection, so RSS figures read live memory rather than when the last GC happened to run.
  gc: async () => {
    // Twice, with a pause: sweeping and returning freed pages to the system finish after the first collection.
    globalThis.gc?.();
    await new Promise((r) => setTimeout(r, 200));
    globalThis.gc?.();
    const { rss, heapUsed, external } = process.memoryUsage();
    return { rss, heapUsed, external };
  },
  clear: async () => {
    const all = await store.list(STATUS_KIND);
    await inParallel(all.length, 32, (i) => store.destroy(all[i].metadata, 'bench'));
    await caughtUp(STATUS_KIND);
    return true;
  },
  // Updates `ids` resources round robin at `rate` per second for `seconds`; reports how far behind schedule it fell.
  // Each write is awaited (a controller does): with etcd, a read and a transaction.
  churn: async ({ rate, seconds, ids }) => {
    const total = Math.round(rate * seconds);
    const start = Date.now();
    let behindMax = 0;
    const writeMs = [];
    // How long the event loop kept callbacks waiting (awaited writes wait for it twice per etcd round trip), and the
    // churn's window on the monotonic clock V8's CPU profiles use (to read a profile for these seconds alone).
    const delay = monitorEventLoopDelay({ resolution: 10 });
    const late = (ns) => Math.max(0, ns / 1e6 - 10);
    delay.enable();
    const windowStartUs = Number(process.hrtime.bigint() / 1000n);
    for (let n = 0; n < total; n++) {
      const due = start + (n * 1000) / rate;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      else behindMax = Math.max(behindMax, -wait);
      const i = n % ids;
      const t0 = Date.now();
      await store.update({ ...STATUS_KIND, id: `default/pod-${i}`, spec: payload(i, n + 1) }, 'bench');
      writeMs.push(Date.now() - t0);
    }
    const windowEndUs = Number(process.hrtime.bigint() / 1000n);
    delay.disable();
    const w = summarize(writeMs);
    return {
      written: total,
      writerBehindMaxMs: behindMax,
      writeMs: { p50: w.p50, p99: w.p99, max: w.max },
      // The histogram records the interval between its timer's runs: the delay is what exceeds the resolution.
      eventLoopDelayMs: { p50: late(delay.percentile(50)), p99: late(delay.percentile(99)), max: late(delay.max) },
      profileWindowUs: [windowStartUs, windowEndUs],
      seconds: (Date.now() - start) / 1000,
    };
  },
  stats: () => ({ ...cosid.hub.stats(), pid: process.pid }),
  stop: async () => {
    await cosid.stop();
    setTimeout(() => process.exit(0), 10);
    return true;
  },
});
process.send({ ready: true });
