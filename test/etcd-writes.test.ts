// The etcd store's writes (server/store/etcd/cas-writer.ts, swap-batcher.ts) on the run's real etcd, counted in etcd
// calls:
// - a write is one transaction; one that another writer got ahead of is one more, with no read in between (the
//   failed transaction read the key);
// - writes of distinct keys that wait at the same time go as one transaction; a conflict in it fails them all once,
//   and each is retried alone;
// - the kind's watch takes a write of this store back as the resource the write returned, without decoding it.
import type { IRangeRequest, ITxnRequest, Watcher } from 'etcd3';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { EtcdStore } from '../server/store/etcd.js';
import { etcdRevisionOf } from '../server/store/etcd/backend.js';
import type { Change } from '../server/store/store.js';
import { caughtUp } from './caught-up.js';

const etcd = inject('etcd');
const opened: { close(): unknown }[] = [];
afterAll(async () => {
  for (const c of opened.reverse()) await c.close();
});

const K = { namespace: 'ns', type: 'Things.test.dev' };

/** Counts the store's etcd transactions and range reads from now on. */
function countCalls(store: EtcdStore): { txn: number; range: number } {
  const calls = { txn: 0, range: 0 };
  const kv = store.etcd.client.kv;
  const txn = kv.txn.bind(kv);
  const range = kv.range.bind(kv);
  kv.txn = (req: ITxnRequest, ...rest) => {
    calls.txn++;
    return txn(req, ...rest);
  };
  kv.range = (req: IRangeRequest, ...rest) => {
    calls.range++;
    return range(req, ...rest);
  };
  return calls;
}

/** The kind's watch, once the store opens it, with its events held back while `hold` is true and given after. */
function holdableWatch(store: EtcdStore): { hold(): void; release(): void } {
  let held: unknown[][] | undefined;
  let watcher: Watcher | undefined;
  const createWatch = store.etcd.createWatch.bind(store.etcd);
  store.etcd.createWatch = async (p, start, onData, previousValues) => {
    const w = await createWatch(p, start, onData, previousValues);
    watcher ??= w;
    const emit = w.emit.bind(w);
    w.emit = (...args: unknown[]) => {
      if (held !== undefined && args[0] === 'data') return held.push(args) > 0;
      return emit(...(args as [string, ...unknown[]]));
    };
    return w;
  };
  return {
    hold: () => {
      if (watcher === undefined) throw new Error('the kind is not watched yet');
      held = [];
    },
    release: () => {
      const events = held ?? [];
      held = undefined;
      for (const args of events) watcher?.emit(...(args as [string, ...unknown[]]));
    },
  };
}

describe.skipIf(etcd === null)('etcd store writes', () => {
  const e = etcd as NonNullable<typeof etcd>;
  const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };
  const connect = async (prefix: string) => {
    const s = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(s);
    return s;
  };
  const newPrefix = () => `/test-${randomBytes(6).toString('hex')}/`;

  it('costs one transaction per write, and one more, without a read, when another writer got there first', async () => {
    const prefix = newPrefix();
    const store = await connect(prefix);
    const other = await connect(prefix);
    const watch = holdableWatch(store);
    await store.create({ ...K, id: 'a', spec: { n: 1 } }, 'me');
    const calls = countCalls(store);
    await store.update({ ...K, id: 'a', spec: { n: 2 } }, 'me');
    expect(calls).toEqual({ txn: 1, range: 0 });

    // The store's cache does not see the other writer's update: its first swap fails.
    await caughtUp(store, K);
    watch.hold();
    await other.update({ ...K, id: 'a', spec: { n: 3 } }, 'me');
    calls.txn = 0;
    const written = await store.update({ ...K, id: 'a', spec: { n: 4 } }, 'me');
    expect(calls).toEqual({ txn: 2, range: 0 });
    expect(written.metadata.version).toBe(4);
    watch.release();
    const h = await caughtUp(store, K);
    const changes = h.readChanges(h.oldestRevision, 100).changes;
    expect(changes.map((c) => [c.resource.metadata.version, c.resource.spec])).toEqual([
      [1, { n: 1 }],
      [2, { n: 2 }],
      [3, { n: 3 }],
      [4, { n: 4 }],
    ]);
  });

  it('sends writes of distinct keys that wait at the same time as one transaction, and retries alone those a conflict failed', async () => {
    const prefix = newPrefix();
    const store = await connect(prefix);
    const other = await connect(prefix);
    const watch = holdableWatch(store);
    await store.create({ ...K, id: 'x', spec: { n: 1 } }, 'me');
    const start = (await caughtUp(store, K)).revision;
    const calls = countCalls(store);
    const ids = Array.from({ length: 16 }, (_, i) => `r${i}`);
    await Promise.all(ids.map((id) => store.create({ ...K, id, spec: { id } }, 'me')));
    const created = (await caughtUp(store, K)).readChanges(start, 100).changes;
    expect(created.map((c) => c.resource.metadata.id).sort()).toEqual([...ids].sort());
    // Fewer transactions than writes: several share a revision.
    expect(calls.txn).toBeLessThan(ids.length);
    expect(new Set(created.map((c) => etcdRevisionOf(c.revision))).size).toBe(calls.txn);

    // x changes behind the cache's back, then x and others are written together: the batch fails, each is retried.
    watch.hold();
    await other.update({ ...K, id: 'x', spec: { n: 2 } }, 'me');
    const results = await Promise.allSettled([...ids.map((id) => store.update({ ...K, id, spec: { id, n: 2 } }, 'me')), store.update({ ...K, id: 'x', spec: { n: 3 } }, 'me')]);
    expect(results.map((r) => r.status)).toEqual(Array<string>(ids.length + 1).fill('fulfilled'));
    watch.release();
    const h = await caughtUp(store, K);
    expect(h.current('x')).toMatchObject({ metadata: { version: 3 }, spec: { n: 3 } });
    expect(ids.map((id) => h.current(id)?.metadata.version)).toEqual(Array<number>(ids.length).fill(2));
  });

  it('takes its own writes back from the watch as the resources the writes returned, not decoded again', async () => {
    const store = await connect(newPrefix());
    const history = await store.feed.history(K);
    const seen: Change[] = [];
    history.subscribe({ committed: (c) => seen.push(c) });
    const created = await store.create({ ...K, id: 'a', spec: { n: 1 } }, 'me');
    const updated = await store.update({ ...K, id: 'a', spec: { n: 2 } }, 'me');
    await caughtUp(store, K);
    expect(seen.map((c) => c.resource)).toEqual([created, updated]);
    expect(seen[0]?.resource).toBe(created);
    expect(seen[1]?.resource).toBe(updated);
    expect(seen[1]?.old).toBe(created);
  });
});
