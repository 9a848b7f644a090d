// cosi-fleet with one replica in this process, on the run's etcd, following simulated nodes (node-sim/fleet) over
// real mTLS: the fleet view, a node's view (equal to the node's own answers, also while it is down), FleetNode
// states, node-list edits, floods, and a replica restart that resumes every node without listing it again.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connect, isCosiError, type CosiClient, type CosiResource, type WatchEvent } from '../client/index.js';
import { createLogger, silentLogger } from '../shared/log.js';
import { Fleet, type FleetOptions } from '../server/fleet/fleet.js';
import { TlsMaterial } from '../server/tls/material.js';
import { SimFleet } from '../node-sim/fleet/sim-fleet.js';
import { AT_ANNOTATION } from '../node-sim/fleet/sim-node.js';
import { eventually } from './harness.js';
import { HistoryChecker } from './soak/checker.js';

const etcd = inject('etcd');
/** A label query selecting one node's rows in the fleet view. */
const onNode = (node: string) => [{ terms: [{ key: 'cosi-pods.dev/node', op: 'equal' as const, values: [node] }] }];
const NODES = 12;
const PODS = 3;

describe.skipIf(etcd === null)('cosi-fleet, one replica', () => {
  const e = etcd as NonNullable<typeof etcd>;
  let dir: string;
  let sim: SimFleet;
  let fleet: Fleet;
  let client: CosiClient;
  const prefix = `/fleet-test-${process.pid}-${Date.now()}/`;

  const options = async (): Promise<FleetOptions> => ({
    listen: '127.0.0.1:0',
    tls: await TlsMaterial.load({ caFile: join(dir, 'ca.crt'), certFile: join(dir, 'server.crt'), keyFile: join(dir, 'server.key') }, silentLogger),
    follow: await TlsMaterial.load({ caFile: join(dir, 'ca.crt'), certFile: join(dir, 'fleet.crt'), keyFile: join(dir, 'fleet.key') }, silentLogger),
    nodesFile: sim.nodesFile,
    replica: 'solo',
    etcd: { endpoints: e.endpoints, tls: { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem }, prefix },
    leaseTtlSec: 2,
    maxBootstraps: 4,
    nodeRate: 20,
    unreachableAfterMs: 1000,
    statusIntervalMs: 1000,
    ...(process.env['FLEET_TEST_LOG'] === '1' ? { log: createLogger({ level: 'debug' }) } : {}),
  });
  const clientOf = (port: number): CosiClient =>
    connect({ endpoint: `127.0.0.1:${port}`, caPem: sim.pki.ca.certPem, certPem: sim.pki.fleet.certPem, keyPem: sim.pki.fleet.keyPem });
  const fleetNode = async (node: string): Promise<Record<string, unknown>> => (await client.get('fleetnode', node, { namespace: 'fleet' })).spec as Record<string, unknown>;
  const allFollowing = async (c: CosiClient, count: number): Promise<void> => {
    const nodes = await c.list('fleetnode', { namespace: 'fleet' });
    expect(nodes.filter((r) => (r.spec as { state?: string }).state === 'Following').length).toBe(count);
  };
  /** The sim's last version of every status equals the fleet's. */
  const caughtUp = async (c: CosiClient): Promise<void> => {
    const fleetVersions = new Map((await c.list('staticpodstatus')).map((r) => [r.metadata.id, r.metadata.version]));
    for (const n of sim.stats().nodes.slice(0, NODES)) {
      for (const [id, v] of Object.entries(n.versions)) expect(fleetVersions.get(`${n.name}/${id}`), `${n.name}/${id}`).toBe(v);
    }
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(process.env['COSI_TEST_TMP'] ?? tmpdir(), 'fleet-'));
    sim = await SimFleet.start({ nodes: NODES, pods: PODS, rate: 0, dir });
    fleet = await Fleet.start(await options());
    client = clientOf(fleet.port);
    await eventually(() => allFollowing(client, NODES), 30_000);
  }, 60_000);

  afterAll(async () => {
    client?.close();
    await fleet?.stop();
    await sim?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves every node in the fleet view: ids <node>/<id>, the node label, label queries by node', async () => {
    await eventually(() => caughtUp(client), 20_000);
    const statuses = await client.list('staticpodstatus');
    expect(statuses).toHaveLength(NODES * PODS);
    for (const r of statuses) {
      const node = r.metadata.labels['cosi-pods.dev/node'];
      expect(node).toMatch(/^sim-\d+$/);
      expect(r.metadata.id.startsWith(`${node}/`)).toBe(true);
    }
    const one = await client.list('staticpodstatus', { labelQuery: onNode('sim-3') });
    expect(one.map((r) => r.metadata.id).sort()).toEqual(Object.keys(sim.node('sim-3').stats().versions).map((id) => `sim-3/${id}`).sort());
    expect(await client.list('staticpods')).toHaveLength(NODES * PODS);
    expect(await client.list('machineconfigstatus', { namespace: 'config' })).toHaveLength(NODES);
  });

  it("answers with a node's own ids, versions, specs and encodings when the call names the node", async () => {
    const direct = connect({ endpoint: sim.node('sim-5').address, caPem: sim.pki.ca.certPem, certPem: sim.pki.fleet.certPem, keyPem: sim.pki.fleet.keyPem });
    try {
      const through = client.withNode('sim-5');
      await eventually(() => caughtUp(client), 20_000);
      const shape = (r: CosiResource) => ({ md: r.metadata, yaml: r.yamlSpec, proto: Buffer.from(r.protoSpec).toString('base64') });
      for (const type of ['staticpods', 'staticpodstatus']) {
        const mine = (await direct.list(type)).map(shape);
        expect((await through.list(type)).map(shape)).toEqual(mine);
        const first = (await direct.list(type))[0] as CosiResource;
        expect(shape(await through.get(type, first.metadata.id))).toEqual(shape(first));
      }
      expect(through.node).toBe('sim-5');
    } finally {
      direct.close();
    }
  });

  it('refuses machine calls without a node, relays them with one, and names an unknown node', async () => {
    const noNode = await client.containers().catch((err: unknown) => err);
    expect(isCosiError(noNode, 'failed-precondition') && noNode.message).toMatch(/this is a fleet endpoint: name a node/);
    // The simulated nodes serve no MachineService: the node's own answer comes back through the relay.
    const relayed = await client.withNode('sim-1').containers().catch((err: unknown) => err);
    expect(isCosiError(relayed, 'unimplemented')).toBe(true);
    const unknown = await client.withNode('sim-999').list('staticpodstatus').catch((err: unknown) => err);
    expect(isCosiError(unknown, 'not-found') && unknown.message).toMatch(/sim-999.*not in the fleet's node list/);
  });

  it('streams every change of every node once, in order, to a fleet watcher', async () => {
    const checker = new HistoryChecker('fleet', true);
    const stream = client.watchIter('staticpodstatus', { bootstrap: true });
    const seen: WatchEvent[] = [];
    const pump = (async () => {
      for await (const ev of stream) {
        checker.observe(ev);
        seen.push(ev);
      }
    })();
    await eventually(() => expect(checker.bootstrapped).toBe(1));
    for (let i = 0; i < NODES; i++) sim.bump(i, 3);
    await eventually(() => caughtUp(client), 20_000);
    await eventually(() => {
      for (const n of sim.stats().nodes.slice(0, NODES)) for (const [id, v] of Object.entries(n.versions)) expect(checker.view.get(`${n.name}/${id}`)?.version).toBe(v);
    });
    await stream.close();
    await pump;
    expect(checker.violations.map((v) => `${v.rule}: ${v.detail} (${v.event})`)).toEqual([]);
    const update = seen.find((ev) => ev.type === 'updated');
    expect(update?.resource?.metadata.annotations[AT_ANNOTATION]).toBeDefined();
    expect(update?.resource?.metadata.labels['cosi-pods.dev/node']).toMatch(/^sim-/);
  });

  it('keeps a node that goes down as last seen, says so in its FleetNode and its view, and resumes it without a re-list', async () => {
    const node = 'sim-7';
    await eventually(() => caughtUp(client), 20_000);
    const before = sim.node(node).stats().bootstraps;
    const rows = (await client.withNode(node).list('staticpodstatus')).map((r) => [r.metadata.id, r.metadata.version]);
    sim.down(node);
    await eventually(async () => expect((await fleetNode(node))['state']).toBe('Unreachable'), 15_000);
    expect((await fleetNode(node))['unreachableSince']).toEqual(expect.any(String));
    // Its rows stay, in both views, as last seen.
    expect((await client.withNode(node).list('staticpodstatus')).map((r) => [r.metadata.id, r.metadata.version])).toEqual(rows);
    expect(await client.list('staticpodstatus', { labelQuery: onNode(node) })).toHaveLength(PODS);
    sim.bump(node, 2);
    await sim.up(node);
    await eventually(async () => expect((await fleetNode(node))['state']).toBe('Following'), 20_000);
    await eventually(() => caughtUp(client), 20_000);
    // Resumed from its bookmark: the node was never asked for a bootstrap again.
    expect(sim.node(node).stats().bootstraps).toBe(before);
  });

  it('follows a node added to the list within seconds, and removes a node taken off it', async () => {
    const added = await sim.addNode();
    await eventually(async () => expect(await client.list('staticpodstatus', { labelQuery: onNode(added.name) })).toHaveLength(PODS), 20_000);
    // Take it off the list again: its rows, FleetNode and bookmarks go.
    const text = await readFile(sim.nodesFile, 'utf8');
    const without = text.split('\n  - ').filter((entry) => !entry.includes(`name: ${added.name}\n`)).join('\n  - ');
    expect(without).not.toContain(added.name);
    await writeFile(sim.nodesFile, without);
    await eventually(async () => expect(await client.list('staticpodstatus', { labelQuery: onNode(added.name) })).toHaveLength(0), 20_000);
    await eventually(async () => expect(await client.get('fleetnode', added.name, { namespace: 'fleet' }).catch((err: unknown) => isCosiError(err, 'not-found'))).toBe(true));
  });

  it('throttles a node that floods, and the other nodes keep flowing', async () => {
    const flooder = 'sim-2';
    sim.flood(flooder, 300);
    try {
      await eventually(async () => expect((await fleetNode(flooder))['state']).toBe('Throttled'), 20_000);
      sim.bump('sim-4', 1);
      const want = sim.node('sim-4').stats().versions;
      await eventually(async () => {
        const got = new Map((await client.withNode('sim-4').list('staticpodstatus')).map((r) => [r.metadata.id, r.metadata.version]));
        for (const [id, v] of Object.entries(want)) expect(got.get(id)).toBe(v);
      }, 10_000);
    } finally {
      sim.flood(flooder, 0);
    }
    // Once calm, the flooder's last state is in the fleet.
    await eventually(() => caughtUp(client), 30_000);
  });

  it('backs off a node that flaps, resuming it each time without a re-list, and the others keep flowing', async () => {
    const flapper = 'sim-6';
    await eventually(() => caughtUp(client), 20_000);
    const before = sim.node(flapper).stats();
    sim.flap(flapper, 300);
    try {
      for (let round = 0; round < 5; round++) {
        sim.bump(flapper, 1);
        sim.bump('sim-8', 1);
        const want = sim.node('sim-8').stats().versions;
        await eventually(async () => {
          const got = new Map((await client.withNode('sim-8').list('staticpodstatus')).map((r) => [r.metadata.id, r.metadata.version]));
          for (const [id, v] of Object.entries(want)) expect(got.get(id)).toBe(v);
        }, 10_000);
      }
    } finally {
      sim.flap(flapper, 0);
    }
    await eventually(async () => expect((await fleetNode(flapper))['state']).toBe('Following'), 20_000);
    await eventually(() => caughtUp(client), 20_000);
    // Every reconnect resumed from a bookmark: the flapping node was never listed again.
    expect(sim.node(flapper).stats().bootstraps).toBe(before.bootstraps);
  });

  it('a restarted replica resumes every node from its bookmarks: no re-list, nothing missed', async () => {
    await eventually(() => caughtUp(client), 20_000);
    const bootstraps = sim.stats().bootstraps;
    client.close();
    await fleet.stop();
    for (let i = 0; i < NODES; i++) sim.bump(i, 1);
    fleet = await Fleet.start(await options());
    client = clientOf(fleet.port);
    await eventually(() => allFollowing(client, NODES), 30_000);
    await eventually(() => caughtUp(client), 20_000);
    expect(sim.stats().bootstraps).toBe(bootstraps);
    expect(sim.stats().overruns).toBe(0);
    expect(fleet.followers.stats().bootstrapsMax).toBeLessThanOrEqual(4);
  });

  it('cleans up a node taken off the list while no replica ran', async () => {
    const gone = `sim-${NODES - 1}`;
    client.close();
    await fleet.stop();
    const text = await readFile(sim.nodesFile, 'utf8');
    await writeFile(sim.nodesFile, text.split('\n  - ').filter((entry) => !entry.includes(`name: ${gone}\n`)).join('\n  - '));
    fleet = await Fleet.start(await options());
    client = clientOf(fleet.port);
    await eventually(async () => expect(await client.list('staticpodstatus', { labelQuery: onNode(gone) })).toHaveLength(0), 20_000);
    await eventually(async () => expect(await client.get('fleetnode', gone, { namespace: 'fleet' }).catch((err: unknown) => isCosiError(err, 'not-found'))).toBe(true));
    expect((await client.list('fleetnode', { namespace: 'fleet' })).map((r) => r.metadata.id)).not.toContain(gone);
  });
});
