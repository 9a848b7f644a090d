// Get and List end to end, served from the bytes each resource version was encoded into at its commit: the same
// bytes the reference encoding gives (protobufjs with the reference protos, the `yaml` package's text), nothing
// encoded at read time, and a List whose client stops reading parks with a bounded amount queued.
import * as grpc from '@grpc/grpc-js';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toWireMetadata, type Resource } from '../shared/resource.js';
import { wire, type Json } from '../shared/wire.js';
import { DEFAULT_FRAMED_STREAM_LIMITS } from '../server/api/framed-stream.js';
import { packageYaml } from '../server/watch/yaml-spec.js';
import { eventually, pod, podStatus, startServer, STATIC_PODS, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

let srv: TestServer;
beforeAll(async () => {
  srv = await startServer();
});
afterAll(() => srv.close());

function rawClient(): grpc.Client {
  return new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem), Buffer.from(srv.pki.admin.keyPem), Buffer.from(srv.pki.admin.certPem)));
}

/** The GetResponse (= ListResponse) bytes protobufjs writes for the resource from the reference protos. */
function referenceBytes(r: Resource): Buffer {
  const def = srv.cosid.registry.lookup(r.metadata.type);
  return Buffer.from(
    wire.getResponse.encode({
      resource: { metadata: toWireMetadata(r.metadata), spec: { protoSpec: def?.encodeProto?.(r.spec) ?? new Uint8Array(), yamlSpec: packageYaml(r.spec) } },
    }),
  );
}

function get(client: grpc.Client, p: { namespace: string; type: string; id: string }): Promise<Buffer> {
  const req = Buffer.from(wire.getRequest.encode(p));
  return new Promise((resolve, reject) => client.makeUnaryRequest('/cosi.resource.State/Get', (b: Buffer) => b, (b: Buffer) => b, req, (e, r) => (e || r === undefined ? reject(e) : resolve(r))));
}

function list(client: grpc.Client, k: { namespace: string; type: string }): grpc.ClientReadableStream<Buffer> {
  const req = Buffer.from(wire.listRequest.encode(k));
  return client.makeServerStreamRequest('/cosi.resource.State/List', (b: Buffer) => b, (b: Buffer) => b, req);
}

async function listAll(client: grpc.Client, k: { namespace: string; type: string }): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const m of list(client, k)) out.push(m as Buffer);
  return out;
}

const filler = (n: number) => Array.from({ length: n }, (_, i) => ({ name: `c-${i}`, image: `registry.k8s.io/c:${i}`, ready: i % 2 === 0, restartCount: i, note: i % 3 === 0 ? "it's 'quoted'\nand multi-line" : 'yes' }));

describe('Get and List bytes', () => {
  it('are the reference encoding of each resource, in ID order, across many writes and for a message larger than a write', async () => {
    const { store } = srv.cosid;
    const specs: Json[] = [
      podStatus(true),
      { phase: 'Running', message: 'naïve 日本語 😀', odd: ['yes', 'no', '0x1F', '1:20', 'e5', '', '- a', 'a: b', '#', null, 1.5, -3, true], nested: [[1, [2]], [{ a: {} }], []] },
      { big: 'x'.repeat(DEFAULT_FRAMED_STREAM_LIMITS.batchBytes + 1000) },
      ...Array.from({ length: 300 }, (_, i) => ({ ...(podStatus(i % 2 === 0) as object), containerStatuses: filler(12), seq: i }) as Json),
    ];
    for (const [i, spec] of specs.entries()) {
      await store.create({ ...STATUSES, id: `bytes/${String(i).padStart(4, '0')}`, spec, labels: { i: String(i), tier: 'a b' }, annotations: { note: 'é' } }, TEST_OWNER);
    }
    // Other metadata: finalizers, a tear-down, an update.
    await store.addFinalizers({ ...STATUSES, id: 'bytes/0000' }, ['f1', 'f2']);
    await store.teardown({ ...STATUSES, id: 'bytes/0001' }, TEST_OWNER);
    await store.update({ ...STATUSES, id: 'bytes/0003', spec: { updated: true } }, TEST_OWNER);
    await store.create({ ...STATIC_PODS, id: 'bytes-pod', spec: pod('nginx') }, TEST_OWNER);

    const client = rawClient();
    const expected = (await store.list(STATUSES)).map(referenceBytes);
    const listed = await listAll(client, STATUSES);
    expect(listed.length).toBe(expected.length);
    expect(listed.findIndex((m, i) => !m.equals(expected[i] ?? Buffer.alloc(0)))).toBe(-1);
    for (const p of [{ ...STATUSES, id: 'bytes/0000' }, { ...STATUSES, id: 'bytes/0001' }, { ...STATUSES, id: 'bytes/0002' }, { ...STATIC_PODS, id: 'bytes-pod' }]) {
      const r = await store.get(p);
      const got = await get(client, p);
      expect(got.equals(referenceBytes(r))).toBe(true);
      // Decoded with the reference protos: the metadata as stored, the YAML reads back as the spec.
      const decoded = wire.getResponse.decode(got).resource;
      expect(decoded?.metadata).toMatchObject({ id: r.metadata.id, version: String(r.metadata.version), phase: r.metadata.phase, finalizers: r.metadata.finalizers, labels: r.metadata.labels, annotations: r.metadata.annotations });
      expect(YAML.parse(decoded?.spec?.yamlSpec ?? '')).toEqual(r.spec);
    }
    client.close();
  });

  it('are read as they were encoded at commit: a Get or a List encodes nothing', async () => {
    const { store, hub } = srv.cosid;
    for (let i = 0; i < 20; i++) await store.create({ ...STATUSES, id: `no-encode/${i}`, spec: podStatus(true) }, TEST_OWNER);
    await store.update({ ...STATUSES, id: 'no-encode/3', spec: podStatus(false) }, TEST_OWNER);
    const client = rawClient();
    const before = hub.frames.encoded;
    const listed = await listAll(client, STATUSES);
    await get(client, { ...STATUSES, id: 'no-encode/3' });
    expect(listed.length).toBe((await store.list(STATUSES)).length);
    expect(hub.frames.encoded).toBe(before);
    client.close();
  });
});

describe('a List whose client stops reading', () => {
  it('parks with at most its budget queued, lets other calls through, and finishes once the client reads again', async () => {
    const { store, lists } = srv.cosid;
    const kind = STATIC_PODS;
    const count = 2000;
    for (let i = 0; i < count; i++) await store.create({ ...kind, id: `slow-${String(i).padStart(5, '0')}`, spec: { ...pod(`p${i}`), padding: 'x'.repeat(4096) } }, TEST_OWNER);
    const total = (await store.list(kind)).reduce((n, r) => n + referenceBytes(r).length + 5, 0);
    expect(total).toBeGreaterThan(8 << 20);
    // grpc-js's default HTTP/2 window (64 KiB): the server can get little ahead of what the client reads.
    const client = rawClient();
    const writtenBefore = lists.writtenBytes;
    const call = list(client, kind);
    const got: Buffer[] = [];
    const ended = new Promise<void>((resolve, reject) => {
      call.on('end', resolve);
      call.on('error', reject);
    });
    call.on('data', (m: Buffer) => {
      got.push(m);
      if (got.length === 1) call.pause();
    });
    ended.catch(() => undefined); // awaited below; a failure before then must not go unhandled
    await eventually(() => expect(lists.parked).toBe(1), 20_000);
    const { batchBytes, maxQueuedBytes } = DEFAULT_FRAMED_STREAM_LIMITS;
    expect(lists.queuedBytes).toBeLessThanOrEqual(maxQueuedBytes + batchBytes);
    expect(lists.maxQueuedBytes).toBeLessThanOrEqual(maxQueuedBytes + batchBytes);
    // It stopped far from the end: the rest of the response is not held anywhere.
    expect(lists.writtenBytes - writtenBefore).toBeLessThan(total / 4);
    // Other calls are served meanwhile.
    const other = rawClient();
    const r = wire.getResponse.decode(await get(other, { ...kind, id: 'slow-00000' })).resource;
    expect(r?.metadata?.id).toBe('slow-00000');
    other.close();
    call.resume();
    await ended;
    expect(got.length).toBe((await store.list(kind)).length);
    expect(got.map((m) => wire.listResponse.decode(m).resource?.metadata?.id)).toEqual((await store.list(kind)).map((r) => r.metadata.id));
    expect(lists.writtenBytes - writtenBefore).toBe(total);
    await eventually(() => expect({ parked: lists.parked, queued: lists.queuedBytes }).toEqual({ parked: 0, queued: 0 }));
    client.close();
  });
});
