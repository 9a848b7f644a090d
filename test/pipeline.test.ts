// The static pod pipeline live: machine config -> StaticPod -> manifest server -> kubelet (simulator) -> StaticPodStatus.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Json } from '../shared/wire.js';
import type { Subscription } from 'rxjs';
import type { CosiResource, WatchEvent } from '../client/index.js';
import { eventually, pod } from './harness.js';
import { machineConfig, NODE, startNode, type TestNode } from './pipeline-harness.js';

let t: TestNode;
const subs: Subscription[] = [];

beforeAll(async () => {
  t = await startNode(machineConfig([pod('nginx')]));
});
afterAll(async () => {
  for (const s of subs) s.unsubscribe();
  await t.close();
});

const ids = (rs: CosiResource[]) => rs.map((r) => `${r.metadata.id}@${r.metadata.version}`);
const ready = (r: CosiResource | undefined) => {
  const conditions = (r?.spec as { conditions?: { type: string; status: string }[] } | null)?.conditions ?? [];
  return conditions.find((c) => c.type === 'Ready')?.status;
};

describe('the whole loop', () => {
  it('takes nginx from the machine config to a Ready StaticPodStatus default/nginx-<node>', async () => {
    const events: WatchEvent[] = [];
    subs.push(t.client.watch('staticpodstatus', { bootstrap: true }).subscribe((e) => events.push(e)));
    expect(ids(await t.client.list('staticpods'))).toEqual(['default-nginx@1']);
    await eventually(async () => expect(ready(await t.client.get('podstatus', `default/nginx-${NODE}`))).toBe('True'), 20_000);
    // The watch saw it appear once and end Ready (how many steps it saw in between depends on the machine's load),
    // and saw only static pods (not the kubelet's API pods).
    // The watch's stream may trail the Get: wait for it to reach Ready too before reading what it saw.
    await eventually(() => expect(events.filter((e) => e.resource !== undefined).map((e) => ready(e.resource)).at(-1)).toBe('True'));
    const seen = events.filter((e) => e.resource !== undefined).map((e) => `${e.type} ${e.resource?.metadata.id} ${ready(e.resource)}`);
    expect(seen[0]).toMatch(new RegExp(`^created default/nginx-${NODE} (True|False)$`));
    expect(seen.filter((x) => x.startsWith('created')).length).toBe(1);
    expect(events.some((e) => e.resource?.metadata.id.includes('kube-proxy'))).toBe(false);
  });

  it('publishes the manifest server URL as StaticPodServerStatus', async () => {
    const r = await t.client.get('staticpodserverstatus', 'static-pod-server-status');
    expect(r.spec).toEqual({ url: t.node.manifests.url });
  });

  it('does not rewrite an unchanged status (no version churn)', async () => {
    // Once Ready, the simulator's pod has no further lifecycle steps: every poll after that reports the same status.
    const before = await eventually(async () => {
      const r = await t.client.get('podstatus', `default/nginx-${NODE}`);
      expect(ready(r)).toBe('True');
      return r;
    }, 20_000);
    const polls = t.sim.requests;
    await eventually(() => expect(t.sim.requests).toBeGreaterThan(polls + 3), 10_000);
    expect((await t.client.get('podstatus', `default/nginx-${NODE}`)).metadata.version).toBe(before.metadata.version);
  });
});

describe('config edits apply without a restart', () => {
  // Each test starts from the node's initial config (nginx alone), whatever the one before it left.
  beforeEach(async () => {
    await t.writeConfig(machineConfig([pod('nginx')]));
    await eventually(async () => {
      expect((await t.client.get('machineconfigstatus', 'machine-config')).spec).toMatchObject({ error: '', pods: 1 });
      expect(ids(await t.client.list('staticpods'))).toEqual(['default-nginx@1']);
    }, 20_000);
  });

  it('adds, changes (version+1), keeps unchanged versions, moves (destroy+create) and removes pods', async () => {
    const events: WatchEvent[] = [];
    subs.push(t.client.watch('staticpods', { bootstrap: true }).subscribe((e) => events.push(e)));
    await eventually(() => expect(events.some((e) => e.type === 'bootstrapped')).toBe(true));
    // How fast is measured by the benchmark (config change -> event), not here.
    await t.writeConfig(machineConfig([pod('nginx'), pod('web', 'httpd')]));
    await eventually(() => expect(events.map((e) => `${e.type} ${e.resource?.metadata.id ?? ''}`)).toContain('created default-web'));
    await t.writeConfig(machineConfig([pod('nginx'), pod('web', 'httpd:2')]));
    await eventually(async () => expect(ids(await t.client.list('staticpods'))).toEqual(['default-nginx@1', 'default-web@2']));
    await t.writeConfig(machineConfig([pod('nginx'), pod('web', 'httpd:2', 'prod')]));
    await eventually(async () => expect(ids(await t.client.list('staticpods'))).toEqual(['default-nginx@1', 'prod-web@1']));
    await t.writeConfig(machineConfig([pod('nginx')]));
    await eventually(async () => expect(ids(await t.client.list('staticpods'))).toEqual(['default-nginx@1']));
    // The watch may deliver the last change a moment after the list shows it.
    const tail = () => events.filter((e) => e.resource?.metadata.id.endsWith('-web')).map((e) => `${e.type} ${e.resource?.metadata.id}@${e.resource?.metadata.version}`);
    await eventually(() => expect(tail()).toEqual(['created default-web@1', 'updated default-web@2', 'destroyed default-web@2', 'created prod-web@1', 'destroyed prod-web@1']));
    // The kubelet followed: the status of the removed pod is gone too.
    await eventually(async () => expect((await t.client.list('podstatus')).map((r) => r.metadata.id)).toEqual([`default/nginx-${NODE}`]), 20_000);
  });

  it('keeps the last good state on a broken config, says why (file and line) through the API, and recovers', async () => {
    const before = ids(await t.client.list('staticpods'));
    await t.writeConfig('version: v1alpha1\nmachine:\n  pods:\n    - metadata: {name: a\n');
    await eventually(async () => expect((await t.client.get('machineconfigstatus', 'machine-config')).spec).toMatchObject({ error: expect.stringMatching(/machine\.yaml:\d+:\d+: /) }));
    expect(ids(await t.client.list('staticpods'))).toEqual(before);
    await t.writeConfig('version: v1alpha1\nmachine:\n  pods: {}\n');
    await eventually(async () => expect((await t.client.get('machineconfigstatus', 'machine-config')).spec).toMatchObject({ error: expect.stringMatching(/machine\.yaml:3: machine\.pods must be a list/) }));
    expect(ids(await t.client.list('staticpods'))).toEqual(before);
    await t.writeConfig(machineConfig([pod('nginx')]));
    await eventually(async () => expect((await t.client.get('machineconfigstatus', 'machine-config')).spec).toMatchObject({ error: '', pods: 1 }));
    expect(ids(await t.client.list('staticpods'))).toEqual(before);
  });

  it('reports a pod nested too deep to store as invalid, by name only, and keeps serving the others', async () => {
    let deep: Json = {};
    for (let i = 0; i < 40; i++) deep = { nested: deep };
    const tooDeep = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'deep' }, spec: { containers: [{ name: 'c', image: 'busybox' }], extra: deep } };
    // The deep part may also be where the name is kept from: only strings are.
    const deepKind = { apiVersion: 'v1', kind: deep, metadata: { name: 'deepkind' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } };
    await t.writeConfig(machineConfig([pod('nginx'), tooDeep, deepKind]));
    await eventually(async () => expect((await t.client.list('staticpods')).map((r) => r.metadata.id).sort()).toEqual(['default-deep', 'default-deepkind', 'default-nginx']));
    const bad = await t.client.get('staticpods', 'default-deep');
    const status = { phase: 'Failed', reason: 'InvalidPod', message: 'invalid pod: nested deeper than 32 levels' };
    expect(bad.spec).toEqual({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'deep', namespace: null }, status });
    expect(bad.metadata.labels).toEqual({ 'cosi-pods.dev/invalid': 'true' });
    expect((await t.client.get('staticpods', 'default-deepkind')).spec).toEqual({ apiVersion: 'v1', kind: null, metadata: { name: 'deepkind', namespace: null }, status });
    const served = (await (await fetch(t.node.manifests.url)).json()) as { items: { metadata: { name: string } }[] };
    expect(served.items.map((p) => p.metadata.name)).toEqual(['nginx']);
    await t.writeConfig(machineConfig([pod('nginx')]));
    await eventually(async () => expect((await t.client.list('staticpods')).length).toBe(1));
  });

  it('reports an invalid pod with the kubelet message and a column, never serves it, and keeps the valid ones', async () => {
    const broken = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'broken' }, spec: {} };
    await t.writeConfig(machineConfig([pod('nginx'), broken, pod('extra', 'redis')]));
    await eventually(async () => expect((await t.client.list('staticpods')).length).toBe(3));
    const bad = await t.client.get('staticpods', 'default-broken');
    expect(bad.spec).toMatchObject({ status: { phase: 'Failed', reason: 'InvalidPod', message: 'invalid pod: [spec.containers: Required value]' } });
    expect(bad.metadata.labels).toEqual({ 'cosi-pods.dev/invalid': 'true' });
    expect((await t.client.get('machineconfigstatus', 'machine-config')).spec).toMatchObject({ error: '', invalidPods: 1 });
    const res = await fetch(t.node.manifests.url);
    const served = (await res.json()) as { items: { metadata: { name: string } }[] };
    expect(served.items.map((p) => p.metadata.name).sort()).toEqual(['extra', 'nginx']);
    await eventually(async () => expect((await t.client.list('podstatus')).map((r) => r.metadata.id)).toEqual([`default/extra-${NODE}`, `default/nginx-${NODE}`]), 20_000);
    await t.writeConfig(machineConfig([pod('nginx')]));
    await eventually(async () => expect((await t.client.list('staticpods')).length).toBe(1));
  });

  it('reads KubeStaticPodConfig documents (ID = name) and makes control-plane pods on controlplane nodes', async () => {
    const doc = { apiVersion: 'v1alpha1', kind: 'KubeStaticPodConfig', name: 'agent', pod: pod('agent', 'agent:1', 'monitoring') };
    await t.writeConfig(machineConfig([pod('nginx')], { type: 'controlplane', docs: [doc] }));
    await eventually(async () =>
      expect((await t.client.list('staticpods')).map((r) => r.metadata.id)).toEqual(['agent', 'default-nginx', 'kube-apiserver', 'kube-controller-manager', 'kube-scheduler']),
    );
    const api = await t.client.get('staticpods', 'kube-apiserver');
    expect(api.spec).toMatchObject({
      metadata: { namespace: 'kube-system', labels: { tier: 'control-plane', 'k8s-app': 'kube-apiserver', 'app.kubernetes.io/managed-by': 'Talos', 'app.kubernetes.io/version': 'v1.34.1' } },
    });
    await eventually(async () => expect((await t.client.list('podstatus')).map((r) => r.metadata.id)).toContain(`kube-system/kube-apiserver-${NODE}`), 20_000);
    await t.writeConfig(machineConfig([pod('nginx')]));
    await eventually(async () => expect((await t.client.list('staticpods')).length).toBe(1));
  });
});

describe('the kubelet fails and recovers', () => {
  // A test that fails half-way does not leave the kubelet failing for the next one.
  afterEach(() => t.sim.recover());

  it.each([
    ['stop', 'KubeletUnreachable'],
    ['hang', 'KubeletTimeout'],
    ['garbage', 'KubeletBadResponse'],
    ['error', 'KubeletHTTPError'],
    ['wrong-kind', 'KubeletBadResponse'],
    ['oversized', 'KubeletBadResponse'],
  ] as const)('%s: keeps the last statuses, marks them stale (%s), then fresh again', async (mode, reason) => {
    await eventually(async () => expect(ready(await t.client.get('podstatus', `default/nginx-${NODE}`))).toBe('True'), 20_000);
    const good = await t.client.get('podstatus', `default/nginx-${NODE}`);
    t.sim.fail(mode);
    const stale = await eventually(async () => {
      const r = await t.client.get('podstatus', `default/nginx-${NODE}`);
      expect(r.metadata.labels['cosi-pods.dev/stale']).toBe('true');
      return r;
    }, 20_000);
    const conditions = (stale.spec as { conditions: { type: string; reason?: string; message?: string; lastProbeTime?: string }[] }).conditions;
    expect(conditions.find((c) => c.type === 'Ready')).toEqual((good.spec as { conditions: unknown[] }).conditions.find((c) => (c as { type: string }).type === 'Ready'));
    const marker = conditions.find((c) => c.type === 'Stale');
    expect(marker?.reason, marker?.message).toBe(reason);
    expect(marker?.lastProbeTime).toEqual(expect.any(String));
    t.sim.recover();
    await eventually(async () => {
      const r = await t.client.get('podstatus', `default/nginx-${NODE}`);
      expect(r.metadata.labels).toEqual({});
      expect(r.spec).toEqual(good.spec);
    }, 20_000);
  });
});
