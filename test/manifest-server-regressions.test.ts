// Regressions of the manifest server (server/manifests/server.ts) on the async store:
// - when the etcd kind's watch starts over (etcd cancelled it: compaction), the StaticPods are replaced without a
//   commit, and the kubelet must get the new ones (a render on the history's `lost`, not only on `committed`);
// - its StaticPodServerStatus write is retried while the store is unavailable, and stop() ends that retry: no write
//   attempt after stop().
import { randomBytes } from 'node:crypto';
import type { Watcher } from 'etcd3';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { CosiError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { silentLogger } from '../shared/log.js';
import { ManifestServer } from '../server/manifests/server.js';
import { K8S_NAMESPACE, STATIC_POD_TYPE } from '../server/resources/k8s.js';
import { EtcdStore } from '../server/store/etcd.js';
import { MemoryStore } from '../server/store/memory.js';
import type { ResourceStore } from '../server/store/store.js';
import { eventually } from './harness.js';

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

/** The first wait of untilWritten after a failure (server/controllers/retry.ts; ManifestServer passes no delays). */
const RETRY_INITIAL_DELAY_MS = 200;

describe('manifest server regressions', () => {
  it.skipIf(etcd === null)('serves the StaticPods the feed holds after its etcd watch started over', async () => {
    const e = etcd as NonNullable<typeof etcd>;
    const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const store = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(store);
    const other = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(other);
    // The StaticPod kind's own watch (opened by the first write).
    const watches: Watcher[] = [];
    const createWatch = store.etcd.createWatch.bind(store.etcd);
    store.etcd.createWatch = async (p, start, onData, previousValues) => {
      const w = await createWatch(p, start, onData, previousValues);
      if (p === store.etcd.kindPrefix(K)) watches.push(w);
      return w;
    };
    await store.create({ ...K, id: 'p1', spec: pod('p1') }, 'test');
    const server = await ManifestServer.start({ listen: '127.0.0.1:0', store, log: silentLogger });
    opened.push({ close: () => server.stop() });
    server.markReady();
    expect(await names(server.url)).toEqual(['p1']);
    expect(watches.length).toBe(1);
    const live = watches[0] as Watcher;

    // The kind's watch misses these (it is about to be cancelled by etcd)...
    const emit = live.emit.bind(live);
    live.emit = (...args: unknown[]) => (args[0] === 'data' ? true : emit(...(args as [string, ...unknown[]])));
    await other.destroy({ ...K, id: 'p1' }, 'test');
    await other.create({ ...K, id: 'p2', spec: pod('p2') }, 'test');
    // ...and etcd cancels it as compacted (what etcd3 emits then): the kind is read again, the history starts over.
    const history = await store.feed.history(K);
    const lost = new Promise<CosiError>((resolve) => {
      const off = history.subscribe({
        lost: (err) => {
          off();
          resolve(err);
        },
      });
    });
    emit('error', new Error('Watcher canceled: '));
    expect((await lost).kind).toBe('too-old');
    expect(history.list().map((r) => r.metadata.id)).toEqual(['p2']);
    // The render is scheduled on that event (setImmediate); polled with a bound.
    await eventually(async () => expect(await names(server.url)).toEqual(['p2']), 3000);
  });

  it('stops retrying its status write once stopped', async () => {
    const memory = new MemoryStore();
    let attempts = 0;
    const store = new Proxy(memory, {
      get(target, prop, receiver) {
        if (prop === 'get' || prop === 'create' || prop === 'update') {
          return () => {
            attempts++;
            return Promise.reject(new CosiError('unavailable', 'etcd is unreachable'));
          };
        }
        return Reflect.get(target, prop, receiver) as unknown;
      },
    }) as ResourceStore;
    const lines: string[] = [];
    let waiting!: () => void;
    const firstWait = new Promise<void>((resolve) => (waiting = resolve));
    const log: Logger = {
      debug() {},
      info() {},
      // untilWritten logs this right before it starts its first wait.
      warn: (msg) => {
        lines.push(`warn ${msg}`);
        waiting();
      },
      error: (msg) => lines.push(`error ${msg}`),
      with: () => log,
    };
    const server = await ManifestServer.start({ listen: '127.0.0.1:0', store, log });
    await firstWait;
    expect(attempts).toBe(1);
    await server.stop();
    // The absence of a next attempt, bounded by the retry's own delay: a timer of the same length started now fires
    // after the retry's (started earlier), and a retry's write starts in the microtasks right after its timer. So
    // this holds whatever the timing: were the retry still running, its second attempt would be counted by then.
    await new Promise((resolve) => setTimeout(resolve, RETRY_INITIAL_DELAY_MS));
    expect(attempts).toBe(1);
    expect(lines).toEqual(['warn store unavailable: retrying the write until it lands']);
  });
});
