// A generic gRPC client that knows only our .proto files (buf curl) can use the API; health and reflection answer.
import * as grpc from '@grpc/grpc-js';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { silentLogger } from '../shared/log.js';
import { makePki, pod, startServer, type TestServer } from './harness.js';
import { ContainerDriver, machineWire } from '../shared/wire.js';
import { rm } from 'node:fs/promises';

const run = promisify(execFile);
const BUF = join(process.cwd(), 'node_modules', '.bin', 'buf');
let srv: TestServer;

let kubeletLog: string;

beforeAll(async () => {
  const pki = await makePki();
  kubeletLog = join(pki.dir, 'kubelet.log');
  await writeFile(kubeletLog, '{"msg":"one"}\n{"msg":"two"}\n');
  srv = await startServer({ pki, runtime: { kubeletLog } });
  await reconcileStaticPods(srv.cosid.store, [{ id: 'default-nginx', pod: pod('nginx'), origin: 'test' }], silentLogger);
});
afterAll(async () => {
  await srv.close();
  await rm(srv.pki.dir, { recursive: true, force: true });
});

async function curl(method: string, body: object, extra: string[] = ['--schema', 'proto'], timeout = 30_000): Promise<unknown[]> {
  const { stdout } = await run(
    BUF,
    [
      'curl',
      '--protocol', 'grpc',
      ...extra,
      '--cacert', join(srv.pki.dir, 'ca.crt'),
      '--cert', join(srv.pki.dir, 'admin.crt'),
      '--key', join(srv.pki.dir, 'admin.key'),
      '--data', JSON.stringify(body),
      `https://${srv.endpoint}/${method}`,
    ],
    { timeout },
  ).catch((err: { stdout?: string; killed?: boolean }) => {
    // A watch never ends by itself: it is stopped by the timeout, and what it printed is the answer.
    if (err.killed === true && typeof err.stdout === 'string') return { stdout: err.stdout };
    throw err;
  });
  // Streaming responses come as a sequence of JSON objects.
  return stdout
    .split(/\n(?=\{)/)
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => JSON.parse(s) as unknown);
}

describe('buf curl with only the .proto files', () => {
  it('calls Get', async () => {
    const [res] = await curl('cosi.resource.State/Get', { namespace: 'k8s', type: 'StaticPods.kubernetes.talos.dev', id: 'default-nginx' });
    expect(res).toMatchObject({ resource: { metadata: { id: 'default-nginx', version: '1', namespace: 'k8s' }, spec: { yamlSpec: expect.stringContaining('name: nginx') } } });
  });

  it('calls List', async () => {
    const res = await curl('cosi.resource.State/List', { namespace: 'meta', type: 'Namespaces.meta.cosi.dev' });
    expect(res.map((r) => (r as { resource: { metadata: { id: string } } }).resource.metadata.id)).toEqual(['config', 'k8s', 'meta']);
  });

  it('calls Watch: the ready marker, the bootstrap, BOOTSTRAPPED', async () => {
    const messages = await curl('cosi.resource.State/Watch', { namespace: 'k8s', type: 'StaticPods.kubernetes.talos.dev', apiVersion: 1, options: { bootstrapContents: true } }, ['--schema', 'proto'], 4000);
    expect(messages[0]).toEqual({});
    expect(messages[1]).toMatchObject({ event: [{ resource: { metadata: { id: 'default-nginx' } }, bookmark: expect.any(String) }] });
    expect(messages[2]).toMatchObject({ event: [{ eventType: 'BOOTSTRAPPED' }] });
  });

  it('finds the service through server reflection', async () => {
    const { stdout } = await run(BUF, ['curl', '--protocol', 'grpc', '--list-methods', '--cacert', join(srv.pki.dir, 'ca.crt'), '--cert', join(srv.pki.dir, 'admin.crt'), '--key', join(srv.pki.dir, 'admin.key'), `https://${srv.endpoint}`], { timeout: 30_000 });
    expect(stdout).toContain('cosi.resource.State/Watch');
    expect(stdout).toContain('machine.MachineService/Logs');
    // The CRI is what cosid calls, not what it serves.
    expect(stdout).not.toContain('runtime.v1');
  });

  it("calls Talos's machine.MachineService/Logs (the kubelet's log) and Containers", async () => {
    const messages = await curl('machine.MachineService/Logs', { namespace: 'system', id: 'kubelet', tailLines: -1 });
    const text = messages.map((m) => Buffer.from((m as { bytes: string }).bytes, 'base64').toString()).join('');
    expect(text).toBe('{"msg":"one"}\n{"msg":"two"}\n');
    expect(messages[0]).toMatchObject({ metadata: { hostname: 'test-node' } });
    // No runtime behind this cosid: UNAVAILABLE, naming the socket.
    const err = await curl('machine.MachineService/Containers', { namespace: 'k8s.io', driver: 'CRI' }).catch((e: { stderr?: string }) => e.stderr ?? String(e));
    expect(String(err)).toMatch(/unavailable/i);
    expect(String(err)).toContain(join(srv.pki.dir, 'no-runtime.sock'));
  });

  it('answers UNIMPLEMENTED for the rest of the machine service, and refuses a certificate without a role', async () => {
    const raw = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem), Buffer.from(srv.pki.reader.keyPem), Buffer.from(srv.pki.reader.certPem)));
    const k8s = Buffer.from(machineWire.containersRequest.encode({ namespace: 'k8s.io', driver: ContainerDriver.CRI }));
    const call = (path: string, client = raw, body = k8s) =>
      new Promise<grpc.ServiceError | null>((resolve) => client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, body, (err) => resolve(err)));
    expect((await call('/machine.MachineService/Reboot'))?.code).toBe(grpc.status.UNIMPLEMENTED);
    expect((await call('/machine.MachineService/Version'))?.code).toBe(grpc.status.UNIMPLEMENTED);
    // A reader may list containers (the runtime is missing here: UNAVAILABLE comes after the role check) ...
    expect((await call('/machine.MachineService/Containers'))?.code).toBe(grpc.status.UNAVAILABLE);
    // ... but only Kubernetes' (talosctl containers without -k asks namespace system, driver CONTAINERD).
    const system = Buffer.from(machineWire.containersRequest.encode({ namespace: 'system', driver: ContainerDriver.CONTAINERD }));
    expect((await call('/machine.MachineService/Containers', raw, system))?.code).toBe(grpc.status.UNIMPLEMENTED);
    const noRole = await srv.certWithRoles([]);
    const stranger = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem), Buffer.from(noRole.keyPem), Buffer.from(noRole.certPem)));
    expect((await call('/machine.MachineService/Containers', stranger))?.code).toBe(grpc.status.PERMISSION_DENIED);
    raw.close();
    stranger.close();
  });

  it('answers the standard health check', async () => {
    const [res] = await curl('grpc.health.v1.Health/Check', { service: 'cosi.resource.State' }, []);
    expect(res).toEqual({ status: 'SERVING' });
  });
});
