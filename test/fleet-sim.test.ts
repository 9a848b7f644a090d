// The fleet simulator (node-sim/fleet): many nodes in one process, each cosid's State API over real mTLS from its own
// store. A library client, with the certificate a fleet follows nodes with, watches one node through churn, a down
// and an up; the forked process answers its IPC operations.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type CosiClient, type WatchEvent, type WatchStream } from '../client/index.js';
import { isCosiError } from '../shared/errors.js';
import { parseNodeList } from '../server/api/node-directory.js';
import { STATIC_POD_STATUS_TYPE, STATIC_POD_TYPE } from '../server/resources/k8s.js';
import { AT_ANNOTATION, forkSimFleet, SimFleet } from '../node-sim/fleet/main.js';
import { eventually } from './harness.js';

const tmpRoot = () => process.env['COSI_TEST_TMP'] ?? tmpdir();

/** Reads events until `done` says so, leaving the stream open; fails with what was seen when it ends first. */
async function readUntil(stream: WatchStream, done: (seen: WatchEvent[]) => boolean): Promise<WatchEvent[]> {
  const seen: WatchEvent[] = [];
  for (;;) {
    const next = await stream.next();
    if (next.done === true) throw new Error(`the watch ended after ${seen.length} events: ${seen.map((e) => e.type).join(', ')}`);
    seen.push(next.value);
    if (done(seen)) return seen;
  }
}

const restarts = (e: WatchEvent): number => {
  const spec = e.resource?.spec as { containerStatuses?: { restartCount?: number }[] } | undefined;
  return spec?.containerStatuses?.[0]?.restartCount ?? -1;
};

describe('fleet simulator, in process: 50 nodes', () => {
  let dir: string;
  let fleet: SimFleet;
  let client: CosiClient;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpRoot(), 'cosi-fleet-sim-'));
    // 100 changes/s over 50 nodes: about 2 per second on each.
    fleet = await SimFleet.start({ nodes: 50, pods: 3, rate: 100, dir });
    const node = fleet.node(7);
    client = connect({ endpoint: node.address, caPem: fleet.pki.ca.certPem, certPem: fleet.pki.fleet.certPem, keyPem: fleet.pki.fleet.keyPem });
  });

  afterAll(async () => {
    client?.close();
    await fleet?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('writes nodes.yaml as the node directory reads it, and the PKI files', async () => {
    const nodes = parseNodeList(await readFile(fleet.nodesFile, 'utf8'), fleet.nodesFile, 50000);
    expect(nodes).toHaveLength(50);
    expect(nodes[7]).toEqual({ name: 'sim-7', address: fleet.node(7).address });
    expect(new Set(nodes.map((n) => n.address)).size).toBe(50);
    for (const f of ['ca.crt', 'server.crt', 'server.key', 'fleet.crt', 'fleet.key']) expect((await readFile(join(dir, f), 'utf8')).length).toBeGreaterThan(0);
  });

  it('serves the seeded pods and statuses with the node name in cosi-node; churn events carry the write time', async () => {
    const pods = await client.list(STATIC_POD_TYPE);
    expect(pods.map((p) => p.metadata.id)).toEqual(['kube-system-app-0', 'kube-system-app-1', 'kube-system-app-2']);
    expect(client.node).toBe('sim-7');
    expect((await client.definitions()).map((d) => d.type)).toContain('MachineConfigStatuses.config.cosi-pods.dev');

    const before = fleet.node(7).stats().bootstraps;
    const stream = client.watchIter(STATIC_POD_STATUS_TYPE, { bootstrap: true, reconnect: false });
    const seen = await readUntil(stream, (s) => s.some((e) => e.type === 'bootstrapped') && s.some((e) => e.type === 'updated'));
    await stream.close();
    const boot = seen.filter((e) => e.type === 'created').map((e) => e.resource?.metadata.id);
    expect(boot).toEqual(['kube-system/app-0-sim-7', 'kube-system/app-1-sim-7', 'kube-system/app-2-sim-7']);
    const update = seen.find((e) => e.type === 'updated') as WatchEvent;
    const at = Number(update.resource?.metadata.annotations[AT_ANNOTATION]);
    expect(at).toBeGreaterThan(Date.now() - 60_000);
    expect(at).toBeLessThanOrEqual(Date.now());
    expect(restarts(update)).toBeGreaterThan(0);
    // The sim counted the bootstrap, and its versions are the ones served.
    const stats = fleet.node(7).stats();
    expect(stats.bootstraps).toBe(before + 1);
    const id = update.resource?.metadata.id as string;
    expect(stats.versions[id]).toBeGreaterThanOrEqual(update.resource?.metadata.version as number);
  });

  it('down: calls fail UNAVAILABLE; up: a watch resumed from the last bookmark gets the changes made meanwhile, with no new bootstrap', async () => {
    const node = fleet.node(7);
    const stream = client.watchIter(STATIC_POD_STATUS_TYPE, { bootstrap: true, reconnect: false });
    // Some events after the bootstrap, each with a bookmark.
    const seen = await readUntil(stream, (s) => s.some((e) => e.type === 'bootstrapped') && s.filter((e) => e.type === 'updated').length >= 2);
    const bootstraps = node.stats().bootstraps;

    fleet.down(7);
    // The open watch ends with UNAVAILABLE: read on until it does.
    const ended = await (async () => {
      try {
        for await (const e of stream) seen.push(e);
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    expect(isCosiError(ended, 'unavailable'), String(ended)).toBe(true);
    const err = await client.get(STATIC_POD_STATUS_TYPE, 'kube-system/app-0-sim-7').catch((e: unknown) => e);
    expect(isCosiError(err, 'unavailable'), String(err)).toBe(true);
    // The node's hub let go of the cut watch.
    await eventually(() => expect(node.hub.stats().sessions).toBe(0));

    // Changes while the fleet cannot see the node: they wait in its history.
    const last = [...seen].reverse().find((e) => e.bookmark !== undefined) as WatchEvent;
    expect(last).toBeDefined();
    const lastSeen = new Map<string, number>();
    for (const e of seen) if (e.resource !== undefined) lastSeen.set(e.resource.metadata.id, e.resource.metadata.version);
    fleet.bump(7, 6);
    const meanwhile = node.stats().versions;
    const changed = Object.entries(meanwhile).filter(([id, v]) => v > (lastSeen.get(id) ?? 0));
    expect(changed.length).toBeGreaterThan(0);

    await fleet.up(7);
    expect(fleet.node(7).address).toBe(node.address);
    // The client's connection is in its backoff after the refusals: the watch retries until it is back.
    const resumed = client.watchIter(STATIC_POD_STATUS_TYPE, { fromBookmark: last.bookmark as Uint8Array, reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } });
    const got = new Map<string, number>();
    await readUntil(resumed, (s) => {
      const e = s[s.length - 1];
      if (e?.resource !== undefined) got.set(e.resource.metadata.id, e.resource.metadata.version);
      return changed.every(([id, v]) => (got.get(id) ?? 0) >= v);
    });
    await resumed.close();
    expect(node.stats().bootstraps).toBe(bootstraps);
    expect(node.stats().overruns).toBe(0);
  });
});

describe('fleet simulator, forked: IPC operations', () => {
  it('answers stats, memory, down/up, setRate, flood, flap and addNode (appended to nodes.yaml)', async () => {
    const dir = await mkdtemp(join(tmpRoot(), 'cosi-fleet-sim-'));
    const sim = await forkSimFleet({ nodes: 3, pods: 2, rate: 0, dir, logLevel: 'warn' });
    try {
      expect(sim.ready.nodes).toBe(3);
      const stats = await sim.call('stats');
      expect(stats.nodes.map((n) => [n.name, n.up, Object.keys(n.versions).length])).toEqual([
        ['sim-0', true, 2],
        ['sim-1', true, 2],
        ['sim-2', true, 2],
      ]);
      const mem = await sim.call('memory');
      expect(mem.rss).toBeGreaterThan(0);
      expect(mem.fds).toBeGreaterThan(3);

      await sim.call('down', 1);
      expect((await sim.call('stats')).nodes[1]?.up).toBe(false);
      const ca = await readFile(join(dir, 'ca.crt'), 'utf8');
      const cert = { certPem: await readFile(join(dir, 'fleet.crt'), 'utf8'), keyPem: await readFile(join(dir, 'fleet.key'), 'utf8') };
      const c1 = connect({ endpoint: stats.nodes[1]?.address as string, caPem: ca, ...cert });
      try {
        const err = await c1.list(STATIC_POD_TYPE).catch((e: unknown) => e);
        expect(isCosiError(err, 'unavailable'), String(err)).toBe(true);
        await sim.call('up', 'sim-1');
        // The client's connection comes back after its backoff.
        await eventually(async () => expect(await c1.list(STATIC_POD_TYPE)).toHaveLength(2), 30_000);
      } finally {
        c1.close();
      }

      await sim.call('setRate', 50);
      await eventually(async () => expect((await sim.call('stats')).changes).toBeGreaterThan(0));
      await sim.call('setRate', 0);

      // A flood writes on its node alone, down or not.
      await sim.call('down', 2);
      const before = (await sim.call('stats')).nodes[2]?.writes ?? 0;
      await sim.call('flood', 2, 200);
      await eventually(async () => expect((await sim.call('stats')).nodes[2]?.writes).toBeGreaterThan(before + 20));
      await sim.call('flood', 2, 0);
      await sim.call('up', 2);

      // A flapping node goes down and comes back, until the flap ends (and leaves it up).
      await sim.call('flap', 0, 100);
      await eventually(async () => expect((await sim.call('stats')).nodes[0]?.up).toBe(false));
      await eventually(async () => expect((await sim.call('stats')).nodes[0]?.up).toBe(true));
      await sim.call('flap', 0, 0);
      await eventually(async () => expect((await sim.call('stats')).nodes[0]?.up).toBe(true));

      const added = await sim.call('addNode');
      expect(added.name).toBe('sim-3');
      const nodes = parseNodeList(await readFile(sim.ready.nodesFile, 'utf8'), sim.ready.nodesFile, 50000);
      expect(nodes.map((n) => n.name)).toEqual(['sim-0', 'sim-1', 'sim-2', 'sim-3']);
      expect(nodes[3]?.address).toBe(added.address);
      await expect(sim.call('down', 9)).rejects.toThrow(/no simulated node 9/);
    } finally {
      await sim.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
