// The fleet's per-node view (server/fleet/node-view.ts): a node's part of the fleet store, under the node's own ids
// and labels. Unit cases run the views over a MemoryStore written as the mirror writes (ids `<node>/<id>`, the node
// label); the served cases put a real gRPC server with mTLS over a node's scope and read it with the library.
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, isCosiError, type CosiClient, type CosiResource, type WatchEvent } from '../client/index.js';
import { CosiError } from '../shared/errors.js';
import { silentLogger } from '../shared/log.js';
import type { Kind, Resource } from '../shared/resource.js';
import type { Json } from '../shared/wire.js';
import { stateServiceDefinition, stateServiceHandlers } from '../server/api/service.js';
import { NODE_LABEL } from '../server/store/etcd/codec.js';
import { NodeKindHistory, nodeInstance, NodeViews, type NodeScopedFeed } from '../server/fleet/node-view.js';
import { installFramedWrites } from '../server/grpc-internals.js';
import { registerK8sTypes } from '../server/resources/k8s.js';
import { Registry } from '../server/resources/registry.js';
import { MemoryStore } from '../server/store/memory.js';
import { storedSpecJson } from '../server/store/mutations.js';
import type { Change, ChangeFeed, KindHistory } from '../server/store/store.js';
import { upsert } from '../server/store/upsert.js';
import { TlsMaterial } from '../server/tls/material.js';
import { Frames } from '../server/watch/frames.js';
import { WatchHub } from '../server/watch/hub.js';
import { DEFAULT_WATCH_LIMITS } from '../server/watch/limits.js';
import { eventually, makePki, podStatus, STATIC_PODS, STATUSES, type TestPki } from './harness.js';

const MIRROR = 'fleet.Mirror';

/** Writes a node's resource as the fleet's mirror does: the fleet id and the node label. */
function mirror(store: MemoryStore, node: string, id: string, spec: Json, labels: Record<string, string> = {}, kind: Kind = STATUSES) {
  return upsert(store, { ...kind, id: `${node}/${id}`, spec, labels: { ...labels, [NODE_LABEL]: node } }, MIRROR);
}

function unmirror(store: MemoryStore, node: string, id: string, kind: Kind = STATUSES) {
  return store.destroy({ ...kind, id: `${node}/${id}` }, MIRROR);
}

/** What a reader can see of a resource, as plain data. */
function plain(r: Resource | undefined) {
  if (r === undefined) return undefined;
  const md = r.metadata;
  return { id: md.id, version: md.version, owner: md.owner, phase: md.phase, created: md.created.getTime(), updated: md.updated.getTime(), labels: { ...md.labels }, annotations: { ...md.annotations }, finalizers: [...md.finalizers], spec: r.spec };
}

/** A fleet resource as node `node` has it, as plain data: what the view must answer. */
function expectedOf(r: Resource | undefined, node: string) {
  const p = plain(r);
  if (p === undefined) return undefined;
  const { [NODE_LABEL]: _node, ...labels } = p.labels;
  return { ...p, id: p.id.slice(node.length + 1), labels };
}

const plainChange = (c: Change) => ({ revision: c.revision, type: c.type, resource: plain(c.resource), old: plain(c.old) });
const expectedChange = (c: Change, node: string) => ({ revision: c.revision, type: c.type, resource: expectedOf(c.resource, node), old: expectedOf(c.old, node) });
const ofNode = (node: string) => (id: string) => id.startsWith(`${node}/`);

async function viewOf(views: NodeViews, node: string, kind: Kind = STATUSES): Promise<NodeKindHistory> {
  const h = await views.feedFor(node).history(kind);
  expect(h).toBeInstanceOf(NodeKindHistory);
  return h as NodeKindHistory;
}

describe('NodeKindHistory over a memory fleet store', () => {
  it('equals the fleet filtered to its node, for any writes across three nodes (fast-check)', async () => {
    const op = fc.record({ node: fc.constantFrom('A', 'B', 'C'), id: fc.constantFrom('p1', 'p2', 'ns/p3'), del: fc.boolean(), ready: fc.boolean(), tier: fc.constantFrom(undefined, 'web', 'db') });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 60 }), fc.nat(60), async (ops, buildAt) => {
        // A short history, so that trims (of every node's changes) happen during the sequence.
        const store = new MemoryStore({ historySize: 6, historyAgeMs: 0 });
        const fleet = store.log(STATUSES);
        const all: Change[] = [];
        fleet.subscribe({ committed: (c) => all.push(c) });
        let views: NodeViews | undefined;
        let view: NodeKindHistory | undefined;
        let builtAt = 0;
        let floorAtBuild = 0;
        const heard: Change[] = [];
        const forgotten: Change[] = [];
        const build = async () => {
          views = new NodeViews(store.feed, { sweepIntervalMs: 0 });
          view = await viewOf(views, 'A');
          builtAt = fleet.revision;
          floorAtBuild = view.oldestRevision;
          expect(floorAtBuild).toBe(fleet.oldestRevision);
          view.subscribe({ committed: (c) => heard.push(c), trimmed: (c) => forgotten.push(c) });
        };
        for (const [i, o] of ops.entries()) {
          if (i === buildAt) await build();
          const exists = fleet.current(`${o.node}/${o.id}`) !== undefined;
          if (o.del && exists) await unmirror(store, o.node, o.id);
          else await mirror(store, o.node, o.id, podStatus(o.ready), o.tier === undefined ? {} : { tier: o.tier });
        }
        if (view === undefined) await build();
        const v = view as NodeKindHistory;
        const isA = ofNode('A');
        const allA = all.filter((c) => isA(c.resource.metadata.id));

        // Now: the node's resources, projected.
        expect(v.list().map(plain)).toEqual(fleet.list().filter((r) => isA(r.metadata.id)).map((r) => expectedOf(r, 'A')));
        expect(v.count).toBe(fleet.list().filter((r) => isA(r.metadata.id)).length);
        for (const r of v.list()) {
          expect(v.current(r.metadata.id)).toBe(r);
          // The spec's JSON text is the fleet's, not a re-encoding.
          expect(storedSpecJson(r)).toBe(storedSpecJson(fleet.current(`A/${r.metadata.id}`) as Resource));
        }
        // Its window never starts later than the fleet's, and holds every change of the node after it.
        expect(v.revision).toBe(fleet.revision);
        expect(v.oldestRevision).toBeLessThanOrEqual(fleet.oldestRevision);
        const held = v.readChanges(v.oldestRevision, 1000);
        expect(held.through).toBe(fleet.revision);
        expect(held.changes.map(plainChange)).toEqual(allA.filter((c) => c.revision > v.oldestRevision).map((c) => expectedChange(c, 'A')));
        expect(v.size).toBe(held.changes.length);
        // A version is one object: a change's old state is the previous change's resource, the last is current.
        const lastById = new Map<string, Resource>();
        for (const c of held.changes) {
          const prev = lastById.get(c.resource.metadata.id);
          if (c.type !== 'created' && prev !== undefined) expect(c.old).toBe(prev);
          lastById.set(c.resource.metadata.id, c.resource);
        }
        for (const [id, r] of lastById) if (v.current(id) !== undefined) expect(v.current(id)).toBe(r);
        // The past, at every revision of the window, and the lag count.
        for (let rev = v.oldestRevision; rev <= v.revision; rev++) {
          const state = new Map<string, Resource>();
          for (const c of allA) {
            if (c.revision > rev) break;
            if (c.type === 'destroyed') state.delete(c.resource.metadata.id);
            else state.set(c.resource.metadata.id, c.resource);
          }
          const expected = [...state.values()].sort((a, b) => (a.metadata.id < b.metadata.id ? -1 : 1)).map((r) => expectedOf(r, 'A'));
          expect(v.listAt(rev).map(plain)).toEqual(expected);
          expect(v.countAfter(rev)).toBe(held.changes.filter((c) => c.revision > rev).length);
        }
        // Subscribers hear the node's changes only, in order; forgotten ones oldest first.
        expect(heard.map(plainChange)).toEqual(allA.filter((c) => c.revision > builtAt).map((c) => expectedChange(c, 'A')));
        expect(forgotten.map((c) => c.revision)).toEqual(allA.map((c) => c.revision).filter((r) => r > floorAtBuild && r <= v.oldestRevision));
        views?.close();
      }),
      { numRuns: 150 },
    );
  });

  it('keeps an idle watcher of a node in place while other nodes churn past the fleet history', async () => {
    const store = new MemoryStore({ historySize: 4, historyAgeMs: 0 });
    await mirror(store, 'A', 'p', podStatus(true));
    const views = new NodeViews(store.feed, { sweepIntervalMs: 0 });
    const view = await viewOf(views, 'A');
    const cursor = view.revision;
    for (let i = 0; i < 20; i++) await mirror(store, 'B', `p${i % 5}`, podStatus(i % 2 === 0));
    // The fleet forgot everything up to after the cursor: only other nodes' changes, so the node's watcher reads on.
    expect(store.log(STATUSES).oldestRevision).toBeGreaterThan(cursor);
    expect(view.readChanges(cursor, 10)).toEqual({ changes: [], through: store.revision });
    await mirror(store, 'A', 'p', podStatus(false));
    expect(view.readChanges(cursor, 10).changes.map((c) => [c.type, c.resource.metadata.id, c.resource.metadata.version])).toEqual([['updated', 'p', 2]]);
    views.close();
  });

  it('routes each change to its own node only, and projects every mirrored kind', async () => {
    const store = new MemoryStore();
    const views = new NodeViews(store.feed, { sweepIntervalMs: 0 });
    const [a, b] = [await viewOf(views, 'A'), await viewOf(views, 'B')];
    const heard = { A: 0, B: 0 };
    a.subscribe({ committed: () => heard.A++ });
    b.subscribe({ committed: () => heard.B++ });
    for (let i = 0; i < 5; i++) await mirror(store, 'B', `p${i}`, podStatus(true));
    await mirror(store, 'A', 'p0', podStatus(true));
    expect(heard).toEqual({ A: 1, B: 5 });
    await mirror(store, 'A', 'web', { containers: [] }, { app: 'web' }, STATIC_PODS);
    const pods = await viewOf(views, 'A', STATIC_PODS);
    expect(pods.list().map((r) => [r.metadata.id, r.metadata.labels])).toEqual([['web', { app: 'web' }]]);
    // Meta kinds are the fleet's own.
    const meta = { namespace: 'meta', type: 'Namespaces.meta.cosi.dev' };
    expect(await views.feedFor('A').history(meta)).toBe(await store.feed.history(meta));
    views.close();
  });

  it('is built again from the fleet after the fleet history started over, and tells its watchers', async () => {
    const store = new MemoryStore();
    await mirror(store, 'A', 'p', podStatus(true));
    const views = new NodeViews(store.feed, { sweepIntervalMs: 0 });
    const view = await viewOf(views, 'A');
    const lost: CosiError[] = [];
    view.subscribe({ lost: (e) => lost.push(e) });
    const fleet = store.log(STATUSES);
    const other = (await store.get({ ...STATUSES, id: 'A/p' })) as Resource;
    // A relist of the fleet's kind (what the etcd cache does when etcd cut its history): new state, no history.
    fleet.reset(fleet.revision + 5, [other, { ...other, metadata: { ...other.metadata, id: 'A/q' } }], new CosiError('too-old', 'cut'));
    expect(lost.map((e) => e.kind)).toEqual(['too-old']);
    expect(view.list().map((r) => r.metadata.id)).toEqual(['p', 'q']);
    expect(view.oldestRevision).toBe(fleet.revision);
    views.close();
  });

  it('reaches back past its window through the fleet feed, then holds the older changes of its node', async () => {
    const store = new MemoryStore({ historySize: 3, historyAgeMs: 0 });
    const fleet = store.log(STATUSES);
    const all: Change[] = [];
    fleet.subscribe({ committed: (c) => all.push(c) });
    for (let i = 0; i < 10; i++) await mirror(store, i % 2 === 0 ? 'A' : 'B', `p${i % 3}`, podStatus(i % 4 === 0));
    // A fleet feed whose history reaches further back on demand, as the etcd cache's backfill does.
    let reached = 0;
    const backfilling: ChangeFeed = {
      instance: store.feed.instance,
      history: (k) => store.feed.history(k),
      opened: () => store.feed.opened(),
      listAt: (k, rev) => store.feed.listAt(k, rev),
      reach: async (k, after) => {
        reached++;
        if (after < fleet.oldestRevision) fleet.prepend(after, all.filter((c) => c.revision > after && c.revision <= fleet.oldestRevision));
        else await store.feed.reach(k, after);
      },
    };
    const views = new NodeViews(backfilling, { sweepIntervalMs: 0 });
    const feed = views.feedFor('A');
    const view = await viewOf(views, 'A');
    expect(view.oldestRevision).toBe(fleet.oldestRevision);
    expect(view.oldestRevision).toBeGreaterThan(2);
    expect(() => view.readChanges(2, 100)).toThrow(/too old/);
    await feed.reach(STATUSES, 2);
    expect(reached).toBe(1);
    expect(view.oldestRevision).toBe(2);
    expect(view.readChanges(2, 100).changes.map(plainChange)).toEqual(all.filter((c) => c.revision > 2 && ofNode('A')(c.resource.metadata.id)).map((c) => expectedChange(c, 'A')));
    // A list at an older revision: the node's state then, projected.
    const at = await feed.listAt(STATUSES, 4);
    expect(at.map(plain)).toEqual((await store.feed.listAt(STATUSES, 4)).filter((r) => ofNode('A')(r.metadata.id)).map((r) => expectedOf(r, 'A')));
    // From the future: refused as the fleet refuses it.
    await expect(feed.reach(STATUSES, store.revision + 1)).rejects.toMatchObject({ kind: 'invalid-bookmark' });
    views.close();
  });

  it('names its bookmarks apart from the fleet and from other nodes', () => {
    const fleet = 'a1b2c3d4e5f60718';
    const [a, b] = [nodeInstance(fleet, 'A'), nodeInstance(fleet, 'B')];
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(new Set([fleet, a, b]).size).toBe(3);
    expect(nodeInstance(fleet, 'A')).toBe(a);
  });

  it('drops a view nobody used for the idle time, never one a subscriber still reads', async () => {
    const store = new MemoryStore();
    let now = 1_000_000;
    const views = new NodeViews(store.feed, { sweepIntervalMs: 0, idleMs: 300_000, now: () => now });
    const a = await viewOf(views, 'A');
    const b = await viewOf(views, 'B');
    const lostB: CosiError[] = [];
    const unsubscribe = b.subscribe({ lost: (e) => lostB.push(e) });
    now += 299_999;
    expect(views.sweep()).toEqual([]);
    now += 1;
    expect(views.sweep()).toEqual(['A']);
    expect(a.unavailable?.kind).toBe('unavailable');
    expect(views.nodes()).toEqual(['B']);
    unsubscribe();
    expect(views.sweep()).toEqual(['B']);
    expect(lostB).toEqual([]);
    // A node used again gets a fresh view, routed like the first.
    const again = await viewOf(views, 'A');
    expect(again).not.toBe(a);
    await mirror(store, 'A', 'p', podStatus(true));
    expect(again.list().map((r) => r.metadata.id)).toEqual(['p']);
    expect(a.list()).toEqual([]);
    views.close();
  });
});

/** A State service over one feed and hub, as the fleet serves a scope, with mTLS on a loopback port. */
async function serve(pki: TestPki, registry: Registry, frames: Frames, feed: ChangeFeed, hub: WatchHub, nodeName: string): Promise<{ server: grpc.Server; endpoint: string }> {
  const server = new grpc.Server();
  server.addService(stateServiceDefinition(), stateServiceHandlers({ feed, hub, registry, frames, log: silentLogger, nodeName }));
  const creds = TlsMaterial.fromPem({ caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem }, silentLogger).serverCredentials({ handshakeTimeoutMs: 10_000 });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (err, p) => (err ? reject(err) : resolve(p))));
  return { server, endpoint: `127.0.0.1:${port}` };
}

describe('a node scope served over gRPC', () => {
  let pki: TestPki;
  let store: MemoryStore;
  let views: NodeViews;
  let now = Date.now();
  const servers: grpc.Server[] = [];
  const clients: CosiClient[] = [];
  let fleetHub: WatchHub;
  let registry: Registry;
  let frames: Frames;
  let endpoints: { A: string; B: string; fleet: string };
  const client = (endpoint: string) => {
    const c = connect({ endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    installFramedWrites();
    pki = await makePki();
    store = new MemoryStore({ historySize: 200, historyAgeMs: 0 });
    registry = new Registry(store);
    registerK8sTypes(registry);
    await registry.published();
    frames = new Frames(registry);
    const small = { ...DEFAULT_WATCH_LIMITS, eventCacheBytes: 256 << 10, sharedBatchBytes: 256 << 10 };
    views = new NodeViews(store.feed, { sweepIntervalMs: 0, now: () => now, hub: (feed: NodeScopedFeed) => new WatchHub(feed, frames, small) });
    fleetHub = new WatchHub(store.feed, frames);
    const a = views.scope('A');
    const b = views.scope('B');
    const sA = await serve(pki, registry, frames, a.feed, a.hub, 'A');
    const sB = await serve(pki, registry, frames, b.feed, b.hub, 'B');
    const sF = await serve(pki, registry, frames, store.feed, fleetHub, 'fleet');
    servers.push(sA.server, sB.server, sF.server);
    endpoints = { A: sA.endpoint, B: sB.endpoint, fleet: sF.endpoint };
    await mirror(store, 'A', 'kube-system/web', podStatus(true), { tier: 'web' });
    await mirror(store, 'A', 'kube-system/db', podStatus(false));
    await mirror(store, 'B', 'kube-system/web', podStatus(false), { tier: 'b-web' });
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    views.close();
    fleetHub.endAll();
    for (const s of servers) s.forceShutdown();
  });

  const summary = (r: CosiResource) => ({ id: r.metadata.id, version: r.metadata.version, labels: { ...r.metadata.labels }, spec: r.spec });

  it('answers Get and List with the node-local ids and without the node label', async () => {
    const c = client(endpoints.A);
    const web = await c.get('podstatus', 'kube-system/web');
    const fleetWeb = await store.get({ ...STATUSES, id: 'A/kube-system/web' });
    expect(summary(web)).toEqual({ id: 'kube-system/web', version: fleetWeb.metadata.version, labels: { tier: 'web' }, spec: fleetWeb.spec });
    expect(web.metadata.updated.getTime()).toBe(fleetWeb.metadata.updated.getTime());
    expect((await c.list('podstatus')).map((r) => r.metadata.id)).toEqual(['kube-system/db', 'kube-system/web']);
    expect((await client(endpoints.B).list('podstatus')).map(summary)).toEqual([{ id: 'kube-system/web', version: 1, labels: { tier: 'b-web' }, spec: podStatus(false) }]);
    await expect(c.get('podstatus', 'A/kube-system/web')).rejects.toMatchObject({ kind: 'not-found' });
    // The fleet's own view is unchanged.
    expect((await client(endpoints.fleet).get('podstatus', 'A/kube-system/web')).metadata.labels).toEqual({ tier: 'web', [NODE_LABEL]: 'A' });
  });

  it("watches the node's changes only, and resumes from a per-node bookmark", async () => {
    const c = client(endpoints.A);
    const events: WatchEvent[] = [];
    const ac = new AbortController();
    const done = (async () => {
      for await (const e of c.watchIter('podstatus', { bootstrap: true, signal: ac.signal, eventForm: 'full' })) events.push(e);
    })();
    await eventually(() => expect(events.map((e) => e.type)).toContain('bootstrapped'));
    expect(events.filter((e) => e.type === 'created').map((e) => e.resource?.metadata.id)).toEqual(['kube-system/db', 'kube-system/web']);
    const view = (await views.feedFor('A').history(STATUSES)) as NodeKindHistory;
    let routedToA = 0;
    const unsubscribe = view.subscribe({ committed: () => routedToA++ });
    for (let i = 0; i < 10; i++) await mirror(store, 'B', 'kube-system/web', podStatus(i % 2 === 0), { tier: `b${i}` });
    await mirror(store, 'A', 'kube-system/db', podStatus(true), { tier: 'db' });
    await eventually(() => expect(events.at(-1)?.type).toBe('updated'));
    unsubscribe();
    expect(routedToA).toBe(1);
    const changes = events.slice(events.findIndex((e) => e.type === 'bootstrapped') + 1);
    expect(changes.map((e) => [e.type, e.resource?.metadata.id, e.resource?.metadata.version, e.resource?.metadata.labels, e.old?.metadata.labels])).toEqual([['updated', 'kube-system/db', 2, { tier: 'db' }, {}]]);
    const bookmark = changes[0]?.bookmark;
    expect(bookmark).toBeDefined();
    ac.abort();
    await done;

    // Changes while away: B's and A's; the resume brings A's, after the bookmark, and nothing else.
    await mirror(store, 'B', 'kube-system/other', podStatus(true));
    await mirror(store, 'A', 'kube-system/new', podStatus(true), { tier: 'new' });
    await unmirror(store, 'A', 'kube-system/web');
    const resumed: WatchEvent[] = [];
    const ac2 = new AbortController();
    const done2 = (async () => {
      for await (const e of client(endpoints.A).watchIter('podstatus', { fromBookmark: bookmark as Uint8Array, signal: ac2.signal, reconnect: false })) resumed.push(e);
    })();
    await eventually(() => expect(resumed.length).toBe(2));
    expect(resumed.map((e) => [e.type, e.resource?.metadata.id, e.resource?.metadata.labels])).toEqual([
      ['created', 'kube-system/new', { tier: 'new' }],
      ['destroyed', 'kube-system/web', { tier: 'web' }],
    ]);
    ac2.abort();
    await done2;
  });

  it("refuses a fleet bookmark, and another node's, as too old", async () => {
    const fleetEvents: WatchEvent[] = [];
    const ac = new AbortController();
    const done = (async () => {
      for await (const e of client(endpoints.fleet).watchIter('podstatus', { bootstrapBookmark: true, signal: ac.signal, reconnect: false })) fleetEvents.push(e);
    })();
    await eventually(() => expect(fleetEvents[0]?.type).toBe('noop'));
    ac.abort();
    await done;
    const bEvents: WatchEvent[] = [];
    const ac2 = new AbortController();
    const done2 = (async () => {
      for await (const e of client(endpoints.B).watchIter('podstatus', { bootstrapBookmark: true, signal: ac2.signal, reconnect: false })) bEvents.push(e);
    })();
    await eventually(() => expect(bEvents[0]?.type).toBe('noop'));
    ac2.abort();
    await done2;
    for (const bookmark of [fleetEvents[0]?.bookmark, bEvents[0]?.bookmark]) {
      const w = client(endpoints.A).watchIter('podstatus', { fromBookmark: bookmark as Uint8Array, reconnect: false });
      const err = await w.next().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isCosiError(err, 'too-old')).toBe(true);
    }
  });

  it('resumes an interrupted bootstrap from its snapshot: the node as it was at that revision', async () => {
    await mirror(store, 'A', 'kube-system/z1', podStatus(true));
    await mirror(store, 'A', 'kube-system/z2', podStatus(true));
    const first: WatchEvent[] = [];
    const ac = new AbortController();
    const done = (async () => {
      for await (const e of client(endpoints.A).watchIter('podstatus', { bootstrap: true, signal: ac.signal, reconnect: false })) first.push(e);
    })();
    await eventually(() => expect(first.map((e) => e.type)).toContain('bootstrapped'));
    ac.abort();
    await done;
    const snapshot = first.filter((e) => e.type === 'created');
    const [firstItem] = snapshot;
    // Changes after the snapshot: the resumed bootstrap still sends the items as they were, then these changes.
    await mirror(store, 'A', 'kube-system/z1', podStatus(false));
    await unmirror(store, 'A', 'kube-system/z2');
    await mirror(store, 'B', 'kube-system/z2', podStatus(false));
    const resumed: WatchEvent[] = [];
    const ac2 = new AbortController();
    const done2 = (async () => {
      for await (const e of client(endpoints.A).watchIter('podstatus', { fromBookmark: firstItem?.bookmark as Uint8Array, signal: ac2.signal, reconnect: false })) resumed.push(e);
    })();
    await eventually(() => expect(resumed.filter((e) => e.type === 'destroyed')).toHaveLength(1));
    const rest = snapshot.slice(1).map((e) => ['created', e.resource?.metadata.id, e.resource?.metadata.version]);
    expect(resumed.map((e) => [e.type, e.resource?.metadata.id, e.resource?.metadata.version])).toEqual([
      ...rest,
      ['bootstrapped', undefined, undefined],
      ['updated', 'kube-system/z1', 2],
      ['destroyed', 'kube-system/z2', 1],
    ]);
    ac2.abort();
    await done2;
  });

  // Last: the clock it moves makes the other scopes idle too.
  it('keeps a view with an open watch past the idle time; drops it, and its hub, once the watch ends', async () => {
    const scope = views.scope('C');
    const s = await serve(pki, registry, frames, scope.feed, scope.hub, 'C');
    servers.push(s.server);
    const events: WatchEvent[] = [];
    const ac = new AbortController();
    const done = (async () => {
      for await (const e of client(s.endpoint).watchIter('podstatus', { bootstrapBookmark: true, signal: ac.signal, reconnect: false })) events.push(e);
    })();
    await eventually(() => expect(events[0]?.type).toBe('noop'));
    now += 10 * 60_000;
    expect(views.sweep()).not.toContain('C');
    await mirror(store, 'C', 'p', podStatus(true));
    await eventually(() => expect(events.at(-1)?.resource?.metadata.id).toBe('p'));
    ac.abort();
    await done;
    await eventually(() => expect(scope.hub.stats().sessions).toBe(0));
    expect(views.sweep()).toContain('C');
    expect(views.scope('C').hub).not.toBe(scope.hub);
  });
});
