// The ceiling: a minimal grpc-js server over the same mTLS that streams pre-serialized messages of the same size
// (no store, no filtering, no encoding per stream). Nothing a Node gRPC server can do is cheaper.
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { serveRpc } from '../common.mjs';

const pki = JSON.parse(process.env.BENCH_PKI);
let size = 2048;
const streams = new Set();
const passthrough = { requestSerialize: (b) => b, requestDeserialize: (b) => b, responseSerialize: (b) => b, responseDeserialize: (b) => b };
/** A message of `size` bytes whose first 8 bytes are the write time (ms, float64). */
const message = () => {
  const b = Buffer.alloc(size, 0x61);
  b.writeDoubleBE(Date.now(), 0);
  return b;
};
const server = new grpc.Server({ 'grpc.max_concurrent_streams': 4096 });
server.addService(
  {
    Get: { path: '/bench.Ceiling/Get', requestStream: false, responseStream: false, ...passthrough },
    List: { path: '/bench.Ceiling/List', requestStream: false, responseStream: true, ...passthrough },
    Watch: { path: '/bench.Ceiling/Watch', requestStream: false, responseStream: true, ...passthrough },
  },
  {
    Get: (_call, cb) => cb(null, message()),
    List: async (call) => {
      const count = call.request.readUInt32BE(0);
      const m = message();
      for (let i = 0; i < count; i++) if (!call.write(m)) await new Promise((r) => call.once('drain', r));
      call.end();
    },
    Watch: (call) => {
      streams.add(call);
      call.write(Buffer.alloc(0));
      call.on('cancelled', () => streams.delete(call));
      call.on('close', () => streams.delete(call));
    },
  },
);
const creds = grpc.ServerCredentials.createSsl(readFileSync(pki.caCert), [{ cert_chain: readFileSync(pki.serverCert), private_key: readFileSync(pki.serverKey) }], true);
const port = await new Promise((res, rej) => server.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? rej(e) : res(p))));

serveRpc({
  port: () => port,
  size: ({ bytes }) => (size = bytes),
  churn: async ({ rate, seconds }) => {
    const total = Math.round(rate * seconds);
    const start = Date.now();
    let behindMax = 0;
    for (let n = 0; n < total; n++) {
      const wait = start + (n * 1000) / rate - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      else behindMax = Math.max(behindMax, -wait);
      const m = message();
      for (const s of streams) s.write(m);
    }
    return { written: total, writerBehindMaxMs: behindMax, seconds: (Date.now() - start) / 1000 };
  },
  stats: () => ({ sessions: streams.size, pid: process.pid }),
  stop: () => {
    server.forceShutdown();
    setTimeout(() => process.exit(0), 10);
    return true;
  },
});
process.send({ ready: true });
