// The etcd backend under faults: a three-member etcd loses a member, then cosid itself stops and a new cosid starts
// on the same etcd, while a writer keeps changing resources. The client's watch must see every change exactly once,
// in order, with no re-list: its bookmarks are etcd revisions, valid on any cosid of that etcd.
import { afterAll, describe, expect, it } from 'vitest';
import { connect, type ConnectionState, type WatchEvent } from '../client/index.js';
import { isCosiError } from '../shared/errors.js';
import { Cosid } from '../server/cosid.js';
import { EtcdStore } from '../server/store/etcd.js';
import type { ResourceStore } from '../server/store/store.js';
import { startEtcdCluster, etcdPrerequisites, type EtcdCluster } from './etcd/cluster.js';
import { makePki, STATUSES, TEST_OWNER, type TestPki } from './harness.js';
import { freePort } from './pipeline-harness.js';

const IDS = ['default/a', 'default/b', 'default/c'];
const skip = process.env['COSI_TEST_ETCD'] === 'off' || !etcdPrerequisites().ok;

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Writes through its own store (another cosid, as far as etcd can tell), retrying while etcd cannot answer. */
async function write(store: ResourceStore, id: string, n: number): Promise<void> {
  for (;;) {
    try {
      if (n === 1) await store.create({ ...STATUSES, id, spec: { n } }, TEST_OWNER);
      else await store.update({ ...STATUSES, id, spec: { n } }, TEST_OWNER);
      return;
    } catch (err) {
      // A write whose answer was lost may have landed: the next attempt then finds it done.
      if (isCosiError(err, 'already-exists') && n === 1) return;
      if (!isCosiError(err, 'unavailable') && !isCosiError(err, 'aborted')) throw err;
    }
  }
}

describe.skipIf(skip)('cosid on a three-member etcd', () => {
  it('a watch sees every change once across a lost member and a cosid restart', async () => {
    const cluster: EtcdCluster = await startEtcdCluster({ size: 3 });
    cleanups.push(() => cluster.close());
    const pki: TestPki = await makePki();
    const port = await freePort();
    const prefix = '/cosi/fault-node/';
    const tls = { caPem: cluster.client.caPem, certPem: cluster.client.certPem, keyPem: cluster.client.keyPem };
    const openStore = () => EtcdStore.connect({ endpoints: cluster.endpoints, tls, prefix, watchGraceMs: 500 });
    const startCosid = async () =>
      Cosid.start({
        listen: `127.0.0.1:${port}`,
        tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
        nodeName: 'fault-node',
        store: await openStore(),
        shutdownGraceMs: 1000,
      });
    let cosid = await startCosid();
    cleanups.push(() => cosid.stop());
    const writer = await openStore();
    cleanups.push(() => writer.close());

    const client = connect({ endpoint: `127.0.0.1:${port}`, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
    cleanups.push(() => client.close());
    const states: ConnectionState[] = [];
    const stream = client.watchIter('podstatus', { bootstrap: true, reconnect: { initialDelayMs: 50, maxDelayMs: 200, jitter: 0, onState: (s) => states.push(s) } });
    const seen: WatchEvent[] = [];
    let bootstrapped: (() => void) | undefined;
    const ready = new Promise<void>((resolve) => (bootstrapped = resolve));
    const counts = new Map<string, number>();
    let target = 0;
    let reached: (() => void) | undefined;
    const consumer = (async () => {
      for await (const e of stream) {
        seen.push(e);
        if (e.type === 'bootstrapped') bootstrapped?.();
        if (e.type === 'created' || e.type === 'updated') counts.set(e.resource?.metadata.id ?? '', (e.resource?.spec as { n: number }).n);
        if (reached !== undefined && IDS.every((id) => (counts.get(id) ?? 0) >= target)) reached();
      }
    })();
    /** Resolves once the watch has seen change `n` of every ID. */
    const seenUpTo = (n: number) =>
      new Promise<void>((resolve) => {
        target = n;
        reached = resolve;
        if (IDS.every((id) => (counts.get(id) ?? 0) >= n)) resolve();
      });

    // The watch has its (empty) picture before the first write: otherwise a slow start would put later versions in
    // the bootstrap, and the first ones would rightly never be seen.
    await ready;
    let n = 0;
    const round = async (rounds: number) => {
      for (let i = 0; i < rounds; i++) {
        n++;
        for (const id of IDS) await write(writer, id, n);
      }
    };
    await round(5);
    await seenUpTo(n);

    // One member of three goes: etcd keeps a quorum, and writes and the watch go on.
    await cluster.stop(0);
    await round(5);
    await seenUpTo(n);

    // cosid stops (its watchers end with UNAVAILABLE and a last bookmark); writes go on while it is away.
    await cosid.stop();
    await round(5);
    cosid = await startCosid();
    await round(5);
    await seenUpTo(n);

    await stream.close();
    await consumer;
    // Every change exactly once and in order: for each ID the versions seen are 1, 2, ... n, nothing missing or twice.
    for (const id of IDS) {
      const versions = seen.filter((e) => e.resource?.metadata.id === id && (e.type === 'created' || e.type === 'updated')).map((e) => e.resource?.metadata.version);
      expect(versions).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    }
    // Resumed from its bookmark, never re-listed.
    expect(states).toContain('reconnecting');
    expect(states).not.toContain('resyncing');
    expect(seen.filter((e) => e.type === 'bootstrapped')).toHaveLength(1);
  }, 120_000);
});
