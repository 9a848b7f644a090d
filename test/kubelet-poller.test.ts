// The kubelet status poller against the kubelet simulator over real HTTPS with client certificates.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { KubeletPoller } from '../server/kubelet/poller.js';
import { Registry } from '../server/resources/registry.js';
import { registerK8sTypes, STALE_LABEL } from '../server/resources/k8s.js';
import { MemoryStore } from '../server/store/memory.js';
import { createLogger } from '../shared/log.js';
import { issueClientCert } from '../shared/pki.js';
import { eventually, pod, STATUSES } from './harness.js';
import { KubeletSimulator } from '../node-sim/kubelet/kubelet.js';
import { makeKubeletPki, NODE, type KubeletPki } from './pipeline-harness.js';

let kpki: KubeletPki;
let manifest: Server;
let sim: KubeletSimulator;
const initialPodList = () => ({ apiVersion: 'v1', kind: 'PodList', items: [pod('nginx')] });
let podList = initialPodList();
/** Pollers started by setup(), stopped after each test (also when it fails half-way). */
const pollers: KubeletPoller[] = [];

beforeAll(async () => {
  kpki = await makeKubeletPki();
  manifest = createServer((_req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(podList)));
  await new Promise<void>((r) => manifest.listen(0, '127.0.0.1', () => r()));
});
// Each test gets its own kubelet and pod list: a fault or an edit one test makes never reaches the next.
beforeEach(async () => {
  podList = initialPodList();
  sim = await KubeletSimulator.start({
    nodeName: NODE,
    staticPodURL: `http://127.0.0.1:${(manifest.address() as AddressInfo).port}/`,
    tls: { certPem: kpki.serving.certPem, keyPem: kpki.serving.keyPem, clientCaPem: kpki.ca.certPem },
    stepMs: 50,
    httpCheckFrequencyMs: 50,
  });
});
afterEach(async () => {
  for (const p of pollers.splice(0)) p.stop();
  await sim.stop();
});
afterAll(async () => {
  manifest.closeAllConnections();
  await new Promise((r) => manifest.close(r));
});

/** Polls `times` more times now, each applied before the next: retries without waiting for the schedule. */
async function pollAgain(poller: KubeletPoller, times: number): Promise<void> {
  for (let i = 0; i < times; i++) {
    poller.pollSoon();
    await poller.settled();
  }
}

/** The "cannot read the kubelet" warnings, parsed. */
const readFailures = (lines: string[]) => lines.filter((l) => l.includes('cannot read the kubelet')).map((l) => JSON.parse(l) as { reason?: string; error?: string });

async function setup(overrides: { serverName?: string; certPem?: string; keyPem?: string } = {}) {
  const store = new MemoryStore();
  const registry = new Registry(store);
  registerK8sTypes(registry);
  await registry.published();
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
  pollers.push(poller);
  return { store, lines, poller };
}

describe('kubelet poller', () => {
  it('mirrors only static pods (config.source file or http) as <namespace>/<name>', async () => {
    const { store, poller } = await setup();
    poller.start();
    await eventually(async () => expect((await store.list(STATUSES)).map((r) => r.metadata.id)).toEqual([`default/nginx-${NODE}`]));
    poller.stop();
  });

  it('destroys statuses the kubelet no longer reports', async () => {
    const { store, poller } = await setup();
    poller.start();
    await eventually(async () => expect((await store.list(STATUSES)).length).toBe(1));
    podList = { ...podList, items: [] };
    await sim.pollNow();
    await eventually(async () => expect(await store.list(STATUSES)).toEqual([]));
    poller.stop();
  });

  it('verifies the kubelet certificate against the server name, and logs a TLS failure once, not per retry', async () => {
    const { store, lines, poller } = await setup({ serverName: 'some-other-node' });
    poller.start();
    await eventually(() => expect(readFailures(lines).length).toBe(1));
    // Three more polls, each failing the same way.
    await pollAgain(poller, 3);
    poller.stop();
    const warnings = readFailures(lines);
    expect(warnings.length).toBe(1);
    expect(warnings[0]?.reason).toBe('KubeletTLSError');
    // The certificate was checked against the server name the poller was given.
    expect(warnings[0]?.error).toContain('some-other-node');
    expect(await store.list(STATUSES)).toEqual([]);
  });

  it('is refused by the kubelet without a certificate of the cluster CA', async () => {
    const { generateCa } = await import('../shared/pki.js');
    const other = await issueClientCert(await generateCa(), { commonName: 'intruder', organizations: ['system:masters'] });
    const { store, lines, poller } = await setup({ certPem: other.certPem, keyPem: other.keyPem });
    poller.start();
    await eventually(() => expect(readFailures(lines).length).toBe(1));
    poller.stop();
    // Like the kubelet, the simulator completes the handshake and answers 401 to a certificate it does not trust.
    expect(readFailures(lines)[0]).toMatchObject({ reason: 'KubeletHTTPError', error: expect.stringMatching(/\b401\b/) });
    expect(await store.list(STATUSES)).toEqual([]);
  });

  it('keeps the last status, marked stale, when one reported status is too deep to store, and logs it once', async () => {
    const { store, lines, poller } = await setup();
    poller.start();
    await eventually(async () => expect((await store.list(STATUSES)).length).toBe(1));
    const good = (await store.list(STATUSES))[0]?.spec as { phase?: string };
    sim.fail('deep-status');
    await eventually(async () => expect((await store.list(STATUSES))[0]?.metadata.labels[STALE_LABEL]).toBe('true'));
    const stale = (await store.list(STATUSES))[0]?.spec as { phase?: string; deep?: unknown; conditions: { type: string; reason?: string; message?: string }[] };
    expect(stale.phase).toBe(good.phase);
    expect(stale.deep).toBeUndefined();
    expect(stale.conditions.find((c) => c.type === 'Stale')).toMatchObject({ reason: 'KubeletBadResponse', message: expect.stringMatching(/nested deeper than 32 levels/) });
    // Three more polls reporting the same status.
    await pollAgain(poller, 3);
    sim.recover();
    await eventually(async () => expect((await store.list(STATUSES))[0]?.metadata.labels).toEqual({}));
    poller.stop();
    expect(lines.filter((l) => l.includes('cannot be stored')).length).toBe(1);
  });

  it('marks statuses stale on failure and clears the mark on recovery, logging each change of state once', async () => {
    const { store, lines, poller } = await setup();
    poller.start();
    await eventually(async () => expect((await store.list(STATUSES)).length).toBe(1));
    sim.fail('error');
    await eventually(async () => expect((await store.list(STATUSES))[0]?.metadata.labels[STALE_LABEL]).toBe('true'));
    const staleVersion = (await store.list(STATUSES))[0]?.metadata.version;
    const marker = ((await store.list(STATUSES))[0]?.spec as { conditions: { type: string; reason?: string; message?: string }[] }).conditions.find((c) => c.type === 'Stale');
    expect(marker).toMatchObject({ reason: 'KubeletHTTPError', message: expect.stringMatching(/\b500\b/) });
    // Three more polls, each failing the same way, change nothing (no version churn).
    await pollAgain(poller, 3);
    expect((await store.list(STATUSES))[0]?.metadata.version).toBe(staleVersion);
    sim.recover();
    await eventually(async () => expect((await store.list(STATUSES))[0]?.metadata.labels).toEqual({}));
    poller.stop();
    expect(readFailures(lines).map((w) => w.reason)).toEqual(['KubeletHTTPError']);
    expect(lines.filter((l) => l.includes('kubelet status is fresh again')).length).toBe(1);
  });
});

// Each stale reason, from the fault that causes it (server/kubelet/poller.ts: reasons come from error codes).
describe('kubelet poller: the reason for each fault', () => {
  type Options = ConstructorParameters<typeof KubeletPoller>[0];

  /** A poller that polls only when told (one poll, applied, per `poll()`), and its "cannot read the kubelet" lines. */
  async function manual(overrides: Partial<Options> = {}) {
    const store = new MemoryStore();
    const registry = new Registry(store);
    registerK8sTypes(registry);
    await registry.published();
    const lines: string[] = [];
    const poller = new KubeletPoller({
      url: sim.url,
      caPem: kpki.ca.certPem,
      certPem: kpki.client.certPem,
      keyPem: kpki.client.keyPem,
      serverName: NODE,
      // No retry of its own within a test: every poll is one the test asks for.
      intervalMs: 600_000,
      minBackoffMs: 600_000,
      timeoutMs: 5000,
      store,
      log: createLogger({ write: (l) => lines.push(l) }),
      ...overrides,
    });
    const poll = async () => {
      poller.pollSoon();
      await poller.settled();
    };
    const failures = () => lines.filter((l) => l.includes('cannot read the kubelet')).map((l) => JSON.parse(l) as { reason: string; error: string });
    const staleCondition = async () =>
      ((await store.list(STATUSES))[0]?.spec as { conditions?: { type: string; reason?: string; message?: string }[] } | undefined)?.conditions?.find((c) => c.type === 'Stale');
    return { store, poller, poll, failures, staleCondition };
  }

  it.each([
    ['the kubelet answers 500', 'error', 'KubeletHTTPError', /^kubelet answered HTTP 500$/],
    ['the kubelet never answers', 'hang', 'KubeletTimeout', /^no (complete )?answer within 1000 ms$/],
    ['the answer is not JSON', 'garbage', 'KubeletBadResponse', /^response is not JSON$/],
    ['the answer is not a PodList', 'wrong-kind', 'KubeletBadResponse', /^response is not a PodList \(kind "Status"\)$/],
    ['the answer is too large', 'oversized', 'KubeletBadResponse', /^response is larger than 1048576 bytes$/],
    // Refused, or reset on the connection kept alive from the poll before.
    ['the kubelet is gone', 'stop', 'KubeletUnreachable', /^(ECONNREFUSED|ECONNRESET): /],
  ] as const)('%s: %s', async (_name, fault, reason, message) => {
    const { poller, poll, failures, staleCondition } = await manual({ timeoutMs: 1000, maxBodyBytes: 1 << 20 });
    try {
      await poll();
      expect(failures()).toEqual([]);
      expect(await staleCondition()).toBeUndefined();
      sim.fail(fault);
      await poll();
      expect(failures()).toEqual([expect.objectContaining({ reason, error: expect.stringMatching(message) })]);
      // The last status stays, marked stale with the same reason.
      expect(await staleCondition()).toMatchObject({ status: 'True', reason, message: expect.stringMatching(message) });
    } finally {
      poller.stop();
      sim.recover();
    }
  });

  it('KubeletTLSError when the kubelet certificate does not carry the server name', async () => {
    const { poller, poll, failures } = await manual({ serverName: 'some-other-node' });
    await poll();
    poller.stop();
    expect(failures()).toEqual([expect.objectContaining({ reason: 'KubeletTLSError', error: expect.stringMatching(/^ERR_TLS_CERT_ALTNAME_INVALID: /) })]);
  });

  it('KubeletTLSError when the kubelet certificate is not from the CA the poller trusts', async () => {
    const { generateCa } = await import('../shared/pki.js');
    const { poller, poll, failures } = await manual({ caPem: (await generateCa({ commonName: 'another CA' })).certPem });
    await poll();
    poller.stop();
    // The kubelet sends its certificate with the CA that signed it, which the poller does not trust.
    expect(failures()).toEqual([expect.objectContaining({ reason: 'KubeletTLSError', error: expect.stringMatching(/^SELF_SIGNED_CERT_IN_CHAIN: /) })]);
  });

  it('KubeletUnreachable when nothing listens at the URL', async () => {
    const { freePort } = await import('./pipeline-harness.js');
    const { poller, poll, failures } = await manual({ url: `https://127.0.0.1:${await freePort()}/pods/` });
    await poll();
    poller.stop();
    expect(failures()).toEqual([expect.objectContaining({ reason: 'KubeletUnreachable', error: expect.stringMatching(/^ECONNREFUSED: /) })]);
  });

  it('KubeletError, the fallback, for a failure whose code is not a known one (here: a URL that is not https)', async () => {
    const { poller, poll, failures } = await manual({ url: sim.url.replace(/^https:/, 'http:') });
    await poll();
    poller.stop();
    expect(failures()).toEqual([expect.objectContaining({ reason: 'KubeletError', error: expect.stringMatching(/^ERR_INVALID_PROTOCOL: /) })]);
  });
});
