// machine.MachineService/Logs and the request's namespace, as Talos's machined answers it: id `kubelet` is the
// kubelet's service log whatever the namespace (talosctl sends `system`, other clients may not), and a container log
// asked for with no namespace is INVALID_ARGUMENT "namespace can't be empty". Raw gRPC calls against a real cosid
// with real mTLS, so the namespace on the wire is exactly the test's (the client library picks its own).
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cosid } from '../server/cosid.js';
import { machineWire } from '../shared/wire.js';
import { makePki, type TestPki } from './harness.js';

const KUBELET_LINES = 'kubelet line 1\nkubelet line 2\n';

let pki: TestPki;
let dir: string;
let cosid: Cosid;
let conn: grpc.Client;

beforeAll(async () => {
  pki = await makePki();
  dir = await mkdtemp(join(tmpdir(), 'cosi-logns-'));
  const kubeletLog = join(dir, 'kubelet.log');
  await writeFile(kubeletLog, KUBELET_LINES);
  cosid = await Cosid.start({
    listen: '127.0.0.1:0',
    tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
    nodeName: 'log-node',
    shutdownGraceMs: 1000,
    // No container runtime: nothing here needs one, and a container log never gets as far as asking it.
    runtime: { criEndpoint: `unix://${join(dir, 'none.sock')}`, podLogsDir: join(dir, 'pods'), kubeletLog },
  });
  conn = new grpc.Client(`127.0.0.1:${cosid.port}`, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(pki.admin.keyPem), Buffer.from(pki.admin.certPem)));
});
afterAll(async () => {
  conn?.close();
  await cosid?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  if (pki !== undefined) await rm(pki.dir, { recursive: true, force: true });
});

/** One Logs call to its end: the bytes it streamed and the status it ended with. */
function logs(namespace: string, id: string, driver = 0): Promise<{ bytes: string; status: grpc.StatusObject }> {
  const req = { namespace, id, driver, follow: false, tailLines: -1 };
  const call = conn.makeServerStreamRequest('/machine.MachineService/Logs', (v: typeof req) => Buffer.from(machineWire.logsRequest.encode(v)), (b: Buffer) => b, req);
  const chunks: string[] = [];
  call.on('data', (b: Buffer) => chunks.push(machineWire.data.decode(b).bytes.toString()));
  call.on('error', () => {});
  return new Promise((resolve) => call.on('status', (status) => resolve({ bytes: chunks.join(''), status })));
}

describe('Logs and the namespace of the request, as Talos', () => {
  it('serves id kubelet in any namespace, the empty one included', async () => {
    for (const namespace of ['system', 'k8s.io', 'default', '']) {
      const r = await logs(namespace, 'kubelet');
      expect(grpc.status[r.status.code], `${JSON.stringify(namespace)}: ${r.status.details}`).toBe('OK');
      expect(r.bytes).toBe(KUBELET_LINES);
    }
    // With the CRI driver too (the driver is not looked at for the kubelet's log).
    const cri = await logs('k8s.io', 'kubelet', 1);
    expect(grpc.status[cri.status.code]).toBe('OK');
    expect(cri.bytes).toBe(KUBELET_LINES);
  });

  it("answers a container log with no namespace INVALID_ARGUMENT \"namespace can't be empty\"", async () => {
    for (const driver of [0, 1]) {
      const r = await logs('', 'default/nginx-log-node:nginx', driver);
      expect(grpc.status[r.status.code]).toBe('INVALID_ARGUMENT');
      expect(r.status.details).toBe("namespace can't be empty");
      expect(r.bytes).toBe('');
    }
  });

  it('keeps its answers for the rest: another service in system is NOT_FOUND, an unknown namespace INVALID_ARGUMENT', async () => {
    const other = await logs('system', 'etcd');
    expect(grpc.status[other.status.code]).toBe('NOT_FOUND');
    const unknown = await logs('default', 'default/nginx-log-node:nginx');
    expect(grpc.status[unknown.status.code]).toBe('INVALID_ARGUMENT');
  });
});
