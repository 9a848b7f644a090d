// One endpoint, many nodes (Talos's apid): a call naming another node in metadata `node` is proxied one-to-one to
// that node's cosid, with the caller's roles; three cosids on loopback (an endpoint and two nodes), real mTLS.
import * as grpc from '@grpc/grpc-js';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Subscription } from 'rxjs';
import { connect, type CosiClient, type WatchEvent } from '../client/index.js';
import { upsert } from '../server/store/upsert.js';
import { EtcdStore } from '../server/store/etcd.js';
import { createLogger } from '../shared/log.js';
import { issueClientCert, generateCa, type KeyPairPem } from '../shared/pki.js';
import { ApplyMode, ContainerDriver, machineWire, wire, type Json } from '../shared/wire.js';
import { eventually, makePki, podStatus, runCli, startServer, STATUSES, TEST_OWNER, type TestPki, type TestServer } from './harness.js';
import { freePort } from './pipeline-harness.js';
import { NodeDirectory, parseNodeList } from '../server/api/node-directory.js';
import { silentLogger } from '../shared/log.js';

const run = promisify(execFile);
const BUF = join(process.cwd(), 'node_modules', '.bin', 'buf');
const etcd = inject('etcd');

let pki: TestPki;
let dir: string;
let impersonator: KeyPairPem;
let nodesFile: string;
let endpoint: TestServer;
let nodeA: TestServer;
let nodeB: TestServer;
/** Node B's port and store, kept across its restart. */
let portB: number;
let portE: number;
const logs = { endpoint: [] as string[], a: [] as string[], b: [] as string[] };
const cleanups: (() => Promise<void> | void)[] = [];

const put = (srv: TestServer, id: string, spec: Json) => upsert(srv.cosid.store, { ...STATUSES, id, spec }, TEST_OWNER);
const etcdPrefix = `/node-routing-${randomBytes(6).toString('hex')}/`;

async function startNodeB(): Promise<TestServer> {
  return startServer({
    pki,
    nodeName: 'node-b',
    listen: `127.0.0.1:${portB}`,
    audit: true,
    log: createLogger({ level: 'debug', write: (l) => logs.b.push(l) }),
    impersonator,
    runtime: { criEndpoint: `unix://${join(dir, 'b-no-runtime.sock')}`, kubeletLog: join(dir, 'b-kubelet.log') },
    ...(etcd !== null
      ? { store: () => EtcdStore.connect({ endpoints: etcd.endpoints, tls: { caPem: etcd.tls.caPem, certPem: etcd.tls.certPem, keyPem: etcd.tls.keyPem }, prefix: etcdPrefix }) }
      : {}),
  });
}

function startEndpoint(): Promise<TestServer> {
  return startServer({ pki, nodeName: 'endpoint', listen: `127.0.0.1:${portE}`, nodesFile, impersonator, audit: true, log: createLogger({ level: 'debug', write: (l) => logs.endpoint.push(l) }) });
}

beforeAll(async () => {
  pki = await makePki();
  dir = await mkdtemp(join(tmpdir(), 'node-routing-'));
  impersonator = await issueClientCert(pki.ca, { commonName: 'cosid-endpoint', organizations: ['os:impersonator'] });
  await writeFile(join(dir, 'a-kubelet.log'), 'kubelet of node-a\n');
  await writeFile(join(dir, 'b-kubelet.log'), 'kubelet of node-b\n');
  portB = await freePort();
  nodeA = await startServer({
    pki,
    nodeName: 'node-a',
    audit: true,
    log: createLogger({ write: (l) => logs.a.push(l) }),
    runtime: { criEndpoint: `unix://${join(dir, 'a-no-runtime.sock')}`, kubeletLog: join(dir, 'a-kubelet.log') },
  });
  nodeB = await startNodeB();
  nodesFile = join(dir, 'nodes.yaml');
  await writeFile(nodesFile, `nodes:\n  - name: node-a\n    address: ${nodeA.endpoint}\n  - name: node-b\n    address: 127.0.0.1:${portB}\n`);
  portE = await freePort();
  endpoint = await startEndpoint();
  await put(nodeA, 'on-a', podStatus(true));
  await put(nodeB, 'on-b', podStatus(false));
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await endpoint?.close();
  await nodeA?.close();
  await nodeB?.close();
  await rm(dir, { recursive: true, force: true });
  await rm(pki.dir, { recursive: true, force: true });
});

/** grpc-js interceptor that names a node in every call's metadata, as talosctl -n does. */
function naming(node: string, extra: Record<string, string> = {}): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('node', node);
        for (const [k, v] of Object.entries(extra)) metadata.set(k, v);
        next(metadata, listener);
      },
    });
}

/** The client library through `at` (default: the endpoint), naming `node`. */
function clientVia(node: string, cert: KeyPairPem = pki.admin, at = endpoint.endpoint): CosiClient {
  const c = connect({ endpoint: at, caPem: pki.ca.certPem, certPem: cert.certPem, keyPem: cert.keyPem, node });
  cleanups.push(() => c.close());
  return c;
}

/** A raw grpc-js client (bytes in, bytes out) with `cert`, to `at`. */
function raw(cert: KeyPairPem = pki.admin, at = endpoint.endpoint): grpc.Client {
  const c = new grpc.Client(at, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(cert.keyPem), Buffer.from(cert.certPem)));
  cleanups.push(() => c.close());
  return c;
}

interface UnaryResult {
  err: grpc.ServiceError | null;
  value: Buffer | undefined;
  headers: grpc.Metadata | undefined;
}

function unary(client: grpc.Client, path: string, body: Uint8Array, md: Record<string, string | string[]>): Promise<UnaryResult> {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) for (const x of Array.isArray(v) ? v : [v]) metadata.add(k, x);
  return new Promise((resolve) => {
    let headers: grpc.Metadata | undefined;
    const call = client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(body), metadata, (err, value) => resolve({ err, value, headers }));
    call.on('metadata', (h) => (headers = h));
  });
}

const getB = () => wire.getRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id: 'on-b' });
const applyBody = (config: string) => machineWire.applyConfigurationRequest.encode({ data: Buffer.from(config), mode: ApplyMode.NO_REBOOT, dryRun: true });
const metricValue = async (srv: TestServer, name: string, labels: Record<string, string>): Promise<number> => {
  const m = (await srv.cosid.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = (m?.values ?? []).filter((x) => Object.entries(labels).every(([k, l]) => (x.labels as Record<string, unknown>)[k] === l));
  return v.reduce((s, x) => s + x.value, 0);
};

describe('a call naming a node', () => {
  it('is answered by that node: Get, List and Watch through the endpoint, and by the endpoint itself when it names it', async () => {
    const b = clientVia('node-b');
    expect((await b.get('podstatus', 'on-b')).metadata.id).toBe('on-b');
    expect((await b.list('podstatus')).map((r) => r.metadata.id)).toEqual(['on-b']);
    expect(b.node).toBe('node-b');
    const a = clientVia('node-a');
    expect((await a.list('podstatus')).map((r) => r.metadata.id)).toEqual(['on-a']);
    expect(a.node).toBe('node-a');
    // Its own name, its own address: the endpoint answers (it holds no statuses).
    for (const self of ['endpoint', endpoint.endpoint]) {
      const e = clientVia(self);
      expect(await e.list('podstatus')).toEqual([]);
      expect(e.node).toBe('endpoint');
    }
    // A bare host:port is dialed as given.
    const byAddress = clientVia(nodeA.endpoint);
    expect((await byAddress.list('podstatus')).map((r) => r.metadata.id)).toEqual(['on-a']);
    // A watch: bootstrap from node-b, then its changes.
    const events: WatchEvent[] = [];
    const sub: Subscription = b.watch('podstatus', { bootstrap: true }).subscribe((e) => events.push(e));
    await eventually(() => expect(events.map((e) => `${e.type} ${e.resource?.metadata.id ?? ''}`)).toEqual(['created on-b', 'bootstrapped ']));
    await put(nodeB, 'on-b', podStatus(true));
    await eventually(() => expect(events.at(-1)).toMatchObject({ type: 'updated', resource: { metadata: { id: 'on-b', version: 2 } } }));
    // Counted by node, type and outcome.
    expect(await metricValue(endpoint, 'cosi_proxy_calls_total', { node: 'node-b', type: 'unary', outcome: 'OK' })).toBeGreaterThan(0);
    expect(await metricValue(endpoint, 'cosi_proxy_calls_total', { node: 'node-a', type: 'stream', outcome: 'OK' })).toBeGreaterThan(0);
    expect(await metricValue(endpoint, 'cosi_proxy_streams', { node: 'node-b' })).toBe(1);
    sub.unsubscribe();
    await eventually(async () => expect(await metricValue(endpoint, 'cosi_proxy_streams', { node: 'node-b' })).toBe(0));
  });

  it('passes the machine service through: Logs and Containers of the node, ApplyConfiguration as the node answers it', async () => {
    const b = clientVia('node-b');
    const chunks: string[] = [];
    for await (const chunk of b.logs('kubelet')) chunks.push(chunk.toString());
    expect(chunks.join('')).toBe('kubelet of node-b\n');
    // node-b has no container runtime: its answer, naming its socket, with its error kind.
    const containers = await unary(raw(), '/machine.MachineService/Containers', machineWire.containersRequest.encode({ namespace: 'k8s.io', driver: ContainerDriver.CRI }), { node: 'node-b' });
    expect(containers.err?.code).toBe(grpc.status.UNAVAILABLE);
    expect(containers.err?.details).toContain('b-no-runtime.sock');
    expect(containers.err?.metadata.get('cosi-error-kind')).toEqual(['unavailable']);
    expect(containers.err?.metadata.get('cosi-node')).toEqual(['node-b']);
    // No machine config controller behind this test node: the node's own answer, as it sent it.
    const apply = await unary(raw(), '/machine.MachineService/ApplyConfiguration', applyBody('version: v1alpha1\n'), { node: 'node-b' });
    expect(apply.err?.code).toBe(grpc.status.UNAVAILABLE);
    expect(apply.err?.details).toBe('the machine config is not loaded yet; try again in a moment');
  });

  it('passes refused writes through, naming the node, with its status, message and trailers', async () => {
    const create = await unary(raw(), '/cosi.resource.State/Create', wire.getRequest.encode({ namespace: 'k8s', type: 'x', id: 'y' }), { node: 'node-b' });
    expect(create.err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(create.err?.details).toBe('node "node-b" (127.0.0.1:' + portB + ') refused: write access is not allowed');
    expect(create.err?.metadata.get('cosi-error-kind')).toEqual(['permission-denied']);
  });
});

describe('roles', () => {
  it('keeps a reader a reader on the node, and the node audits the caller and the proxy', async () => {
    const reader = raw(pki.reader);
    const r = await unary(reader, '/machine.MachineService/ApplyConfiguration', applyBody('version: v1alpha1\n'), { node: 'node-b' });
    expect(r.err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(r.err?.details).toMatch(/^node "node-b" \(127\.0\.0\.1:\d+\) refused: not authorized: ApplyConfiguration needs role os:admin; caller CN=reader, O=os:reader \(through the proxy CN=cosid-endpoint, O=os:impersonator\) has only os:reader$/);
    // Reading is what a reader may do.
    const get = await unary(reader, '/cosi.resource.State/Get', getB(), { node: 'node-b' });
    expect(get.err).toBeNull();
    const audit = logs.b.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === 'audit' && l['via'] !== undefined);
    expect(audit).toContainEqual(expect.objectContaining({ peer: 'CN=reader, O=os:reader', roles: ['os:reader'], via: 'CN=cosid-endpoint, O=os:impersonator', proxyfrom: expect.stringMatching(/^127\.0\.0\.1:\d+$/), method: 'Get', outcome: 'OK' }));
    expect(audit).toContainEqual(expect.objectContaining({ peer: 'CN=reader, O=os:reader', method: 'ApplyConfiguration', outcome: 'PERMISSION_DENIED' }));
  });

  it('ignores (and logs) talos-role from a peer that is no os:impersonator', async () => {
    const forged = await unary(raw(pki.reader, nodeB.endpoint), '/machine.MachineService/ApplyConfiguration', applyBody('version: v1alpha1\n'), { 'talos-role': 'os:admin' });
    expect(forged.err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(forged.err?.details).toMatch(/has only os:reader$/);
    expect(logs.b.map((l) => JSON.parse(l) as Record<string, unknown>)).toContainEqual(expect.objectContaining({ level: 'warn', msg: 'talos-role ignored: the peer is not os:impersonator', peer: 'CN=reader, O=os:reader' }));
    // A caller of the endpoint cannot pass roles on either: the endpoint passes the caller's own.
    const viaEndpoint = await unary(raw(pki.reader), '/machine.MachineService/ApplyConfiguration', applyBody('version: v1alpha1\n'), { node: 'node-b', 'talos-role': 'os:admin' });
    expect(viaEndpoint.err?.details).toMatch(/has only os:reader$/);
  });

  it('refuses a caller without a role at the endpoint, never proxied', async () => {
    const before = await metricValue(endpoint, 'cosi_proxy_calls_total', {});
    const noRole = await endpoint.certWithRoles([]);
    const r = await unary(raw(noRole), '/cosi.resource.State/Get', getB(), { node: 'node-b' });
    expect(r.err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(r.err?.details).toMatch(/^not authorized: certificate CN=tester has none of the roles/);
    // Unknown nodes are not even told apart for it.
    const unknown = await unary(raw(noRole), '/cosi.resource.State/Get', getB(), { node: 'nowhere' });
    expect(unknown.err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(await metricValue(endpoint, 'cosi_proxy_calls_total', {})).toBe(before);
  });
});

describe('refusals', () => {
  it('refuses a second hop, metadata nodes, and several names in node', async () => {
    const loop = await unary(raw(), '/cosi.resource.State/Get', getB(), { node: 'node-b', proxyfrom: '10.0.0.9:1234' });
    expect(loop.err?.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(loop.err?.details).toContain('a call is proxied at most once (a loop in the node list, or a second hop)');
    const nodes = await unary(raw(), '/cosi.resource.State/Get', getB(), { nodes: ['node-a', 'node-b'] });
    expect(nodes.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(nodes.err?.details).toBe('metadata nodes is not supported (deprecated in Talos 1.14); name one node per call with metadata node');
    const two = await unary(raw(), '/cosi.resource.State/Get', getB(), { node: ['node-a', 'node-b'] });
    expect(two.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('says which node is unknown, unreachable, or refused the proxy: three messages', async () => {
    const unknown = await unary(raw(), '/cosi.resource.State/Get', getB(), { node: 'node-z' });
    expect(unknown.err?.code).toBe(grpc.status.NOT_FOUND);
    expect(unknown.err?.details).toBe(`node "node-z" is not known to this endpoint (it is not in the node list ${nodesFile} (node-a, node-b) and is not a host:port or an IP address)`);
    const closed = await freePort();
    const unreachable = await unary(raw(), '/cosi.resource.State/Get', getB(), { node: `127.0.0.1:${closed}` });
    expect(unreachable.err?.code).toBe(grpc.status.UNAVAILABLE);
    expect(unreachable.err?.details).toBe(`node "127.0.0.1:${closed}" is unreachable: nothing is listening at 127.0.0.1:${closed} (connection refused)`);
    // An endpoint whose impersonator certificate comes from a CA the nodes do not trust (it trusts theirs).
    const otherCa = await generateCa({ commonName: 'another CA' });
    const stranger = await issueClientCert(otherCa, { commonName: 'rogue-endpoint', organizations: ['os:impersonator'] });
    const rogue = await startServer({ pki, nodeName: 'rogue', nodesFile, impersonator: stranger });
    cleanups.push(() => rogue.close());
    const refused = await unary(raw(pki.admin, rogue.endpoint), '/cosi.resource.State/Get', getB(), { node: 'node-b' });
    expect(refused.err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(refused.err?.details).toBe(`node "node-b" (127.0.0.1:${portB}) refused this endpoint's certificate (CN=rogue-endpoint, O=os:impersonator): the node must trust its CA, and it must be valid now`);
    expect(refused.err?.metadata.get('cosi-error-kind')).toEqual(['permission-denied']);
  });
});

/** A raw watch (bytes) whose reading can be paused: grpc-js then stops reading, and HTTP/2 flow control pushes back. */
function rawWatch(node: string, regexp: string, opts: { deadline?: Date } = {}) {
  const client = raw();
  const req = wire.watchRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', apiVersion: 1, options: { bootstrapContents: false, tailEvents: 0, labelQuery: [], idQuery: { regexp }, aggregated: false, bootstrapBookmark: false } });
  const md = new grpc.Metadata();
  md.set('node', node);
  const call = client.makeServerStreamRequest('/cosi.resource.State/Watch', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req), md, opts.deadline !== undefined ? { deadline: opts.deadline } : {});
  const result = { call, ids: [] as string[], errors: [] as grpc.ServiceError[], ready: false };
  call.on('data', (b: Buffer) => {
    result.ready = true;
    for (const e of wire.watchResponse.decode(b).event) if (e.resource?.metadata?.id !== undefined) result.ids.push(e.resource.metadata.id);
  });
  call.on('error', (e: grpc.ServiceError) => result.errors.push(e));
  return result;
}

async function curl(method: string, body: object, node: string): Promise<unknown[]> {
  const { stdout } = await run(
    BUF,
    ['curl', '--protocol', 'grpc', '--schema', 'proto', '-H', `node: ${node}`, '--cacert', join(pki.dir, 'ca.crt'), '--cert', join(pki.dir, 'admin.crt'), '--key', join(pki.dir, 'admin.key'), '--data', JSON.stringify(body), `https://${endpoint.endpoint}/${method}`],
    { timeout: 30_000 },
  );
  return stdout
    .split(/\n(?=\{)/)
    .map((x) => x.trim())
    .filter((x) => x !== '')
    .map((x) => JSON.parse(x) as unknown);
}

describe('generic clients', () => {
  it('buf curl with only the .proto files names a node with -H node:NAME', async () => {
    const [got] = await curl('cosi.resource.State/Get', { namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id: 'on-b' }, 'node-b');
    expect(got).toMatchObject({ resource: { metadata: { id: 'on-b', namespace: 'k8s' } } });
    const logsOfA = await curl('machine.MachineService/Logs', { namespace: 'system', id: 'kubelet', tailLines: -1 }, 'node-a');
    expect(logsOfA.map((m) => Buffer.from((m as { bytes: string }).bytes, 'base64').toString()).join('')).toBe('kubelet of node-a\n');
    expect(logsOfA[0]).toMatchObject({ metadata: { hostname: 'node-a' } });
  });
});

describe('streams through the endpoint', () => {
  it('passes cancellation and deadlines on to the node', async () => {
    const sessions = () => nodeB.cosid.hub.stats().sessions;
    const before = sessions();
    const w = rawWatch('node-b', '^cancel/');
    await eventually(() => expect(sessions()).toBe(before + 1));
    w.call.cancel();
    await eventually(() => expect(sessions()).toBe(before));
    const timed = rawWatch('node-b', '^deadline/', { deadline: new Date(Date.now() + 1500) });
    await eventually(() => expect(sessions()).toBe(before + 1));
    await eventually(() => expect(timed.errors.map((e) => e.code)).toEqual([grpc.status.DEADLINE_EXCEEDED]), 10_000);
    await eventually(() => expect(sessions()).toBe(before));
  });

  it('paces a slow client: the node parks its watch, the endpoint holds a bounded amount, other streams on the same connection go on', async () => {
    // Incompressible: the node gzips shared watch messages for the endpoint (grpc-js accepts gzip).
    const big = () => randomBytes(24 << 10).toString('base64');
    const fromNode = () => metricValue(endpoint, 'cosi_proxy_bytes_relayed_total', { node: 'node-b', direction: 'from-node' });
    const slow = rawWatch('node-b', '^slow/');
    const other = rawWatch('node-b', '^other/');
    await eventually(() => expect(nodeB.cosid.hub.stats().sessions).toBeGreaterThanOrEqual(2));
    expect(await metricValue(endpoint, 'cosi_proxy_streams', { node: 'node-b' })).toBeGreaterThanOrEqual(2);
    slow.call.pause();
    const start = await fromNode();
    const count = 200;
    for (let i = 0; i < count; i++) await put(nodeB, `slow/${String(i).padStart(3, '0')}`, { padding: big(), i });
    // The node's session waits for room, as it does for a slow direct watcher ...
    await eventually(() => expect(nodeB.cosid.hub.stats().parked).toBe(1), 20_000);
    // ... and the endpoint relayed a bounded part of the ~6.5 MB (its budget, and the HTTP/2 windows on both sides).
    const held = (await fromNode()) - start;
    expect(held).toBeLessThan(5 << 20);
    // The other watch shares the endpoint's connection to node-b: it is not held up.
    await put(nodeB, 'other/1', { ok: true });
    await eventually(() => expect(other.ids).toEqual(['other/1']));
    slow.call.resume();
    await eventually(() => expect(slow.ids.length).toBe(count), 20_000);
    expect(slow.ids).toEqual(Array.from({ length: count }, (_, i) => `slow/${String(i).padStart(3, '0')}`));
    expect(slow.errors).toEqual([]);
    slow.call.cancel();
    other.call.cancel();
    await eventually(async () => expect(await metricValue(endpoint, 'cosi_proxy_calls_total', { node: 'node-b', type: 'stream', outcome: 'CANCELLED' })).toBeGreaterThanOrEqual(2));
  });
});

describe('limits on the node', () => {
  it("hold each caller behind the endpoint to its own connection's limits, not the proxy's one connection", async () => {
    const nodeC = await startServer({ pki, nodeName: 'node-c', maxWatchesPerConnection: 2 });
    cleanups.push(() => nodeC.close());
    const watch = (client: grpc.Client) => {
      const md = new grpc.Metadata();
      md.set('node', nodeC.endpoint);
      const req = wire.watchRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', apiVersion: 1, options: { bootstrapContents: false, tailEvents: 0, labelQuery: [], aggregated: false, bootstrapBookmark: false } });
      const call = client.makeServerStreamRequest('/cosi.resource.State/Watch', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req), md);
      const w = { call, errors: [] as grpc.ServiceError[] };
      call.on('data', () => {});
      call.on('error', (e: grpc.ServiceError) => w.errors.push(e));
      cleanups.push(() => call.cancel());
      return w;
    };
    // Three callers, three connections to the endpoint, one connection from the endpoint to node-c: all served.
    const own = () => {
      const c = new grpc.Client(endpoint.endpoint, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(pki.admin.keyPem), Buffer.from(pki.admin.certPem)), { 'grpc.use_local_subchannel_pool': 1 });
      cleanups.push(() => c.close());
      return c;
    };
    const callers = [watch(own()), watch(own()), watch(own())];
    await eventually(() => expect(nodeC.cosid.hub.stats().sessions).toBe(3));
    expect(callers.flatMap((w) => w.errors)).toEqual([]);
    // One caller with three watches on its connection meets the limit, as it would on node-c directly.
    const one = own();
    const mine = [watch(one), watch(one), watch(one)];
    await eventually(() => expect(mine.flatMap((w) => w.errors.map((e) => e.code))).toEqual([grpc.status.RESOURCE_EXHAUSTED]));
    expect(mine.flatMap((w) => w.errors)[0]?.details).toBe('too many watches on this connection (limit 2); close some or open another connection');
  });
});

describe('the end of a stream', () => {
  it("comes after every message the node sent before it, even when the caller was slow to read them", async () => {
    const ended = async () => {
      const m = (await nodeB.cosid.metrics.registry.getMetricsAsJSON()).find((x) => x.name === 'cosi_grpc_call_duration_seconds');
      return (m?.values ?? []).filter((v) => (v as { metricName?: string }).metricName === 'cosi_grpc_call_duration_seconds_count' && v.labels['method'] === 'List' && v.labels['code'] === 'OK').reduce((n, v) => n + v.value, 0);
    };
    const before = await ended();
    const md = new grpc.Metadata();
    md.set('node', 'node-b');
    // 40 statuses of ~32 KB: less than the endpoint holds for a slow caller, so the node finishes first.
    const req = wire.listRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', options: { labelQuery: [], idQuery: { regexp: '^slow/0[0-3]' } } });
    const call = raw().makeServerStreamRequest('/cosi.resource.State/List', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req), md);
    call.pause();
    const ids: string[] = [];
    let status: grpc.StatusObject | undefined;
    call.on('data', (b: Buffer) => ids.push(wire.listResponse.decode(b).resource?.metadata?.id ?? ''));
    call.on('status', (st: grpc.StatusObject) => (status = st));
    call.on('error', () => {});
    await eventually(async () => expect(await ended()).toBe(before + 1));
    call.resume();
    await eventually(() => expect(status?.code).toBe(grpc.status.OK));
    expect(ids).toEqual(Array.from({ length: 40 }, (_, i) => `slow/${String(i).padStart(3, '0')}`));
  });
});

describe('node list', () => {
  it('is reloaded when the file changes; a broken file keeps the last good list', async () => {
    const original = `nodes:\n  - name: node-a\n    address: ${nodeA.endpoint}\n  - name: node-b\n    address: 127.0.0.1:${portB}\n`;
    await writeFile(nodesFile, `${original}  - name: node-c\n    address: ${nodeA.endpoint.replace(/:\d+$/, '')}:${nodeA.cosid.port}\n`);
    await eventually(() => expect(endpoint.cosid.directory.nodes.map((n) => n.name)).toEqual(['node-a', 'node-b', 'node-c']));
    const viaC = clientVia('node-c');
    expect((await viaC.list('podstatus')).map((r) => r.metadata.id)).toEqual(['on-a']);
    const errorsBefore = logs.endpoint.filter((l) => l.includes('node list refused')).length;
    await writeFile(nodesFile, 'nodes:\n  - name: [broken\n');
    await eventually(() => expect(logs.endpoint.filter((l) => l.includes('node list refused')).length).toBeGreaterThan(errorsBefore));
    expect(endpoint.cosid.directory.nodes.map((n) => n.name)).toEqual(['node-a', 'node-b', 'node-c']);
    expect((await viaC.list('podstatus')).map((r) => r.metadata.id)).toEqual(['on-a']);
    await writeFile(nodesFile, original);
    await eventually(() => expect(endpoint.cosid.directory.nodes.map((n) => n.name)).toEqual(['node-a', 'node-b']));
  });
});

describe('restarts', () => {
  it.skipIf(etcd === null)("a watch through the endpoint survives the node's restart and resumes exactly", async () => {
    const events: WatchEvent[] = [];
    const states: string[] = [];
    const sub = clientVia('node-b')
      .watch('podstatus', { idRegexp: '^r/', bootstrap: true, reconnect: { initialDelayMs: 50, maxDelayMs: 300, onState: (st) => states.push(st) } })
      .subscribe((e) => e.type !== 'noop' && events.push(e));
    cleanups.push(() => sub.unsubscribe());
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['bootstrapped']));
    for (let i = 0; i < 5; i++) await put(nodeB, `r/${i}`, { round: 1 });
    await eventually(() => expect(events.length).toBe(6));
    await nodeB.close();
    await eventually(() => expect(states).toContain('reconnecting'));
    nodeB = await startNodeB();
    for (let i = 0; i < 5; i++) await put(nodeB, `r/${i}`, { round: 2 });
    await eventually(() => expect(events.length).toBe(11), 20_000);
    expect(events.some((e) => e.resync === true)).toBe(false);
    expect(states).not.toContain('resyncing');
    expect(events.slice(1).map((e) => `${e.type} ${e.resource?.metadata.id} v${e.resource?.metadata.version}`)).toEqual([
      ...[0, 1, 2, 3, 4].map((i) => `created r/${i} v1`),
      ...[0, 1, 2, 3, 4].map((i) => `updated r/${i} v2`),
    ]);
  });

  it("the endpoint's restart ends proxied streams with UNAVAILABLE, and clients resume through it", async () => {
    const w = rawWatch('node-a', '^e/');
    await eventually(() => expect(nodeA.cosid.hub.stats().sessions).toBeGreaterThanOrEqual(1));
    const events: WatchEvent[] = [];
    const states: string[] = [];
    const sub = clientVia('node-a')
      .watch('podstatus', { idRegexp: '^e/', bootstrap: true, reconnect: { initialDelayMs: 50, maxDelayMs: 300, onState: (st) => states.push(st) } })
      .subscribe((e) => e.type !== 'noop' && events.push(e));
    cleanups.push(() => sub.unsubscribe());
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['bootstrapped']));
    await put(nodeA, 'e/1', { n: 1 });
    await eventually(() => expect(events.length).toBe(2));
    await endpoint.close();
    await eventually(() => expect(w.errors.length).toBe(1));
    expect(w.errors[0]?.code).toBe(grpc.status.UNAVAILABLE);
    expect(w.errors[0]?.details).toBe('cosid (the endpoint that proxied this call) is shutting down; reconnect and resume from your last bookmark');
    await put(nodeA, 'e/2', { n: 2 });
    endpoint = await startEndpoint();
    await put(nodeA, 'e/1', { n: 3 });
    await eventually(() => expect(events.length).toBe(4), 20_000);
    expect(events.slice(1).map((e) => `${e.type} ${e.resource?.metadata.id} v${e.resource?.metadata.version}`)).toEqual(['created e/1 v1', 'created e/2 v1', 'updated e/1 v2']);
    expect(states).not.toContain('resyncing');
  });
});

describe('names', () => {
  it('reads a node list, and says what is wrong with a broken one', () => {
    expect(parseNodeList('nodes:\n  - name: a\n    address: 10.0.0.1\n  - name: b\n    address: "[fd00::2]:5000"\n  - name: c\n    address: c.example:50000\n', 'f', 50001)).toEqual([
      { name: 'a', address: '10.0.0.1:50001' },
      { name: 'b', address: '[fd00::2]:5000' },
      { name: 'c', address: 'c.example:50000' },
    ]);
    expect(parseNodeList('', 'f', 1)).toEqual([]);
    expect(() => parseNodeList('nodes:\n  - name: a\n    address: 10.0.0.1\n  - name: a\n    address: 10.0.0.2\n', 'f', 1)).toThrow('f: nodes[1]: the name "a" is listed twice');
    expect(() => parseNodeList('nodes:\n  - name: a\n    address: somehost\n', 'f', 1)).toThrow('f: nodes[0] (a): address "somehost" is not host:port or an IP address');
    expect(() => parseNodeList('nodes:\n  - name: a\n    adress: 10.0.0.1\n', 'f', 1)).toThrow('unknown key "adress"');
    expect(() => parseNodeList('node: []\n', 'f', 1)).toThrow('unknown key "node"');
  });

  it('routes its own name and addresses here, other addresses there, and nothing else', () => {
    const d = new NodeDirectory({ nodeName: 'me', listen: '127.0.0.1:7000', port: () => 7000, log: silentLogger });
    expect(d.route('me')).toEqual({ kind: 'local' });
    expect(d.route('127.0.0.1:7000')).toEqual({ kind: 'local' });
    expect(d.route('localhost:7000')).toEqual({ kind: 'local' });
    // A bare IP address: this cosid's own port.
    expect(d.route('127.0.0.1')).toEqual({ kind: 'local' });
    expect(d.route('127.0.0.1:7001')).toEqual({ kind: 'remote', target: { name: '127.0.0.1:7001', address: '127.0.0.1:7001' } });
    expect(d.route('10.1.2.3')).toEqual({ kind: 'remote', target: { name: '10.1.2.3:7000', address: '10.1.2.3:7000' } });
    expect(d.route('::1')).toEqual({ kind: 'remote', target: { name: '[::1]:7000', address: '[::1]:7000' } });
    expect(d.route('somehost')).toEqual({ kind: 'unknown', name: 'somehost' });
  });

  it('refuses to start with a broken node list, or an impersonator certificate without the role', async () => {
    const broken = join(dir, 'broken.yaml');
    await writeFile(broken, 'nodes: {}\n');
    await expect(startServer({ pki, nodesFile: broken })).rejects.toThrow(`${broken}: nodes must be a list of {name, address}`);
    await expect(startServer({ pki, impersonator: pki.admin })).rejects.toThrow('the impersonator certificate (CN=admin, O=os:admin) does not carry the role os:impersonator (O=os:impersonator): issue one with cosictl gen cert --roles os:impersonator');
  });
});

describe('cosictl through one endpoint (-e dialled, -n named)', () => {
  const cli = (args: string[], until?: (stdout: string) => boolean) =>
    runCli(['--cosiconfig', pki.cosiconfig, '-e', endpoint.endpoint, ...args], until !== undefined ? { until } : {});

  it('get asks each node by name through the endpoint, with the NODE column; an unknown node is reported next to the others', async () => {
    const r = await cli(['-n', 'node-a,node-b,ghost', 'get', 'podstatus', '-o', 'jsonpath={.node} {.metadata.id}']);
    expect(r.code).toBe(1);
    // Earlier tests wrote more resources to both nodes: these two are this file's first.
    expect(r.stdout.trimEnd().split('\n').filter((l) => / on-/.test(l)).sort()).toEqual(['node-a on-a', 'node-b on-b']);
    expect(r.stderr).toContain('node ghost: node "ghost" is not known to this endpoint');
  });

  it('get -w streams every node through the endpoint, each row labelled with its node', async () => {
    const rowA = /^node-a\s.*\son-a\s/m;
    const rowB = /^node-b\s.*\son-b\s/m;
    const r = await cli(['-n', 'node-a,node-b', 'get', 'podstatus', '-w'], (out) => rowA.test(out) && rowB.test(out));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(rowA);
    expect(r.stdout).toMatch(rowB);
    expect(r.stdout.split('\n')[0]).toMatch(/^NODE\s/);
  });
});
