// The kubelet simulator is faithful to the kubelet's HTTP interfaces (it is the one stand-in the tests use).
import { createServer, type Server } from 'node:http';
import { request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import type { Json } from '../shared/wire.js';
import { eventually, pod } from './harness.js';
import { KubeletSimulator } from '../node-sim/kubelet/kubelet.js';
import { makeKubeletPki, NODE, type KubeletPki } from './pipeline-harness.js';

let kpki: KubeletPki;
let manifest: Server;
let body = '';
const conditionalHeaders: (string | undefined)[] = [];
let fetches = 0;
let sim: KubeletSimulator;

beforeAll(async () => {
  kpki = await makeKubeletPki();
  manifest = createServer((req, res) => {
    fetches++;
    conditionalHeaders.push(req.headers['if-none-match'] ?? req.headers['if-modified-since']);
    // An ETag is offered, as cosid's manifest server does; the kubelet does not use it.
    res.writeHead(200, { ETag: `"${Buffer.from(body).length}"`, 'Content-Type': 'application/yaml' }).end(body);
  });
  await new Promise<void>((r) => manifest.listen(0, '127.0.0.1', () => r()));
  body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('nginx')] });
  sim = await KubeletSimulator.start({
    nodeName: NODE,
    staticPodURL: `http://127.0.0.1:${(manifest.address() as AddressInfo).port}/`,
    tls: { certPem: kpki.serving.certPem, keyPem: kpki.serving.keyPem, clientCaPem: kpki.ca.certPem },
    stepMs: 100,
    httpCheckFrequencyMs: 50,
  });
});
afterAll(async () => {
  await sim.stop();
  manifest.closeAllConnections();
  await new Promise((r) => manifest.close(r));
});

function get(withCert = true): Promise<{ status: number; body: string; server?: string }> {
  return new Promise((resolve, reject) => {
    const req = request(sim.url, { ca: kpki.ca.certPem, servername: NODE, ...(withCert ? { cert: kpki.client.certPem, key: kpki.client.keyPem } : {}), timeout: 2000 }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, server: String(res.headers['server'] ?? '') }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}

type PodJson = { metadata: { name: string; namespace: string; annotations: Record<string, string> }; status: { phase: string; startTime?: string; conditions: { type: string; status: string }[] } };

describe('kubelet simulator', () => {
  it('runs valid static pods as <name>-<node> with the kubelet annotations, through Pending, Running, Ready', async () => {
    const phases = new Set<string>();
    await eventually(async () => {
      const r = await get();
      expect(r.server).toBe('kubelet-simulator');
      const items = (JSON.parse(r.body) as { items: PodJson[] }).items;
      const nginx = items.find((p) => p.metadata.name === `nginx-${NODE}`);
      expect(nginx).toBeDefined();
      const ready = nginx?.status.conditions.find((c) => c.type === 'Ready')?.status;
      phases.add(`${nginx?.status.phase}/${ready}`);
      expect(nginx?.metadata.namespace).toBe('default');
      expect(nginx?.metadata.annotations['kubernetes.io/config.source']).toBe('http');
      expect(nginx?.metadata.annotations['kubernetes.io/config.mirror']).toEqual(expect.any(String));
      expect(ready).toBe('True');
      // A non-static pod (from the API) is listed too.
      expect(items.some((p) => p.metadata.annotations['kubernetes.io/config.source'] === 'api')).toBe(true);
    }, 10_000);
    expect([...phases][0]).toMatch(/^(Pending|Running)\/False$/);
  });

  it('polls without conditional headers, and an unchanged body leaves running pods alone', async () => {
    const startTime = async () => (JSON.parse((await get()).body) as { items: PodJson[] }).items.find((p) => p.metadata.name === `nginx-${NODE}`)?.status.startTime;
    const before = await startTime();
    const seen = fetches;
    await eventually(() => expect(fetches).toBeGreaterThan(seen + 2));
    expect(conditionalHeaders.every((h) => h === undefined)).toBe(true);
    expect(await startTime()).toBe(before);
  });

  it('rejects a whole manifest with one invalid pod: what runs keeps running, nothing new starts', async () => {
    const names = async () => (JSON.parse((await get()).body) as { items: PodJson[] }).items.map((p) => p.metadata.name);
    await eventually(async () => expect(await names()).toContain(`nginx-${NODE}`));
    const seen = fetches;
    body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('nginx'), { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'broken' }, spec: {} }, pod('cache', 'redis')] });
    await eventually(() => expect(fetches).toBeGreaterThan(seen + 2));
    expect(await names()).toContain(`nginx-${NODE}`);
    expect((await names()).some((n) => n.startsWith('broken') || n.startsWith('cache'))).toBe(false);
    body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('nginx')] });
  });

  it('removes a pod that left the manifest', async () => {
    body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('web')] });
    await eventually(async () => {
      const names = (JSON.parse((await get()).body) as { items: PodJson[] }).items.map((p) => p.metadata.name);
      expect(names).toContain(`web-${NODE}`);
      expect(names).not.toContain(`nginx-${NODE}`);
    });
  });

  it('stops every pod on an empty manifest body, as the kubelet does', async () => {
    const names = async () => (JSON.parse((await get()).body) as { items: PodJson[] }).items.map((p) => p.metadata.name);
    body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('solo')] });
    await eventually(async () => expect(await names()).toContain(`solo-${NODE}`));
    body = '';
    const staticPods = async () => (JSON.parse((await get()).body) as { items: PodJson[] }).items.filter((p) => p.metadata.annotations['kubernetes.io/config.source'] === 'http');
    await eventually(async () => expect(await staticPods()).toEqual([]));
    body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('nginx')] });
    await eventually(async () => expect(await names()).toContain(`nginx-${NODE}`));
  });

  it('answers 401 to a client without a certificate, as a kubelet with anonymous access off does', async () => {
    expect(await get(false)).toMatchObject({ status: 401, body: 'Unauthorized\n' });
  });

  it.each([
    ['garbage', (r: { status: number; body: string }) => expect(() => JSON.parse(r.body) as Json).toThrow()],
    ['error', (r: { status: number; body: string }) => expect(r.status).toBe(500)],
    ['wrong-kind', (r: { status: number; body: string }) => expect(JSON.parse(r.body)).toMatchObject({ kind: 'Status' })],
  ] as const)('fails with %s on request and recovers', async (mode, check) => {
    sim.fail(mode);
    check(await get());
    sim.recover();
    expect((await get()).status).toBe(200);
  });

  it('stops listening and listens again on the same port', async () => {
    sim.fail('stop');
    await expect(get()).rejects.toThrow();
    sim.recover();
    await eventually(async () => expect((await get()).status).toBe(200));
  });

  it('hangs without answering', async () => {
    sim.fail('hang');
    await expect(get()).rejects.toThrow(/timeout|socket hang up/);
    sim.recover();
  });
});
