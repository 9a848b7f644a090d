// The kubelet status poller against the kubelet simulator over real HTTPS with client certificates.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeletPoller } from '../server/kubelet/poller.js';
import { Registry } from '../server/resources/registry.js';
import { registerK8sTypes, STALE_LABEL } from '../server/resources/k8s.js';
import { MemoryStore } from '../server/store/memory.js';
import { createLogger } from '../shared/log.js';
import { issueClientCert } from '../shared/pki.js';
import { eventually, pod, STATUSES } from './harness.js';
import { KubeletSimulator } from './kubelet-sim/kubelet.js';
import { makeKubeletPki, NODE, type KubeletPki } from './pipeline-harness.js';

let kpki: KubeletPki;
let manifest: Server;
let sim: KubeletSimulator;
let podList = { apiVersion: 'v1', kind: 'PodList', items: [pod('nginx')] };

beforeAll(async () => {
  kpki = await makeKubeletPki();
  manifest = createServer((_req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(podList)));
  await new Promise<void>((r) => manifest.listen(0, '127.0.0.1', () => r()));
  sim = await KubeletSimulator.start({
    nodeName: NODE,
    staticPodURL: `http://127.0.0.1:${(manifest.address() as AddressInfo).port}/`,
    tls: { certPem: kpki.serving.certPem, keyPem: kpki.serving.keyPem, clientCaPem: kpki.ca.certPem },
    stepMs: 50,
    httpCheckFrequencyMs: 50,
  });
});
afterAll(async () => {
  await sim.stop();
  manifest.closeAllConnections();
  await new Promise((r) => manifest.close(r));
});

function setup(overrides: { serverName?: string; certPem?: string; keyPem?: string } = {}) {
  const store = new MemoryStore();
  registerK8sTypes(new Registry(store));
  const lines: string[] = [];
  const poller = new KubeletPoller({
    url: sim.url,
    caPem: kpki.ca.certPem,
    certPem: overrides.certPem ?? kpki.client.certPem,
    keyPem: overrides.keyPem ?? kpki.client.keyPem,
    serverName: overrides.serverName ?? NODE,
    intervalMs: 100,
    minBackoffMs: 20,
    timeoutMs: 1000,
    store,
    log: createLogger({ write: (l) => lines.push(l) }),
  });
  return { store, lines, poller };
}

describe('kubelet poller', () => {
  it('mirrors only static pods (config.source file or http) as <namespace>/<name>', async () => {
    const { store, poller } = setup();
    poller.start();
    await eventually(() => expect(store.list(STATUSES).map((r) => r.metadata.id)).toEqual([`default/nginx-${NODE}`]));
    poller.stop();
  });

  it('destroys statuses the kubelet no longer reports', async () => {
    const { store, poller } = setup();
    poller.start();
    await eventually(() => expect(store.list(STATUSES).length).toBe(1));
    podList = { ...podList, items: [] };
    await sim.pollNow();
    await eventually(() => expect(store.list(STATUSES)).toEqual([]));
    podList = { ...podList, items: [pod('nginx')] };
    await sim.pollNow();
    poller.stop();
  });

  it('verifies the kubelet certificate against the server name, and logs a TLS failure once, not per retry', async () => {
    const { store, lines, poller } = setup({ serverName: 'some-other-node' });
    poller.start();
    await eventually(() => expect(lines.filter((l) => l.includes('cannot read the kubelet')).length).toBe(1));
    await new Promise((r) => setTimeout(r, 300));
    poller.stop();
    const warnings = lines.filter((l) => l.includes('cannot read the kubelet'));
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toContain('"reason":"KubeletTLSError"');
    expect(store.list(STATUSES)).toEqual([]);
  });

  it('is refused by the kubelet without a certificate of the cluster CA', async () => {
    const { generateCa } = await import('../shared/pki.js');
    const other = await issueClientCert(await generateCa(), { commonName: 'intruder', organizations: ['system:masters'] });
    const { lines, poller } = setup({ certPem: other.certPem, keyPem: other.keyPem });
    poller.start();
    await eventually(() => expect(lines.some((l) => l.includes('cannot read the kubelet'))).toBe(true));
    poller.stop();
  });

  it('keeps the last status, marked stale, when one reported status is too deep to store, and logs it once', async () => {
    const { store, lines, poller } = setup();
    poller.start();
    await eventually(() => expect(store.list(STATUSES).length).toBe(1));
    const good = store.list(STATUSES)[0]?.spec as { phase?: string };
    sim.fail('deep-status');
    await eventually(() => expect(store.list(STATUSES)[0]?.metadata.labels[STALE_LABEL]).toBe('true'));
    const stale = store.list(STATUSES)[0]?.spec as { phase?: string; deep?: unknown; conditions: { type: string; reason?: string; message?: string }[] };
    expect(stale.phase).toBe(good.phase);
    expect(stale.deep).toBeUndefined();
    expect(stale.conditions.find((c) => c.type === 'Stale')).toMatchObject({ reason: 'KubeletBadResponse', message: expect.stringMatching(/nested deeper than 32 levels/) });
    await new Promise((r) => setTimeout(r, 300));
    sim.recover();
    await eventually(() => expect(store.list(STATUSES)[0]?.metadata.labels).toEqual({}));
    poller.stop();
    expect(lines.filter((l) => l.includes('cannot be stored')).length).toBe(1);
  });

  it('marks statuses stale on failure and clears the mark on recovery, logging each change of state once', async () => {
    const { store, lines, poller } = setup();
    poller.start();
    await eventually(() => expect(store.list(STATUSES).length).toBe(1));
    sim.fail('error');
    await eventually(() => expect(store.list(STATUSES)[0]?.metadata.labels[STALE_LABEL]).toBe('true'));
    const staleVersion = store.list(STATUSES)[0]?.metadata.version;
    await new Promise((r) => setTimeout(r, 300));
    // Retries with the same failure change nothing (no version churn).
    expect(store.list(STATUSES)[0]?.metadata.version).toBe(staleVersion);
    sim.recover();
    await eventually(() => expect(store.list(STATUSES)[0]?.metadata.labels).toEqual({}));
    poller.stop();
    expect(lines.filter((l) => l.includes('cannot read the kubelet')).length).toBe(1);
    expect(lines.filter((l) => l.includes('kubelet status is fresh again')).length).toBe(1);
  });
});
