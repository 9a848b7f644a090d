// Replica membership and node ownership (server/fleet/membership.ts, ownership.ts) on the run's real etcd: three
// replicas in this process, each with its own etcd client (its own connection, as separate processes would have),
// a lease TTL of 2 s, and a key prefix of its own per test. Nothing waits on time: each step waits for the event or
// the state it needs, within the test's timeout.
import type { Etcd3 } from 'etcd3';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { K8S_NAMESPACE, STATIC_POD_STATUS_TYPE, STATIC_POD_TYPE } from '../server/resources/k8s.js';
import { FleetKeys, MIRRORED_KINDS } from '../server/fleet/keys.js';
import { Membership } from '../server/fleet/membership.js';
import { mirrorDigest } from '../server/fleet/mirror.js';
import { encodeMirrored } from '../server/store/etcd/codec.js';
import { Ownership } from '../server/fleet/ownership.js';
import { decodeBookmarkValue, encodeBookmarkValue } from '../server/fleet/bookmark-value.js';
import { etcdClient } from '../server/store/etcd/client.js';
import { createLogger } from '../shared/log.js';
import { eventually } from './harness.js';

const etcd = inject('etcd');
const TTL = 2;
const INFO = { address: '127.0.0.1:50001', startedAt: 0, version: 'test' };

/** What each test opened, closed after it in reverse order. */
let opened: (() => unknown)[] = [];
afterEach(async () => {
  for (const close of opened.reverse()) await close();
  opened = [];
});

describe.skipIf(etcd === null)('fleet membership and ownership', () => {
  const e = etcd as NonNullable<typeof etcd>;
  const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };

  const newClient = (): Etcd3 => {
    const c = etcdClient(e.endpoints, tls, 5000);
    opened.push(() => c.close());
    return c;
  };
  const newKeys = () => new FleetKeys(`/test-fleet-${randomBytes(6).toString('hex')}/`);

  interface Replica {
    name: string;
    client: Etcd3;
    membership: Membership;
    ownership: Ownership;
  }
  const startReplica = async (keys: FleetKeys, name: string): Promise<Replica> => {
    const client = newClient();
    const membership = await Membership.join(client, keys, name, TTL, INFO);
    opened.push(() => membership.close());
    const ownership = new Ownership(client, keys, membership);
    opened.push(() => ownership.close());
    await Promise.all([membership.ready, ownership.ready]);
    return { name, client, membership, ownership };
  };
  const startReplicas = (keys: FleetKeys, names: string[]) => Promise.all(names.map((n) => startReplica(keys, n)));

  it('sees every live replica, and each node is acquired exactly once across three', async () => {
    const keys = newKeys();
    const replicas = await startReplicas(keys, ['r-a', 'r-b', 'r-c']);
    for (const r of replicas) await eventually(() => expect(r.membership.replicas()).toEqual(['r-a', 'r-b', 'r-c']));

    const nodes = Array.from({ length: 30 }, (_, i) => `node-${i}`);
    // Every replica races for every node at once.
    const attempts = await Promise.all(nodes.flatMap((n) => replicas.map(async (r) => ({ node: n, replica: r.name, got: await r.ownership.acquire(n) }))));
    const won = attempts.filter((a) => a.got !== undefined);
    expect(won.map((a) => a.node).sort()).toEqual([...nodes].sort());
    const tokens = new Set(won.map((a) => a.got?.token));
    expect(tokens.size).toBe(nodes.length);

    // Every replica's view agrees with the winners, and each holds exactly what it won.
    for (const r of replicas) {
      await eventually(() => {
        for (const w of won) expect(r.ownership.owners().get(w.node)).toEqual({ replica: w.replica, createRevision: w.got?.token });
      });
      expect(new Map(r.ownership.held())).toEqual(new Map(won.filter((w) => w.replica === r.name).map((w) => [w.node, w.got?.token])));
    }
  });

  it('a replica that leaves: its owner keys go with its lease, and another acquires its nodes under higher tokens', async () => {
    const keys = newKeys();
    const [a, b] = await startReplicas(keys, ['r-a', 'r-b']);
    if (a === undefined || b === undefined) throw new Error('two replicas');
    const got = await Promise.all(['n1', 'n2', 'n3'].map((n) => a.ownership.acquire(n)));
    expect(got.every((x) => x !== undefined)).toBe(true);
    expect(await b.ownership.acquire('n1')).toBeUndefined();
    await eventually(() => expect(b.ownership.owners().size).toBe(3));

    await a.membership.close();
    await eventually(() => {
      expect(b.membership.replicas()).toEqual(['r-b']);
      expect(b.ownership.owners().size).toBe(0);
    });
    for (const old of got) {
      const taken = await b.ownership.acquire(old?.node as string);
      expect(taken).toBeDefined();
      expect(BigInt(taken?.token as string)).toBeGreaterThan(BigInt(old?.token as string));
    }
  });

  it("acquire reads the node's bookmarks, its stored resources' digests and its FleetNode in the acquiring transaction", async () => {
    const keys = newKeys();
    const [a] = await startReplicas(keys, ['r-a']);
    if (a === undefined) throw new Error('one replica');
    const pods = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };
    const statuses = { namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE };
    const md = (version: number) => ({ version, owner: '', phase: 'running' as const, created: new Date(1000), updated: new Date(2000), labels: { app: 'web' }, annotations: {}, finalizers: [] });
    const podValue = encodeMirrored(md(3), '{"a":1}', '41');
    const statusValue = encodeMirrored(md(9), '{"ready":true}', '41');
    const fleetNodeValue = 'cosi-resource/1\n{}\n{}';
    const podBookmark = new Uint8Array([1, 2, 3, 250]);
    // node-1's, and a node whose name starts with "node-1" that must not be read with it.
    await a.client.put(keys.resource(pods, 'node-1', 'kube-system/web')).value(podValue);
    await a.client.put(keys.resource(statuses, 'node-1', 'kube-system/web')).value(statusValue);
    await a.client.put(keys.resource(pods, 'node-10', 'other')).value(podValue);
    await a.client.put(keys.bookmark('node-1', STATIC_POD_TYPE)).value(encodeBookmarkValue('41', podBookmark));
    await a.client.put(keys.bookmark('node-1', STATIC_POD_STATUS_TYPE)).value('not json');
    await a.client.put(keys.bookmark('node-10', STATIC_POD_TYPE)).value(encodeBookmarkValue('41', new Uint8Array([9])));
    await a.client.put(keys.fleetNode('node-1')).value(fleetNodeValue);

    const got = await a.ownership.acquire('node-1');
    if (got === undefined) throw new Error('node-1 was free');
    // A bookmark that does not decode is left out: the kind is listed again.
    expect(got.bookmarks).toEqual(new Map([[STATIC_POD_TYPE, podBookmark]]));
    expect(got.written).toEqual(
      new Map(
        MIRRORED_KINDS.map((k) => [
          k.type,
          k.type === STATIC_POD_TYPE ? new Map([['kube-system/web', mirrorDigest(podValue)]]) : k.type === STATIC_POD_STATUS_TYPE ? new Map([['kube-system/web', mirrorDigest(statusValue)]]) : new Map(),
        ]),
      ),
    );
    expect(got.fleetNode).toBe(fleetNodeValue);
    // The token is the owner key's create_revision, which is the transaction's own revision.
    const owner = await a.client.kv.range({ key: Buffer.from(keys.owner('node-1')) });
    expect(owner.kvs[0]?.create_revision).toBe(got.token);
    expect(owner.kvs[0]?.value.toString()).toBe('r-a');
    expect(owner.kvs[0]?.lease).toBe(a.membership.leaseId);

    const empty = await a.ownership.acquire('node-2');
    expect(empty?.bookmarks.size).toBe(0);
    expect(empty?.fleetNode).toBeUndefined();
    expect([...(empty?.written.values() ?? [])].every((m) => m.size === 0)).toBe(true);
    expect(decodeBookmarkValue(encodeBookmarkValue('5', podBookmark))?.bookmark).toEqual(podBookmark);
  });

  it('releases a node only under its own token', async () => {
    const keys = newKeys();
    const [a, b] = await startReplicas(keys, ['r-a', 'r-b']);
    if (a === undefined || b === undefined) throw new Error('two replicas');
    const lost: string[] = [];
    a.ownership.on('lostOwnership', (n) => lost.push(n));
    const got = await a.ownership.acquire('n1');
    if (got === undefined) throw new Error('n1 was free');

    expect(await a.ownership.release({ ...got, token: String(BigInt(got.token) - 1n) })).toBe(false);
    expect(await b.ownership.release(got)).toBe(true); // the token, not the replica, is what the fence compares
    // Taken away by b's release: lost.
    await eventually(() => expect(lost).toEqual(['n1']));

    const again = await a.ownership.acquire('n1');
    if (again === undefined) throw new Error('n1 was released');
    expect(await a.ownership.release(got)).toBe(false);
    await eventually(() => expect(b.ownership.owners().get('n1')?.createRevision).toBe(again.token));
    expect(await a.ownership.release(again)).toBe(true);
    await eventually(() => expect(a.ownership.owners().has('n1')).toBe(false));
    expect(a.ownership.held().size).toBe(0);
    // Released by a itself: not lost.
    expect(lost).toEqual(['n1']);
  });

  it('a replica whose lease is revoked from outside reports lost, loses its nodes, and joins again under a new lease', async () => {
    const keys = newKeys();
    const [a, b] = await startReplicas(keys, ['r-a', 'r-b']);
    if (a === undefined || b === undefined) throw new Error('two replicas');
    const got = await Promise.all(['n1', 'n2'].map((n) => a.ownership.acquire(n)));
    const lostNodes: [string, string][] = [];
    a.ownership.on('lostOwnership', (n, t) => lostNodes.push([n, t]));
    const oldLease = a.membership.leaseId;
    const lost = once(a.membership, 'lost');
    const rejoined = once(a.membership, 'rejoined');

    // As etcd does when the lease expires: from another client, so a's keepalive learns it from etcd.
    await b.client.leaseClient.leaseRevoke({ ID: oldLease });
    await lost;
    expect(lostNodes.sort()).toEqual(got.map((g) => [g?.node, g?.token]).sort());
    expect(a.membership.live).toBe(false);
    await expect(a.ownership.acquire('n3')).rejects.toMatchObject({ kind: 'unavailable' });

    const [newLease] = (await rejoined) as [string];
    expect(newLease).not.toBe(oldLease);
    expect(a.membership.leaseId).toBe(newLease);
    await eventually(() => expect(b.membership.replicas()).toEqual(['r-a', 'r-b']));
    const back = await a.ownership.acquire('n1');
    expect(BigInt(back?.token as string)).toBeGreaterThan(BigInt(got[0]?.token as string));
  });

  it('waits for an earlier incarnation of its name to go, and fails when it stays', async () => {
    const keys = newKeys();
    const client = newClient();
    // An earlier incarnation: the key on a lease of its own.
    const earlier = client.lease(30, { autoKeepAlive: false });
    opened.push(() => earlier.revoke());
    await earlier.put(keys.replica('r-a')).value('{}');

    await expect(Membership.join(client, keys, 'r-a', 1, INFO)).rejects.toMatchObject({ kind: 'already-exists', message: expect.stringContaining('r-a') });

    // It goes while the new one waits: the join goes through.
    const lines: string[] = [];
    let waiting!: () => void;
    const isWaiting = new Promise<void>((r) => (waiting = r));
    const log = createLogger({
      level: 'debug',
      write: (line) => {
        lines.push(line);
        if (line.includes('waiting for it to go')) waiting();
      },
    });
    const joining = Membership.join(client, keys, 'r-a', TTL, INFO, { log });
    await isWaiting;
    await earlier.revoke();
    const m = await joining;
    opened.push(() => m.close());
    await m.ready;
    expect(m.replicas()).toEqual(['r-a']);
  });
});
