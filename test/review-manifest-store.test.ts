// Review: the manifest server on the async store.
// 1. It re-renders only on `committed`: when the etcd kind's watch starts over (etcd cancelled it, e.g. compaction),
//    KindLog.reset() replaces the StaticPods without a commit, and the kubelet keeps getting the old pods.
// 2. Its StaticPodServerStatus write is retried by untilWritten without a stop signal: after stop() it keeps
//    writing to the store (forever while the store stays unavailable; the timers also keep the process alive).
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { CosiError } from '../shared/errors.js';
import { kindKey } from '../shared/resource.js';
import { silentLogger } from '../shared/log.js';
import { ManifestServer } from '../server/manifests/server.js';
import { K8S_NAMESPACE, STATIC_POD_TYPE } from '../server/resources/k8s.js';
import { EtcdStore } from '../server/store/etcd.js';
import { MemoryStore } from '../server/store/memory.js';
import type { ResourceStore } from '../server/store/store.js';

const etcd = inject('etcd');
const opened: { close(): unknown }[] = [];
afterAll(async () => {
  for (const c of opened.reverse()) await c.close();
});

const K = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };
const pod = (name: string) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name } });

async function names(url: string): Promise<string[]> {
  const body = (await (await fetch(url)).json()) as { items: { metadata: { name: string } }[] };
  return body.items.map((p) => p.metadata.name);
}

describe('review: manifest server', () => {
  it.skipIf(etcd === null)('serves the StaticPods the feed holds after its etcd watch started over', async () => {
    const e = etcd as NonNullable<typeof etcd>;
    const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const store = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(store);
    const other = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(other);
    await store.create({ ...K, id: 'p1', spec: pod('p1') }, 'test');
    const server = await ManifestServer.start({ listen: '127.0.0.1:0', store, log: silentLogger });
    opened.push({ close: () => server.stop() });
    server.markReady();
    expect(await names(server.url)).toEqual(['p1']);

    // The kind's watch misses these (it is about to be cancelled by etcd)...
    const kind = await (store as unknown as { kinds: Map<string, Promise<{ watcher: { emit: (...a: unknown[]) => boolean } }>> }).kinds.get(kindKey(K));
    const w = kind!.watcher;
    const emit = w.emit.bind(w);
    w.emit = (...args: unknown[]) => (args[0] === 'data' ? true : emit(...args));
    await other.destroy({ ...K, id: 'p1' }, 'test');
    await other.create({ ...K, id: 'p2', spec: pod('p2') }, 'test');
    // ...and etcd cancels it as compacted (what etcd3 emits): the kind is read again.
    emit('error', new Error('Watcher canceled: '));
    const history = await store.feed.history(K);
    for (let i = 0; i < 50 && history.list().map((r) => r.metadata.id).join() !== 'p2'; i++) await new Promise((r) => setTimeout(r, 100));
    expect(history.list().map((r) => r.metadata.id)).toEqual(['p2']);
    await new Promise((r) => setTimeout(r, 200));
    expect(await names(server.url)).toEqual(['p2']);
  });

  it('stops writing its status once stopped', async () => {
    const memory = new MemoryStore();
    let attempts = 0;
    const unavailable = () => {
      attempts++;
      return Promise.reject(new CosiError('unavailable', 'etcd is unreachable'));
    };
    const store = new Proxy(memory, {
      get(target, prop, receiver) {
        if (prop === 'get' || prop === 'create' || prop === 'update') return unavailable;
        return Reflect.get(target, prop, receiver) as unknown;
      },
    }) as ResourceStore;
    const server = await ManifestServer.start({ listen: '127.0.0.1:0', store, log: silentLogger });
    await server.stop();
    const atStop = attempts;
    await new Promise((r) => setTimeout(r, 1700));
    expect(attempts - atStop).toBe(0);
  });
});
