// The cosid side of the benchmark: a real Cosid over mTLS; the writer runs in-process, as a controller does.
import { readFileSync } from 'node:fs';
import { Cosid } from '../../dist/server/cosid.js';
import { podStatusPayload, serveRpc, STATUS_KIND } from '../common.mjs';

const pki = JSON.parse(process.env.BENCH_PKI);
const cosid = await Cosid.start({
  listen: '127.0.0.1:0',
  tls: { caPem: readFileSync(pki.caCert, 'utf8'), certPem: readFileSync(pki.serverCert, 'utf8'), keyPem: readFileSync(pki.serverKey, 'utf8') },
  nodeName: 'bench',
  maxWatchesPerConnection: 4096,
  maxConnectionsPerAddress: 4096,
});
const store = cosid.store;
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

serveRpc({
  port: () => cosid.port,
  load: ({ count, bytes }) => {
    payloadBytes = bytes;
    for (let i = 0; i < count; i++) store.create({ ...STATUS_KIND, id: `default/pod-${i}`, spec: podStatusPayload(i, bytes) }, 'bench');
    return count;
  },
  // The bytes cosid sends for one resource of `bytes` of JSON: as a Get/List message, and as an UPDATED event.
  sizes: ({ bytes }) => {
    const probe = { ...STATUS_KIND, id: 'size-probe' };
    store.create({ ...probe, spec: podStatusPayload(0, bytes) }, 'bench');
    store.update({ ...probe, spec: podStatusPayload(0, bytes, 1) }, 'bench');
    const [change] = store.readChanges(store.revision - 1, 1, STATUS_KIND).changes;
    const sizes = { resource: cosid.hub.frames.single(store.get(probe)).length, updatedEvent: cosid.hub.events.response(cosid.hub.events.change(change, 1)).length };
    store.destroy(probe, 'bench');
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
  clear: () => {
    for (const r of store.list(STATUS_KIND)) store.destroy(r.metadata, 'bench');
    return true;
  },
  // Updates `ids` resources round robin at `rate` per second for `seconds`; reports how far behind schedule it fell.
  churn: async ({ rate, seconds, ids }) => {
    const total = Math.round(rate * seconds);
    const start = Date.now();
    let behindMax = 0;
    for (let n = 0; n < total; n++) {
      const due = start + (n * 1000) / rate;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      else behindMax = Math.max(behindMax, -wait);
      const i = n % ids;
      store.update({ ...STATUS_KIND, id: `default/pod-${i}`, spec: payload(i, n + 1) }, 'bench');
    }
    return { written: total, writerBehindMaxMs: behindMax, seconds: (Date.now() - start) / 1000 };
  },
  stats: () => ({ ...cosid.hub.stats(), pid: process.pid }),
  stop: async () => {
    await cosid.stop();
    setTimeout(() => process.exit(0), 10);
    return true;
  },
});
process.send({ ready: true });
