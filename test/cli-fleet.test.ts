// cosictl through a fleet endpoint (docs/design/fleet.md §5): the compiled binary against real State servers on
// 127.0.0.1 with real mTLS that answer as cosi-fleet does. One plays the fleet view (header `cosi-fleet`, ids
// `<node>/<id>` with the node label, FleetNodes); one plays a node's view through the fleet while the fleet does not
// follow that node (header `cosi-fleet-node-state`).
import * as grpc from '@grpc/grpc-js';
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { connect } from '../client/index.js';
import { CosiError } from '../shared/errors.js';
import { silentLogger } from '../shared/log.js';
import type { Json } from '../shared/wire.js';
import { bindServer, serverOptions } from '../server/api/grpc-server.js';
import { stateServiceDefinition, stateServiceHandlers } from '../server/api/service.js';
import { installFramedWrites } from '../server/grpc-internals.js';
import { K8S_NAMESPACE, registerK8sTypes, STATIC_POD_TYPE } from '../server/resources/k8s.js';
import { Registry } from '../server/resources/registry.js';
import { MemoryStore } from '../server/store/memory.js';
import { TlsMaterial } from '../server/tls/material.js';
import { Frames } from '../server/watch/frames.js';
import { WatchHub } from '../server/watch/hub.js';
import { DEFAULT_WATCH_LIMITS } from '../server/watch/limits.js';
import { makePki, pod, podStatus, runCli, STATUSES, TEST_OWNER, type CliRun, type TestPki } from './harness.js';

const NODE_LABEL = 'cosi-pods.dev/node';
const FLEET_NODES = { namespace: 'fleet', type: 'FleetNodes.fleet.cosi-pods.dev' };
const STATIC_PODS = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };
const OWNER = 'fleet.Follower';

interface StateServer {
  endpoint: string;
  store: MemoryStore;
  close(): Promise<void>;
}

/** A State server as cosid serves it, minus node routing: its store, registry and hub, with extra response headers. */
async function startStateServer(pki: TestPki, opts: { nodeName: string; headers: Record<string, string>; fleetNodeType: boolean }): Promise<StateServer> {
  installFramedWrites();
  const store = new MemoryStore({});
  const registry = new Registry(store);
  registerK8sTypes(registry);
  if (opts.fleetNodeType) {
    registry.registerNamespace(FLEET_NODES.namespace, 'The fleet\'s own resources.');
    registry.register({
      ...FLEET_NODES,
      displayType: 'FleetNode',
      defaultNamespace: FLEET_NODES.namespace,
      aliases: ['fleetnode', 'fn'],
      printColumns: [
        { name: 'Replica', jsonPath: '{.replica}' },
        { name: 'State', jsonPath: '{.state}' },
      ],
    });
  }
  await registry.published();
  const frames = new Frames(registry);
  const hub = new WatchHub(store.feed, frames, DEFAULT_WATCH_LIMITS);
  const server = new grpc.Server(serverOptions());
  server.addService(stateServiceDefinition(), stateServiceHandlers({ feed: store.feed, registry, frames, hub, log: silentLogger, nodeName: opts.nodeName, extraHeaders: () => opts.headers }));
  const creds = TlsMaterial.fromPem({ caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem }, silentLogger).serverCredentials({ handshakeTimeoutMs: 10_000 });
  const port = await bindServer(server, '127.0.0.1:0', creds, silentLogger);
  return {
    endpoint: `127.0.0.1:${port}`,
    store,
    async close() {
      hub.endAll(new CosiError('unavailable', 'test server stopping'));
      server.forceShutdown();
      await store.close();
    },
  };
}

function fleetNode(state: string, unreachableSince: string | null): Json {
  return { address: '127.0.0.1:1', state, replica: 'replica-a', followingSince: '2025-01-01T00:00:00Z', unreachableSince, lastError: state === 'Unreachable' ? 'connection refused' : null, lagMs: 0, lastChangeAt: '2025-01-01T00:00:00Z', relists: 0 };
}

/** A resource of node `node` as the fleet view serves it: id `<node>/<id>`, the node label. */
function mirrored(kind: { namespace: string; type: string }, node: string, id: string, spec: Json) {
  return { ...kind, id: `${node}/${id}`, labels: { [NODE_LABEL]: node }, spec };
}

// Two and a half minutes: "2m" for the whole run of this file however slow the machine.
const UNREACHABLE_SINCE = new Date(Date.now() - 150_000).toISOString();
const NODE_STATE = 'Unreachable; since=2025-01-02T03:04:05Z';

let pki: TestPki;
let fleet: StateServer;
let bare: StateServer;
let nodeView: StateServer;

beforeAll(async () => {
  pki = await makePki();
  fleet = await startStateServer(pki, { nodeName: 'replica-a', headers: { 'cosi-fleet': '/cosi-fleet/' }, fleetNodeType: true });
  const s = fleet.store;
  await s.create(mirrored(STATIC_PODS, 'node-a', 'default-nginx', pod('nginx')), OWNER);
  await s.create(mirrored(STATIC_PODS, 'node-b', 'default-nginx', pod('nginx')), OWNER);
  await s.create(mirrored(STATUSES, 'node-a', 'default/nginx-node-a', podStatus(true)), OWNER);
  await s.create(mirrored(STATUSES, 'node-b', 'default/nginx-node-b', podStatus(true)), OWNER);
  await s.create({ ...FLEET_NODES, id: 'node-a', labels: { [NODE_LABEL]: 'node-a' }, spec: fleetNode('Following', null) }, OWNER);
  await s.create({ ...FLEET_NODES, id: 'node-b', labels: { [NODE_LABEL]: 'node-b' }, spec: fleetNode('Unreachable', UNREACHABLE_SINCE) }, OWNER);
  // A fleet whose FleetNodes cannot be read (the type unknown to it).
  bare = await startStateServer(pki, { nodeName: 'replica-b', headers: { 'cosi-fleet': '/cosi-fleet/' }, fleetNodeType: false });
  await bare.store.create(mirrored(STATIC_PODS, 'node-a', 'default-nginx', pod('nginx')), OWNER);
  // A node's view through the fleet: the node's own ids and labels, and the fleet's word that it is not followed.
  nodeView = await startStateServer(pki, { nodeName: 'node-b', headers: { 'cosi-fleet-node-state': NODE_STATE }, fleetNodeType: true });
  await nodeView.store.create({ ...STATIC_PODS, id: 'default-nginx', spec: pod('nginx') }, TEST_OWNER);
});

afterAll(async () => {
  await Promise.all([fleet?.close(), bare?.close(), nodeView?.close()]);
  if (pki !== undefined) await rm(pki.dir, { recursive: true, force: true });
});

function cosictl(server: StateServer, args: string[], opts: { until?: (out: string) => boolean } = {}): Promise<CliRun> {
  return runCli(['--cosiconfig', pki.cosiconfig, '-e', server.endpoint, ...args], opts);
}

const lines = (out: string) => out.trimEnd().split('\n');

describe('cosictl get through the fleet view', () => {
  it('takes NODE from the node label (not the replica that answered), drops <node>/ from ID, and adds STALE', async () => {
    const r = await cosictl(fleet, ['get', 'staticpods']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        'NODE     NAMESPACE   TYPE        ID              VERSION   ERROR   STALE',
        'node-a   k8s         StaticPod   default-nginx   1',
        'node-b   k8s         StaticPod   default-nginx   1                 unreachable 2m',
        '',
      ].join('\n'),
    );
  });

  it('puts the fleet\'s word in a type\'s own STALE column rather than a second one', async () => {
    const r = await cosictl(fleet, ['get', 'podstatus']);
    expect(r.code).toBe(0);
    const [header, a, b] = lines(r.stdout);
    expect(header).toMatch(/^NODE\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+READY\s+RESTARTS\s+STALE$/);
    expect(a).toMatch(/^node-a\s+k8s\s+StaticPodStatus\s+default\/nginx-node-a\s+1\s+True$/);
    expect(b).toMatch(/^node-b\s+k8s\s+StaticPodStatus\s+default\/nginx-node-b\s+1\s+True\s+unreachable 2m$/);
  });

  it('gets one resource by its fleet id, shown without the prefix', async () => {
    const r = await cosictl(fleet, ['get', 'sp', 'node-b/default-nginx']);
    expect(r.code).toBe(0);
    expect(lines(r.stdout)[1]).toMatch(/^node-b\s+k8s\s+StaticPod\s+default-nginx\s+1\s+unreachable 2m$/);
  });

  it('keeps the resource as sent in -o yaml, with node from the label', async () => {
    const r = await cosictl(fleet, ['get', 'sp', '-o', 'yaml']);
    expect(r.code).toBe(0);
    const docs = YAML.parseAllDocuments(r.stdout).map((d) => d.toJS() as { node: string; metadata: { id: string; labels: Record<string, string> } });
    expect(docs.map((d) => [d.node, d.metadata.id, d.metadata.labels[NODE_LABEL]])).toEqual([
      ['node-a', 'node-a/default-nginx', 'node-a'],
      ['node-b', 'node-b/default-nginx', 'node-b'],
    ]);
    expect(r.stdout).not.toContain('STALE');
  });

  it('prints the rows without STALE, and one warning, when the FleetNodes cannot be read', async () => {
    const r = await cosictl(bare, ['get', 'staticpods']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(['NODE     NAMESPACE   TYPE        ID              VERSION   ERROR', 'node-a   k8s         StaticPod   default-nginx   1', ''].join('\n'));
    expect(r.stderr).toMatch(/^warning: cannot read the fleet's FleetNodes \(.*FleetNodes.*\); rows shown without STALE\n$/);
  });

  it('exposes the headers in the library: client.fleet from the fleet view, fleetNodeState from a node\'s', async () => {
    const c = connect({ endpoint: fleet.endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
    const n = connect({ endpoint: nodeView.endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem, node: 'node-b' });
    try {
      expect([c.fleet, c.fleetNodeState]).toEqual([undefined, undefined]);
      await c.list('sp');
      await n.list('sp');
      expect([c.node, c.fleet, c.fleetNodeState]).toEqual(['replica-a', '/cosi-fleet/', undefined]);
      expect([n.node, n.fleet, n.fleetNodeState]).toEqual(['node-b', undefined, NODE_STATE]);
    } finally {
      c.close();
      n.close();
    }
  });
});

describe('cosictl get -w through the fleet view', () => {
  it('names node and id event by event, with STALE as the FleetNodes say at the time each row is printed', async () => {
    const s = fleet.store;
    const id = { ...STATIC_PODS, id: 'node-a/default-nginx' };
    let writes: Promise<unknown> = Promise.resolve();
    /** node-a's updates asked for so far: one per row printed after the first screen, never two at once. */
    let asked = 0;
    // Once the first screen is out, node-a becomes unreachable. Its FleetNode and its rows reach cosictl on two
    // watches, in no set order: node-a's row is changed again after each row printed, until one shows the new state.
    const r = await cosictl(fleet, ['get', 'sp', '-w'], {
      until: (out) => {
        const ls = lines(out);
        const last = ls[ls.length - 1] ?? '';
        if (ls.length < 3) return false;
        if (ls.length > 3 && /^node-a.*unreachable/.test(last)) return true;
        if (ls.length - 3 === asked) {
          asked++;
          const first = asked === 1;
          const version = asked + 1;
          writes = writes
            .then(async () => {
              if (first) await s.update({ ...FLEET_NODES, id: 'node-a', labels: { [NODE_LABEL]: 'node-a' }, spec: fleetNode('Unreachable', UNREACHABLE_SINCE) }, OWNER);
              await s.update({ ...id, labels: { [NODE_LABEL]: 'node-a' }, spec: pod('nginx', `nginx:${version}`) }, OWNER);
            })
            .catch((err: unknown) => err);
        }
        return false;
      },
    });
    try {
      expect(await writes).toBeUndefined();
      expect(r.code).toBe(0);
      const ls = lines(r.stdout);
      expect(ls[0]).toMatch(/^NODE\s+\*\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+ERROR\s+STALE$/);
      expect(ls[1]).toMatch(/^node-a\s+\+\s+k8s\s+StaticPod\s+default-nginx\s+1$/);
      expect(ls[2]).toMatch(/^node-b\s+\+\s+k8s\s+StaticPod\s+default-nginx\s+1\s+unreachable 2m$/);
      // Every later row is node-a's update, by its short id; the last shows node-a unreachable.
      for (const l of ls.slice(3)) expect(l).toMatch(/^node-a\s{4,}k8s\s+StaticPod\s+default-nginx\s+\d+/);
      expect(ls[ls.length - 1]).toMatch(/^node-a\s+k8s\s+StaticPod\s+default-nginx\s+\d+\s+unreachable 2m$/);
    } finally {
      // Back as the other tests expect it.
      await writes;
      await s.update({ ...FLEET_NODES, id: 'node-a', labels: { [NODE_LABEL]: 'node-a' }, spec: fleetNode('Following', null) }, OWNER);
    }
  });

  it('watches one resource by its fleet id', async () => {
    const r = await cosictl(fleet, ['get', 'sp', 'node-b/default-nginx', '-w'], { until: (out) => lines(out).length >= 2 });
    expect(r.code).toBe(0);
    const ls = lines(r.stdout);
    expect(ls[0]).toMatch(/^NODE\s+\*\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+ERROR\s+STALE$/);
    expect(ls[1]).toMatch(/^node-b\s+\+\s+k8s\s+StaticPod\s+default-nginx\s+1\s+unreachable 2m$/);
  });
});

describe('cosictl -n NODE through a fleet that does not follow the node live', () => {
  const WARNING = 'warning: node-b: unreachable since 2025-01-02T03:04:05Z; rows as the fleet last saw them\n';

  it('prints the node\'s rows as the node has them, and warns once', async () => {
    const r = await cosictl(nodeView, ['get', 'staticpods', '-n', 'node-b']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(WARNING);
    expect(lines(r.stdout)).toEqual(['NODE     NAMESPACE   TYPE        ID              VERSION   ERROR', 'node-b   k8s         StaticPod   default-nginx   1']);
  });

  it('warns once per node', async () => {
    const r = await cosictl(nodeView, ['get', 'staticpods', '-n', 'node-b,node-c']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(WARNING + WARNING.replace('node-b', 'node-c'));
  });

  it('warns once in get -w, however many events follow', async () => {
    let wrote = false;
    let write: Promise<unknown> = Promise.resolve();
    const r = await cosictl(nodeView, ['get', 'staticpods', '-n', 'node-b', '-w'], {
      until: (out) => {
        if (!wrote && lines(out).length >= 2) {
          wrote = true;
          write = nodeView.store.update({ ...STATIC_PODS, id: 'default-nginx', spec: pod('nginx', 'nginx:2') }, TEST_OWNER).catch((err: unknown) => err);
        }
        return lines(out).length >= 3;
      },
    });
    expect(await write).not.toBeInstanceOf(Error);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(WARNING);
    expect(lines(r.stdout)[2]).toMatch(/^node-b\s{4,}k8s\s+StaticPod\s+default-nginx\s+2$/);
  });
});
