// The State API end to end: real cosid, real mTLS on loopback, the client library.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { isCosiError } from '../client/index.js';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { createLogger, silentLogger } from '../shared/log.js';
import { codecFor, wire } from '../shared/wire.js';
import { eventually, pod, podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

let srv: TestServer;
/** The server's log lines. */
const lines: string[] = [];
let startedAt: number;

beforeAll(async () => {
  startedAt = Date.now();
  srv = await startServer({ log: createLogger({ write: (l) => lines.push(l) }) });
  await reconcileStaticPods(srv.cosid.store, [{ id: 'default-nginx', pod: pod('nginx'), origin: 'test' }, { id: 'kube-system-etcd', pod: pod('etcd', 'etcd', 'kube-system'), origin: 'test' }], silentLogger);
  await srv.cosid.store.create({ ...STATUSES, id: 'default/nginx-test-node', spec: podStatus(true) }, TEST_OWNER);
});
afterAll(() => srv.close());

describe('Get and List', () => {
  it('lists static pods sorted by ID with metadata set by the store', async () => {
    const items = await srv.client().list('staticpods');
    expect(items.map((r) => r.metadata.id)).toEqual(['default-nginx', 'kube-system-etcd']);
    const [first] = items;
    expect(first?.metadata).toMatchObject({ namespace: 'k8s', type: 'StaticPods.kubernetes.talos.dev', version: 1, owner: 'k8s.StaticPodController', phase: 'running' });
    // Set by the store when this file's server was filled.
    expect(first?.metadata.created.getTime()).toBeGreaterThanOrEqual(startedAt);
    expect(first?.metadata.created.getTime()).toBeLessThanOrEqual(Date.now());
    expect(first?.metadata.updated).toEqual(first?.metadata.created);
  });

  it('fills both spec forms: the raw Pod as YAML (no wrapper) and the StaticPodSpec protobuf', async () => {
    const r = await srv.client().get('StaticPod', 'default-nginx');
    expect(r.yamlSpec.startsWith('apiVersion: v1\n')).toBe(true);
    expect(r.spec).toEqual(pod('nginx'));
    const decoded = wire.staticPodSpec.decode(r.protoSpec);
    expect(decoded.pod?.fields['kind']?.stringValue).toBe('Pod');
  });

  it('streams a list through the async iterator', async () => {
    const ids: string[] = [];
    for await (const r of srv.client().listIter('sp')) ids.push(r.metadata.id);
    expect(ids).toEqual(['default-nginx', 'kube-system-etcd']);
  });

  it('filters lists by ID regexp with RE2 semantics and by labels', async () => {
    const c = srv.client();
    expect((await c.list('staticpods', { idRegexp: 'etcd$' })).map((r) => r.metadata.id)).toEqual(['kube-system-etcd']);
    await expect(c.list('staticpods', { idRegexp: '(?=lookahead)' })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await srv.cosid.store.create({ ...STATUSES, id: 'kube-system/labelled', spec: podStatus(false), labels: { tier: 'control-plane', size: '2Ki' } }, TEST_OWNER);
    const byLabel = await c.list('podstatus', { labelQuery: [{ terms: [{ key: 'tier', op: 'equal', values: ['control-plane'] }] }] });
    expect(byLabel.map((r) => r.metadata.id)).toEqual(['kube-system/labelled']);
    const numeric = await c.list('podstatus', { labelQuery: [{ terms: [{ key: 'size', op: 'ltNumeric', values: ['3000'] }] }] });
    expect(numeric.map((r) => r.metadata.id)).toEqual(['kube-system/labelled']);
    const orQuery = await c.list('podstatus', {
      labelQuery: [{ terms: [{ key: 'tier', op: 'exists', invert: true }] }, { terms: [{ key: 'size', op: 'in', values: ['2Ki'] }] }],
    });
    expect(orQuery.map((r) => r.metadata.id)).toEqual(['default/nginx-test-node', 'kube-system/labelled']);
    await srv.cosid.store.destroy({ ...STATUSES, id: 'kube-system/labelled' }, TEST_OWNER);
  });

  it('answers NOT_FOUND for a missing resource, and PERMISSION_DENIED in Talos words for a type or namespace it does not serve', async () => {
    const c = srv.client();
    await expect(c.get('staticpods', 'nope')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(c.list('StaticPods.kubernetes.talos.dev', { namespace: 'nowhere' })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, message: 'namespace "nowhere" is not supported' });
    // The library refuses an unknown type itself (not registered): a generic client's Get reaches the server.
    const raw = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem), Buffer.from(srv.pki.admin.keyPem), Buffer.from(srv.pki.admin.certPem)));
    const req = wire.getRequest.encode({ namespace: 'k8s', type: 'Frobs.test.dev', id: 'x' });
    const err = await new Promise<grpc.ServiceError | null>((resolve) =>
      raw.makeUnaryRequest('/cosi.resource.State/Get', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req), (e) => resolve(e)),
    );
    raw.close();
    expect(err).toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: 'resource type "Frobs.test.dev" is not supported' });
  });
});

describe('type resolution', () => {
  it('resolves any alias case-insensitively and fills in the default namespace', async () => {
    const c = srv.client();
    for (const name of ['staticpods', 'StaticPod', 'STATICPOD', 'staticpods.kubernetes', 'StaticPods.kubernetes.talos.dev', 'sp']) {
      expect((await c.resolveType(name)).type).toBe('StaticPods.kubernetes.talos.dev');
    }
    expect((await c.resolveType('podstatus')).type).toBe('StaticPodStatuses.kubernetes.talos.dev');
    expect((await c.resolveType('rd')).type).toBe('ResourceDefinitions.meta.cosi.dev');
    expect((await c.resolveType('api-resources')).defaultNamespace).toBe('meta');
  });

  it('says "not registered" and "ambiguous" with the candidates', async () => {
    const c = srv.client();
    const missing = await c.resolveType('frobnicators').catch((e: unknown) => e);
    expect(isCosiError(missing, 'not-registered')).toBe(true);
    expect(String(missing)).toContain('"frobnicators" is not registered');
    const ambiguous = await c.resolveType('sps').catch((e: unknown) => e);
    expect(isCosiError(ambiguous, 'ambiguous')).toBe(true);
    // The candidates in the order of their definitions' IDs.
    expect(String(ambiguous)).toContain('StaticPods.kubernetes.talos.dev, StaticPodStatuses.kubernetes.talos.dev');
  });

  it('serves resource definitions with aliases and print columns', async () => {
    const rd = await srv.client().get('rd', 'staticpodstatuses.kubernetes.talos.dev');
    expect(rd.spec).toMatchObject({
      type: 'StaticPodStatuses.kubernetes.talos.dev',
      displayType: 'StaticPodStatus',
      defaultNamespace: 'k8s',
      printColumns: [
        { name: 'Ready', jsonPath: '{.conditions[?(@.type=="Ready")].status}' },
        { name: 'Restarts', jsonPath: '{.containerStatuses[*].restartCount}' },
        { name: 'Stale', jsonPath: '{.conditions[?(@.type=="Stale")].reason}' },
      ],
    });
    expect((rd.spec as { aliases: string[] }).aliases).toContain('podstatus');
    const ns = await srv.client().list('namespaces');
    expect(ns.map((r) => r.metadata.id)).toEqual(['config', 'k8s', 'meta']);
  });
});

describe('access control', () => {
  it('lets a reader read', async () => {
    const items = await srv.client(srv.pki.reader).list('staticpods');
    expect(items.length).toBe(2);
  });

  it('lets an operator read', async () => {
    const op = await srv.certWithRoles(['os:operator']);
    expect((await srv.client(op).get('staticpods', 'default-nginx')).metadata.id).toBe('default-nginx');
  });

  it('denies a certificate without a known role', async () => {
    const none = await srv.certWithRoles(['system:masters', 'os:impostor']);
    const err = await srv.client(none).list('staticpods').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    expect(String(err)).toContain('none of the roles');
  });

  it('lets only os:admin read a sensitive type, and refuses (not filters) others', async () => {
    srv.cosid.registry.register({ type: 'Secrets.test.cosi.dev', displayType: 'Secret', defaultNamespace: 'k8s', sensitive: true });
    await srv.cosid.registry.published();
    await srv.cosid.store.create({ namespace: 'k8s', type: 'Secrets.test.cosi.dev', id: 'token', spec: { value: 's3cret' } }, TEST_OWNER);
    expect((await srv.client().get('secrets', 'token')).spec).toEqual({ value: 's3cret' });
    const operator = await srv.certWithRoles(['os:operator']);
    for (const cert of [srv.pki.reader, operator]) {
      const err = await srv.client(cert).list('secrets').catch((e: unknown) => e);
      expect(err).toMatchObject({ code: grpc.status.PERMISSION_DENIED, message: expect.stringContaining('sensitive') });
    }
  });

  /** The reasons of the handshake refusals the server logged from line `from` on. */
  const handshakeRefusals = (from: number) =>
    lines
      .slice(from)
      .filter((l) => l.includes('TLS handshake refused'))
      .map((l) => (JSON.parse(l) as { reason: string }).reason);

  it('refuses a certificate from another CA at the handshake', async () => {
    const foreign = await srv.foreignCert();
    const from = lines.length;
    const err = await srv.client(foreign).list('staticpods').catch((e: unknown) => e);
    // No call reached the server (no node header): the client says so, and the server logs why, once.
    expect(err).toMatchObject({ code: grpc.status.UNAVAILABLE, kind: 'unavailable', message: expect.stringContaining(`the server at ${srv.endpoint} refused your client certificate: it is not signed by the CA in your config`) });
    await eventually(() => expect(handshakeRefusals(from)).toEqual(['unable to verify the first certificate']));
  });

  it('refuses a client without a certificate at the handshake', async () => {
    const raw = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem)));
    const from = lines.length;
    const code = await new Promise<number>((resolve) => {
      const call = raw.makeServerStreamRequest('/cosi.resource.State/List', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(wire.listRequest.encode({ namespace: 'k8s', type: 'StaticPods.kubernetes.talos.dev' })));
      call.on('data', () => resolve(-1));
      call.on('error', (e: grpc.ServiceError) => resolve(e.code));
    });
    raw.close();
    expect(code).toBe(grpc.status.UNAVAILABLE);
    await eventually(() => expect(handshakeRefusals(from)).toEqual(['peer did not return a certificate']));
  });

  it('refuses every write method with PERMISSION_DENIED, even for an admin', async () => {
    const raw = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem), Buffer.from(srv.pki.admin.keyPem), Buffer.from(srv.pki.admin.certPem)));
    for (const [method, type] of [
      ['Create', 'CreateRequest'],
      ['Update', 'UpdateRequest'],
      ['Destroy', 'DestroyRequest'],
      ['Teardown', 'TeardownRequest'],
      ['TeardownAndDestroy', 'TeardownAndDestroyRequest'],
    ] as const) {
      const req = codecFor(`cosi.resource.${type}`).encode({ namespace: 'k8s', type: 'StaticPods.kubernetes.talos.dev', id: 'default-nginx' });
      const err = await new Promise<grpc.ServiceError | null>((resolve) =>
        raw.makeUnaryRequest(`/cosi.resource.State/${method}`, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req), (e) => resolve(e)),
      );
      expect(err?.code, method).toBe(grpc.status.PERMISSION_DENIED);
      expect(err?.details, method).toBe('write access is not allowed');
    }
    raw.close();
    expect((await srv.client().get('staticpods', 'default-nginx')).metadata.version).toBe(1);
  });
});
