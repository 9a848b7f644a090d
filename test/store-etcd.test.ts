// The store contract on etcd (the run's shared etcd, mTLS), and what only the etcd backend does: values written by
// someone else that do not decode, bookmarks that outlive the store object, plaintext refused off loopback.
import { caughtUp } from './caught-up.js';
import { Etcd3 } from 'etcd3';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { EtcdStore } from '../server/store/etcd.js';
import type { Change } from '../server/store/store.js';
import { runStoreContract, type StoreUnderTest } from './store-contract.js';

const etcd = inject('etcd');
const opened: { close(): unknown }[] = [];
afterAll(async () => {
  for (const c of opened.reverse()) await c.close();
});

function tlsOf(e: NonNullable<typeof etcd>) {
  return { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };
}

function rawClient(e: NonNullable<typeof etcd>): Etcd3 {
  const c = new Etcd3({ hosts: e.endpoints, credentials: { rootCertificate: Buffer.from(e.tls.caPem), certChain: Buffer.from(e.tls.certPem), privateKey: Buffer.from(e.tls.keyPem) } });
  opened.push(c);
  return c;
}

describe.skipIf(etcd === null)('etcd store', () => {
  const e = etcd as NonNullable<typeof etcd>;

  runStoreContract('etcd', async (): Promise<StoreUnderTest> => {
    // A prefix per suite: the run's etcd is shared by every test file.
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const open = () => EtcdStore.connect({ endpoints: e.endpoints, tls: tlsOf(e), prefix });
    let store = await open();
    const raw = rawClient(e);
    return {
      get store() {
        return store;
      },
      async forgetHistory() {
        // etcd forgets history by compaction; the store's own window goes with a restart of the store.
        // Compaction keeps the revision it is made at: one write past the kind's last change, so that one goes too.
        const { header } = await raw.put(`${prefix}compaction-probe`).value('x').exec();
        await raw.kv.compact({ revision: header.revision, physical: true });
        await store.close();
        store = await open();
      },
      close: () => store.close(),
    };
  });

  it('reports a value that does not decode on the watch, and logs it, instead of skipping it', async () => {
    const lines: string[] = [];
    const log = { debug() {}, info() {}, warn() {}, error: (msg: string, f?: Record<string, unknown>) => lines.push(`${msg} ${JSON.stringify(f)}`), with() { return log; } };
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const store = await EtcdStore.connect({ endpoints: e.endpoints, tls: tlsOf(e), prefix, log });
    opened.push(store);
    const K = { namespace: 'ns', type: 'Things.test.dev' };
    const history = await store.feed.history(K);
    const seen: Change[] = [];
    history.subscribe({ committed: (c) => seen.push(c) });
    await store.create({ ...K, id: 'good', spec: { n: 1 } }, 'me');
    // Someone else writes garbage into our keyspace.
    await rawClient(e).put(`${store.etcd.kindPrefix(K)}bad`).value('{not ours').exec();
    await store.create({ ...K, id: 'after', spec: { n: 2 } }, 'me');
    await caughtUp(store, K);
    expect(seen.map((c) => [c.resource.metadata.id, c.type, c.error !== undefined])).toEqual([
      ['good', 'created', false],
      ['bad', 'created', true],
      ['after', 'created', false],
    ]);
    expect(seen[1]?.error).toMatch(/Things\.test\.dev\(ns\/bad\) at etcd revision \d+ does not decode: not a cosi-resource\/1 value/);
    expect(lines.some((l) => l.startsWith('stored value does not decode') && l.includes(`${prefix}ns/Things.test.dev/bad`))).toBe(true);
    // The kind's state holds what decodes; an authoritative read of the bad key says what is wrong.
    expect(history.list().map((r) => r.metadata.id)).toEqual(['after', 'good']);
    await expect(store.get({ ...K, id: 'bad' })).rejects.toMatchObject({ kind: 'data-loss' });
  });

  it('gives bookmarks that another store object on the same etcd and prefix resumes from', async () => {
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const K = { namespace: 'ns', type: 'Things.test.dev' };
    const first = await EtcdStore.connect({ endpoints: e.endpoints, tls: tlsOf(e), prefix });
    opened.push(first);
    await first.create({ ...K, id: 'a', spec: { n: 1 } }, 'me');
    const mark = (await caughtUp(first, K)).revision;
    await first.update({ ...K, id: 'a', spec: { n: 2 } }, 'me');
    await first.create({ ...K, id: 'b', spec: { n: 1 } }, 'me');
    await first.close();
    const second = await EtcdStore.connect({ endpoints: e.endpoints, tls: tlsOf(e), prefix });
    opened.push(second);
    expect(second.feed.instance).toBe(first.feed.instance);
    const history = await second.feed.history(K);
    expect(history.oldestRevision).toBeGreaterThan(mark);
    await second.feed.reach(K, mark);
    const after = history.readChanges(mark, 100).changes.map((c) => [c.resource.metadata.id, c.type, c.resource.metadata.version, c.old?.metadata.version]);
    expect(after).toEqual([
      ['a', 'updated', 2, 1],
      ['b', 'created', 1, undefined],
    ]);
    expect((await second.feed.listAt(K, mark)).map((r) => [r.metadata.id, r.spec])).toEqual([['a', { n: 1 }]]);
    // Another prefix is another history.
    const other = await EtcdStore.connect({ endpoints: e.endpoints, tls: tlsOf(e), prefix: `${prefix}other/` });
    opened.push(other);
    expect(other.feed.instance).not.toBe(first.feed.instance);
  });

  it('refuses plaintext off loopback and a prefix without a trailing slash, before connecting', async () => {
    await expect(EtcdStore.connect({ endpoints: ['http://10.0.0.1:2379'] })).rejects.toThrow(/plaintext is allowed only on loopback/);
    await expect(EtcdStore.connect({ endpoints: e.endpoints, tls: tlsOf(e), prefix: '/cosi' })).rejects.toThrow(/must end with "\/"/);
  });

  it('answers unavailable, within its call deadline, when etcd cannot be reached', async () => {
    // A loopback port nobody listens on.
    await expect(EtcdStore.connect({ endpoints: ['https://127.0.0.1:9'], tls: tlsOf(e), callTimeoutMs: 500 })).rejects.toThrow(/cannot reach etcd at https:\/\/127\.0\.0\.1:9/);
  });
});
