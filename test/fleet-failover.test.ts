// Three cosi-fleet replicas (processes) on a three-member etcd, following simulated nodes: a watcher through one
// replica sees every change once, in order (the soak's history checker), while the replica that follows a node is
// killed and while an etcd member is stopped; a fleet watch resumes on another replica from its bookmark; a paused
// replica (SIGSTOP past its lease) writes nothing once it wakes.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, type IKeyValue } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type CosiClient, type WatchEvent, type WatchStream } from '../client/index.js';
import { SimFleet } from '../node-sim/fleet/sim-fleet.js';
import { etcdPrerequisites, startEtcdCluster, type EtcdCluster } from './etcd/cluster.js';
import { startReplica, type Replica } from './fleet-replicas.js';
import { eventually } from './harness.js';
import { HistoryChecker } from './soak/checker.js';

const NODES = 24;
const PODS = 2;
const PREFIX = '/fleet-failover/';
const available = process.env['COSI_TEST_ETCD'] !== 'off' && etcdPrerequisites().ok;

describe.skipIf(!available)('cosi-fleet, three replicas on a three-member etcd', () => {
  let dir: string;
  let cluster: EtcdCluster;
  let sim: SimFleet;
  let raw: Etcd3;
  const replicas = new Map<string, Replica>();
  const clients = new Map<string, CosiClient>();

  const start = async (name: string): Promise<Replica> => {
    const r = await startReplica({ name, pki: dir, nodesFile: sim.nodesFile, etcd: { endpoints: cluster.endpoints, caFile: cluster.client.caFile, certFile: cluster.client.certFile, keyFile: cluster.client.keyFile }, prefix: PREFIX });
    replicas.set(name, r);
    clients.get(name)?.close();
    clients.set(name, connect({ endpoint: `127.0.0.1:${r.port}`, caPem: sim.pki.ca.certPem, certPem: sim.pki.fleet.certPem, keyPem: sim.pki.fleet.keyPem }));
    return r;
  };
  const client = (name: string): CosiClient => clients.get(name) as CosiClient;
  const owner = async (via: string, node: string): Promise<{ replica: string; state: string }> => {
    const spec = (await client(via).get('fleetnode', node, { namespace: 'fleet' })).spec as { replica: string; state: string };
    return { replica: spec.replica, state: spec.state };
  };
  const allFollowing = async (via: string): Promise<void> => {
    const nodes = await client(via).list('fleetnode', { namespace: 'fleet' });
    expect(nodes.filter((r) => (r.spec as { state?: string }).state === 'Following').length).toBe(NODES);
  };
  /** The checker's view holds the sim's last version of every status. */
  const seenAll = (checker: HistoryChecker): void => {
    for (const n of sim.stats().nodes) for (const [id, v] of Object.entries(n.versions)) expect(checker.view.get(`${n.name}/${id}`)?.version, `${n.name}/${id}`).toBe(v);
  };
  /** A checked fleet watch through one replica. */
  const watchThrough = (via: string, opts: { fromBookmark?: Uint8Array } = {}) => {
    const checker = new HistoryChecker(`via ${via}`, opts.fromBookmark === undefined);
    const events: WatchEvent[] = [];
    const stream: WatchStream = client(via).watchIter('staticpodstatus', opts.fromBookmark === undefined ? { bootstrap: true } : { fromBookmark: opts.fromBookmark });
    const done = (async () => {
      for await (const e of stream) {
        checker.observe(e);
        events.push(e);
      }
    })();
    return { checker, events, close: async () => { await stream.close(); await done; } };
  };
  const violations = (c: HistoryChecker) => c.violations.map((v) => `${v.rule}: ${v.detail} (${v.event})`);

  beforeAll(async () => {
    dir = await mkdtemp(join(process.env['COSI_TEST_TMP'] ?? tmpdir(), 'fleet-failover-'));
    cluster = await startEtcdCluster({ size: 3 });
    raw = new Etcd3({ hosts: cluster.endpoints, credentials: { rootCertificate: Buffer.from(cluster.client.caPem), certChain: Buffer.from(cluster.client.certPem), privateKey: Buffer.from(cluster.client.keyPem) }, grpcOptions: { 'grpc.ssl_target_name_override': 'localhost' } });
    sim = await SimFleet.start({ nodes: NODES, pods: PODS, rate: 0, dir });
    await Promise.all(['r1', 'r2', 'r3'].map((n) => start(n)));
    await eventually(() => allFollowing('r1'), 60_000);
  }, 120_000);

  afterAll(async () => {
    for (const c of clients.values()) c.close();
    await Promise.all([...replicas.values()].map((r) => r.stop()));
    await sim?.stop();
    raw?.close();
    await cluster?.close();
    await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('spreads the nodes over the replicas, one owner each', async () => {
    const owners = await client('r2').list('fleetnode', { namespace: 'fleet' });
    const counts = new Map<string, number>();
    for (const r of owners) counts.set((r.spec as { replica: string }).replica, (counts.get((r.spec as { replica: string }).replica) ?? 0) + 1);
    expect([...counts.keys()].sort()).toEqual(['r1', 'r2', 'r3']);
    const keys = await raw.getAll().prefix(`${PREFIX}owners/`).keys();
    expect(keys).toHaveLength(NODES);
  });

  it('a watcher on another replica sees every change once, in order, while the follower of a node is killed and while an etcd member is down', async () => {
    const victim = (await raw.get(`${PREFIX}owners/sim-0`).string()) as string;
    expect(['r1', 'r2', 'r3']).toContain(victim);
    const via = ['r1', 'r2', 'r3'].find((n) => n !== victim) as string;
    const w = watchThrough(via);
    await eventually(() => expect(w.checker.bootstrapped).toBe(1));
    sim.setRate(60);
    await eventually(() => expect(w.events.filter((e) => e.type === 'updated').length).toBeGreaterThan(30), 20_000);
    replicas.get(victim)?.signal('SIGKILL');
    await replicas.get(victim)?.exited;
    // Its nodes are taken over once its lease expires, resumed from the bookmarks it committed.
    await eventually(async () => {
      const o = await owner(via, 'sim-0');
      expect(o.replica).not.toBe(victim);
      expect(o.state).toBe('Following');
    }, 30_000);
    const before = w.events.length;
    await eventually(() => expect(w.events.length).toBeGreaterThan(before + 30), 20_000);
    // One etcd member stopped (not necessarily the leader): the fleet keeps writing and serving.
    await cluster.stop(2);
    const during = w.events.length;
    await eventually(() => expect(w.events.length).toBeGreaterThan(during + 30), 30_000);
    sim.setRate(0);
    await eventually(() => seenAll(w.checker), 30_000);
    await w.close();
    expect(violations(w.checker)).toEqual([]);
    await cluster.start(2);
    await start(victim);
    await eventually(() => allFollowing(via), 30_000);
  }, 180_000);

  it('resumes a fleet watch on another replica from the bookmark of the first', async () => {
    const a = watchThrough('r1');
    await eventually(() => expect(a.checker.bootstrapped).toBe(1));
    sim.bump('sim-3', 2);
    await eventually(() => seenAll(a.checker), 20_000);
    await a.close();
    const bookmark = [...a.events].reverse().find((e) => e.bookmark !== undefined)?.bookmark;
    expect(bookmark).toBeDefined();
    sim.bump('sim-4', 3);
    const b = watchThrough('r3', { fromBookmark: bookmark as Uint8Array });
    await eventually(() => {
      const ids = b.events.filter((e) => e.type === 'updated').map((e) => e.resource?.metadata.id);
      expect(ids.filter((id) => id?.startsWith('sim-4/'))).toHaveLength(3);
    }, 20_000);
    await b.close();
    // Only what came after the bookmark: nothing of sim-3's earlier changes again, nothing created.
    expect(b.events.filter((e) => e.resource?.metadata.id.startsWith('sim-3/'))).toEqual([]);
    expect(b.events.filter((e) => e.type === 'created')).toEqual([]);
    expect(violations(b.checker)).toEqual([]);
  }, 60_000);

  it('a replica paused past its lease writes nothing once it wakes', async () => {
    const node = 'sim-5';
    const ownerKey = `${PREFIX}owners/${node}`;
    // The owner key says who owns the node (its FleetNode may lag behind a handover).
    const held = (await raw.get(ownerKey).exec()).kvs[0];
    expect(held).toBeDefined();
    const paused = held?.value.toString('utf8') as string;
    const oldToken = held?.create_revision;
    const other = ['r1', 'r2', 'r3'].find((n) => n !== paused) as string;
    const r = replicas.get(paused) as Replica;
    let since = 0;
    r.signal('SIGSTOP');
    try {
      // Changes it will find waiting on its connections when it wakes.
      sim.bump(node, 3);
      await eventually(async () => expect((await raw.get(ownerKey).exec()).kvs[0]?.create_revision ?? oldToken).not.toBe(oldToken), 30_000);
      sim.bump(node, 3);
      since = Number((await raw.get(ownerKey).exec()).header.revision);
    } finally {
      r.signal('SIGCONT');
    }
    // Awake: it learns its lease is gone (or a write is fenced) and lets the node go.
    await eventually(async () => expect(await r.metric('fleet_fenced_total')).toBeGreaterThan(0), 30_000);
    await eventually(async () => expect((await client(other).get('fleetnode', node, { namespace: 'fleet' })).spec).toMatchObject({ state: 'Following' }), 20_000);
    // Everything written under the fleet's prefix since then: nothing under the paused replica's old token.
    const marker = await raw.put(`${PREFIX}test-marker`).value('x').exec();
    const written = await changesBetween(raw, PREFIX, since, Number(marker.header.revision));
    const tokenOf = (kv: IKeyValue) => {
      const text = kv.value.toString('utf8');
      if (text.startsWith('cosi-mirror/1 ')) return text.slice('cosi-mirror/1 '.length, text.indexOf('\n'));
      if (text.startsWith('{"w":')) return (JSON.parse(text) as { w: string }).w;
      return undefined;
    };
    expect(written.length).toBeGreaterThan(0);
    expect(written.filter((kv) => tokenOf(kv) === oldToken).map((kv) => kv.key.toString('utf8'))).toEqual([]);
  }, 90_000);

  it('replicas stop on SIGTERM even when etcd is gone (writes still pending are refused after the grace period)', async () => {
    sim.setRate(60);
    await Promise.all([0, 1, 2].map((i) => cluster.stop(i)));
    sim.bump('sim-1', 5);
    const codes = await Promise.all([...replicas.values()].map(async (r) => {
      r.signal('SIGTERM');
      return r.exited;
    }));
    sim.setRate(0);
    expect(codes).toEqual([0, 0, 0]);
  }, 90_000);
});

/** Every put under `prefix` with a revision in (after, through], from etcd's history (a watch from after + 1). */
async function changesBetween(client: Etcd3, prefix: string, after: number, through: number): Promise<IKeyValue[]> {
  const puts: IKeyValue[] = [];
  const w = await client.watch().prefix(prefix).startRevision(String(after + 1)).create();
  try {
    await new Promise<void>((resolve, reject) => {
      w.on('put', (kv) => {
        if (Number(kv.mod_revision) <= through) puts.push(kv);
        if (Number(kv.mod_revision) >= through) resolve();
      });
      w.on('error', reject);
    });
  } finally {
    await w.cancel();
  }
  return puts;
}
