// The manifest server as the kubelet sees it: real HTTP on loopback.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodList } from 'kubernetes-models/v1/PodList';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { ManifestServer } from '../server/manifests/server.js';
import { Registry } from '../server/resources/registry.js';
import { registerK8sTypes } from '../server/resources/k8s.js';
import { MemoryStore } from '../server/store/memory.js';
import { createLogger, silentLogger } from '../shared/log.js';
import { eventually, pod } from './harness.js';

const store = new MemoryStore();
const registry = new Registry(store);
registerK8sTypes(registry);
const lines: string[] = [];
let server: ManifestServer;

beforeAll(async () => {
  await registry.published();
  server = await ManifestServer.start({ listen: '127.0.0.1:0', store, log: createLogger({ write: (l) => lines.push(l) }) });
});
afterAll(() => server.stop());

describe('manifest server', () => {
  it('answers 503 with a reason before the first render', async () => {
    const res = await fetch(server.url);
    expect(res.status).toBe(503);
    expect(await res.text()).toContain('not rendered yet');
  });

  it('serves every valid StaticPod as one PodList the Kubernetes schema accepts, with an ETag', async () => {
    await reconcileStaticPods(store, [{ id: 'default-nginx', pod: pod('nginx'), origin: 'test' }, { id: 'kube-system-etcd', pod: pod('etcd', 'etcd', 'kube-system'), origin: 'test' }], silentLogger);
    server.markReady();
    const res = await fetch(server.url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    const body = (await res.json()) as { apiVersion: string; kind: string; items: unknown[] };
    expect(body).toEqual({ apiVersion: 'v1', kind: 'PodList', items: [pod('nginx'), pod('etcd', 'etcd', 'kube-system')] });
    expect(() => new PodList(body as ConstructorParameters<typeof PodList>[0]).validate()).not.toThrow();
    const etag = res.headers.get('etag');
    expect(etag).toMatch(/^".+"$/);
    const again = await fetch(server.url, { headers: { 'If-None-Match': etag ?? '' } });
    expect(again.status).toBe(304);
    expect(await again.text()).toBe('');
    expect(lines.some((l) => l.includes('"msg":"rendered static pods"') && l.includes('"added":{"count":2,"first":["default-nginx","kube-system-etcd"]}'))).toBe(true);
  });

  it('re-renders on change (new ETag) and logs what was added, updated and removed', async () => {
    const before = (await fetch(server.url)).headers.get('etag');
    await reconcileStaticPods(store, [{ id: 'default-nginx', pod: pod('nginx', 'nginx:2'), origin: 'test' }, { id: 'default-web', pod: pod('web'), origin: 'test' }], silentLogger);
    await eventually(async () => expect((await fetch(server.url)).headers.get('etag')).not.toBe(before));
    expect(lines.at(-1)).toContain('"added":{"count":1,"first":["default-web"]},"updated":{"count":1,"first":["default-nginx"]},"removed":{"count":1,"first":["kube-system-etcd"]}');
  });

  it('a change to many pods logs their count and the first few names, not every name', async () => {
    const many = Array.from({ length: 1000 }, (_, i) => ({ id: `default-p${String(i).padStart(4, '0')}`, pod: pod(`p${String(i).padStart(4, '0')}`), origin: 'test' }));
    const before = (await fetch(server.url)).headers.get('etag');
    await reconcileStaticPods(store, many, silentLogger);
    await eventually(async () => expect((await fetch(server.url)).headers.get('etag')).not.toBe(before));
    const line = lines.at(-1) ?? '';
    expect(line).toContain('"added":{"count":1000,"first":["default-p0000","default-p0001","default-p0002","default-p0003","default-p0004"],"more":995}');
    expect(line.length).toBeLessThan(600);
  });

  it('answers only GET /', async () => {
    expect((await fetch(`${server.url}/other`)).status).toBe(404);
    const post = await fetch(server.url, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET');
    expect((await fetch(server.url, { method: 'DELETE' })).status).toBe(405);
  });

  it('refuses to listen anywhere but loopback', async () => {
    await expect(ManifestServer.start({ listen: '0.0.0.0:0', store, log: silentLogger })).rejects.toThrow(/must be a loopback/);
  });
});
