// A generic gRPC client that knows only our .proto files (buf curl) can use the API; health and reflection answer.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { silentLogger } from '../shared/log.js';
import { pod, startServer, type TestServer } from './harness.js';

const run = promisify(execFile);
const BUF = join(process.cwd(), 'node_modules', '.bin', 'buf');
let srv: TestServer;

beforeAll(async () => {
  srv = await startServer();
  reconcileStaticPods(srv.cosid.store, [{ id: 'default-nginx', pod: pod('nginx'), origin: 'test' }], silentLogger);
});
afterAll(() => srv.close());

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
  });

  it('answers the standard health check', async () => {
    const [res] = await curl('grpc.health.v1.Health/Check', { service: 'cosi.resource.State' }, []);
    expect(res).toEqual({ status: 'SERVING' });
  });
});
