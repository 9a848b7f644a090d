// One client process of the benchmark: opens `count` watchers on one kind and records, for every event, the delay
// from the write (the resource's updated time, or the ceiling's stamped time) to its receipt here.
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import protobuf from 'protobufjs';
import { Etcd3 } from 'etcd3';
import { wire } from '../../dist/shared/wire.js';
import { CHANNEL_OPTIONS, serveRpc } from '../common.mjs';

const cfg = JSON.parse(process.env.BENCH_WORKER);
const pki = cfg.pki;
const RESERVOIR = 100_000;
let received = 0;
let within3s = 0;
let seen = 0;
const samples = [];
const record = (writtenMs) => {
  const lat = Date.now() - writtenMs;
  received++;
  if (lat <= 3000) within3s++;
  seen++;
  if (samples.length < RESERVOIR) samples.push(lat);
  else {
    const j = Math.floor(Math.random() * seen);
    if (j < RESERVOIR) samples[j] = lat;
  }
};

/** Reads metadata.updated of every event in a WatchResponse without decoding the rest. */
function updatedTimes(buf) {
  const out = [];
  const r = protobuf.Reader.create(buf);
  const sub = (reader, want, fn) => {
    const end = reader.uint32() + reader.pos;
    while (reader.pos < end) {
      const tag = reader.uint32();
      if (tag >>> 3 === want && (tag & 7) === 2) fn(reader);
      else reader.skipType(tag & 7);
    }
  };
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 !== 1) {
      r.skipType(tag & 7);
      continue;
    }
    // Event.resource(1) -> Resource.metadata(1) -> Metadata.updated(8) -> Timestamp{seconds(1), nanos(2)}
    sub(r, 1, (e) =>
      sub(e, 1, (m) =>
        sub(m, 8, (t) => {
          const end = t.uint32() + t.pos;
          let s = 0;
          let ns = 0;
          while (t.pos < end) {
            const tg = t.uint32();
            if (tg >>> 3 === 1) s = t.uint32();
            else if (tg >>> 3 === 2) ns = t.int32();
            else t.skipType(tg & 7);
          }
          out.push(s * 1000 + ns / 1e6);
        }),
      ),
    );
  }
  return out;
}

let ready = 0;
/** Why streams ended, by message: a watcher that ends early is reported, not hidden. */
const errors = new Map();
const calls = [];
let etcd;
const creds = () => grpc.credentials.createSsl(readFileSync(pki.caCert), readFileSync(pki.clientKey), readFileSync(pki.clientCert));

if (cfg.mode === 'cosid' || cfg.mode === 'ceiling') {
  const client = new grpc.Client(cfg.endpoint, creds(), CHANNEL_OPTIONS);
  const req =
    cfg.mode === 'cosid'
      ? Buffer.from(wire.watchRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', apiVersion: 1, options: { bootstrapContents: false, tailEvents: 0, labelQuery: [], aggregated: cfg.aggregated, bootstrapBookmark: false } }))
      : Buffer.alloc(0);
  const path = cfg.mode === 'cosid' ? '/cosi.resource.State/Watch' : '/bench.Ceiling/Watch';
  // cfg.form 'lean' asks cosid for lean events (request metadata, as the client library does); 'full' or absent sends
  // none (the reference's form). Either way every event is counted and timed the same way: a lean event keeps the
  // resource's metadata, whose `updated` is the write's time. gzipped messages are inflated by grpc-js before `data`.
  const metadata = new grpc.Metadata();
  if (cfg.form === 'lean') metadata.set('cosi-event-form', 'lean');
  // cfg.node: the node the endpoint proxies the watch to (Talos's metadata node; bench/routing.mjs).
  if (cfg.node !== undefined) metadata.set('node', cfg.node);
  else if (cfg.form !== undefined && cfg.form !== 'full') throw new Error(`form ${cfg.form}? use full or lean`);
  for (let i = 0; i < cfg.count; i++) {
    const call = client.makeServerStreamRequest(path, (b) => b, (b) => b, req, metadata);
    let first = true;
    call.on('data', (b) => {
      if (first) {
        first = false;
        ready++;
        if (cfg.stall) call.pause();
        return;
      }
      if (cfg.mode === 'cosid') for (const t of updatedTimes(b)) record(t);
      else record(b.readDoubleBE(0));
    });
    call.on('error', (e) => {
      errors.set(e.details, (errors.get(e.details) ?? 0) + 1);
    });
    calls.push(call);
  }
} else {
  etcd = new Etcd3({
    hosts: cfg.endpoint,
    credentials: { rootCertificate: readFileSync(pki.caCert), privateKey: readFileSync(pki.clientKey), certChain: readFileSync(pki.clientCert) },
    grpcOptions: CHANNEL_OPTIONS,
  });
  for (let i = 0; i < cfg.count; i++) {
    const w = await etcd.watch().prefix('status/').create();
    w.on('put', (kv) => record(Number(kv.value.subarray(0, 13).toString())));
    ready++;
  }
}

serveRpc({
  ready: () => ready,
  reset: () => {
    received = 0;
    within3s = 0;
    seen = 0;
    samples.length = 0;
    return true;
  },
  report: () => ({ errors: Object.fromEntries(errors), received, within3s, samples, cpu: process.cpuUsage(), rss: process.memoryUsage().rss }),
  stop: () => {
    for (const c of calls) c.cancel();
    etcd?.close();
    setTimeout(() => process.exit(0), 50);
    return true;
  },
});
process.send({ ready: true });
