// etcd going away while a freshly started cosid fetches older history for a resume (server/store/etcd/backend.ts,
// history()): the replay watch breaks while the backfill waits for its fence's put, and the put then fails too.
// cosid must stay up (no unhandled rejection: Node 20 would exit) and the watch must end with a clean UNAVAILABLE.
import type { Watcher } from 'etcd3';
import { afterAll, describe, expect, it } from 'vitest';
import { connect, StatusCode, type WatchEvent } from '../client/index.js';
import { Cosid } from '../server/cosid.js';
import { EtcdStore } from '../server/store/etcd.js';
import { etcdPrerequisites, startEtcdCluster } from './etcd/cluster.js';
import { eventually, makePki, podStatus, STATUSES, TEST_OWNER } from './harness.js';

const skip = process.env['COSI_TEST_ETCD'] === 'off' || !etcdPrerequisites().ok;
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

describe.skipIf(skip)('a resume from an old bookmark while etcd goes away', () => {
  it('ends the watch UNAVAILABLE and leaves no unhandled rejection when etcd dies during the backfill', async () => {
    const unhandled: unknown[] = [];
    const trap = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', trap);
    cleanups.push(() => process.off('unhandledRejection', trap));

    const cluster = await startEtcdCluster({ size: 1 });
    cleanups.push(() => cluster.close());
    const pki = await makePki();
    const prefix = '/cosi/backfill-node/';
    const openStore = () =>
      EtcdStore.connect({
        endpoints: cluster.endpoints,
        tls: { caPem: cluster.client.caPem, certPem: cluster.client.certPem, keyPem: cluster.client.keyPem },
        prefix,
        callTimeoutMs: 1000,
        // The kind's own watch must not end the resume first: the backfill is what this test breaks.
        watchGraceMs: 60_000,
      });
    const startCosid = async (store: EtcdStore) =>
      Cosid.start({ listen: '127.0.0.1:0', tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem }, nodeName: 'backfill-node', store, shutdownGraceMs: 500 });
    const clientOf = (cosid: Cosid) => {
      const c = connect({ endpoint: `127.0.0.1:${cosid.port}`, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
      cleanups.push(() => c.close());
      return c;
    };

    // A bookmark from a first cosid, then changes it does not see.
    const writer = await openStore();
    cleanups.push(() => writer.close());
    await writer.create({ ...STATUSES, id: 'default/a', spec: podStatus(false) }, TEST_OWNER);
    const first = await startCosid(await openStore());
    cleanups.push(() => first.stop());
    const firstEvents: WatchEvent[] = [];
    const sub = clientOf(first).watch('podstatus', { bootstrapBookmark: true, reconnect: false }).subscribe({ next: (e) => firstEvents.push(e) });
    const bookmark = await eventually(() => {
      const b = firstEvents[0]?.bookmark;
      expect(firstEvents[0]?.type).toBe('noop');
      return b as Uint8Array;
    });
    sub.unsubscribe();
    await first.stop();
    for (let n = 0; n < 5; n++) await writer.update({ ...STATUSES, id: 'default/a', spec: podStatus(n % 2 === 0) }, TEST_OWNER);

    // A fresh cosid: its history of the kind begins now, so the resume must fetch the changes since the bookmark.
    const store = await openStore();
    let replay: Watcher | undefined;
    const createWatch = store.etcd.createWatch.bind(store.etcd);
    store.etcd.createWatch = async (p, start, onData, previousValues) => {
      const w = await createWatch(p, start, onData, previousValues);
      if (previousValues === true) replay = w;
      return w;
    };
    const second = await startCosid(store);
    cleanups.push(() => second.stop());
    // The backfill's fence: before it is written, etcd dies and the replay watch hears of it.
    const client = store.etcd.client as unknown as { put(key: string): { exec(): Promise<unknown> } };
    const put = client.put.bind(client);
    let fenced = false;
    client.put = (key: string) => {
      const b = put(key);
      if (!fenced && key === store.etcd.kindPrefix(STATUSES) && replay !== undefined) {
        fenced = true;
        const w = replay;
        const exec = b.exec.bind(b);
        b.exec = async () => {
          const disconnected = new Promise<void>((resolve) => w.once('disconnected', () => resolve()));
          await cluster.kill(0);
          await disconnected;
          return exec();
        };
      }
      return b;
    };

    const errors: unknown[] = [];
    const events: WatchEvent[] = [];
    clientOf(second)
      .watch('podstatus', { fromBookmark: bookmark, reconnect: false })
      .subscribe({ next: (e) => events.push(e), error: (e: unknown) => errors.push(e) });
    await eventually(() => expect(errors.length).toBe(1), 20_000);
    expect(fenced).toBe(true);
    expect(errors[0]).toMatchObject({ code: StatusCode.UNAVAILABLE });
    expect(events).toEqual([]);
    // cosid still answers (from its cache of the kind), and nothing was left unhandled.
    expect((await clientOf(second).list('podstatus', { timeoutMs: 5000 })).map((r) => r.metadata.id)).toEqual(['default/a']);
    expect(unhandled).toEqual([]);
  });
});
