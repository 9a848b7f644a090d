// Review: a foreign transaction that changes several keys of one kind at one etcd revision. The README promises
// they are "delivered as several events with the same revision"; the kind's watch cache keeps only the first.
import { Etcd3 } from 'etcd3';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { EtcdStore } from '../server/store/etcd.js';
import type { Change } from '../server/store/store.js';

const etcd = inject('etcd');
const opened: { close(): unknown }[] = [];
afterAll(async () => {
  for (const c of opened.reverse()) await c.close();
});

describe.skipIf(etcd === null)('review: several keys of one kind at one revision', () => {
  const e = etcd as NonNullable<typeof etcd>;
  const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };

  it('keeps every key of a multi-key transaction in the kind state and history', async () => {
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const store = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(store);
    const raw = new Etcd3({ hosts: e.endpoints, credentials: { rootCertificate: Buffer.from(tls.caPem), certChain: Buffer.from(tls.certPem), privateKey: Buffer.from(tls.keyPem) } });
    opened.push(raw);
    const K = { namespace: 'ns', type: 'Things.test.dev' };
    const history = await store.feed.history(K);
    const seen: Change[] = [];
    history.subscribe({ committed: (c) => seen.push(c) });
    // Two resources written by cosid, then copied by a script in one transaction (a restore, a migration).
    await store.create({ ...K, id: 'a', spec: { n: 1 } }, 'me');
    const a = await raw.get(store.keyOf({ ...K, id: 'a' })).buffer();
    expect(a).not.toBeNull();
    await raw.if(store.keyOf({ ...K, id: 'x' }), 'Create', '==', 0)
      .then(raw.put(store.keyOf({ ...K, id: 'b' })).value(a as Buffer), raw.put(store.keyOf({ ...K, id: 'c' })).value(a as Buffer))
      .commit();
    await store.feed.sync(K);
    // The authoritative list has a, b, c; the watch cache (served to Get/List/Watch) must too.
    expect((await store.list(K)).map((r) => r.metadata.id)).toEqual(['a', 'b', 'c']);
    expect(seen.map((c) => c.resource.metadata.id)).toEqual(['a', 'b', 'c']);
    expect(history.list().map((r) => r.metadata.id)).toEqual(['a', 'b', 'c']);
  });
});
