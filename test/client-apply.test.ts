// client.applyConfiguration against a real cosid with its machine config file, over real mTLS: the modes as plain
// strings, the dry run, the try timeout, expectedVersion (cosi-config-version), and failures as CosiError kinds.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, CosiError, type CosiClient } from '../client/index.js';
import { eventually, pod } from './harness.js';
import { machineConfig } from './pipeline-harness.js';
import { startConfigNode, type ConfigNode } from './apply-config-helpers.js';

const MC = 'MachineConfigs.config.talos.dev';
const A = machineConfig([pod('web', 'nginx:1')]);
const B = machineConfig([pod('web', 'nginx:2')]);

let n: ConfigNode;
let c: CosiClient;
beforeAll(async () => {
  n = await startConfigNode(A);
  c = n.client;
});
afterAll(async () => {
  await n?.close();
});

async function running(): Promise<{ text: unknown; version: number }> {
  const r = await c.get(MC, 'v1alpha1');
  return { text: r.spec, version: r.metadata.version };
}

async function failure(p: Promise<unknown>): Promise<CosiError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof CosiError)) throw new Error(`expected a CosiError, got ${String(err)}`);
  return err;
}

describe('client.applyConfiguration', () => {
  it('defaults to auto, answered as no-reboot, with plain fields', async () => {
    const r = await c.applyConfiguration(B);
    expect(r).toEqual({ node: 'apply-node', mode: 'no-reboot', modeDetails: 'Applied configuration without a reboot', warnings: [] });
    expect((await running()).text).toBe(B);
    expect(c.node).toBe('apply-node');
    await c.applyConfiguration(A, { mode: 'no-reboot' });
  });

  it('staged, try (with tryTimeoutMs, reverted) and a dry run', async () => {
    const staged = await c.applyConfiguration(B, { mode: 'staged' });
    expect(staged.mode).toBe('staged');
    expect((await c.get(MC, 'persistent')).spec).toBe(B);
    expect((await running()).text).toBe(A);
    await c.applyConfiguration(A, { mode: 'no-reboot' });

    const dry = await c.applyConfiguration(B, { mode: 'no-reboot', dryRun: true });
    expect(dry.modeDetails).toMatch(/^Dry run summary:\n[\s\S]*\n-\s+image: nginx:1\n\+\s+image: nginx:2\n/);
    expect((await running()).text).toBe(A);

    const tried = await c.applyConfiguration(B, { mode: 'try', tryTimeoutMs: 700 });
    expect(tried.mode).toBe('try');
    expect(tried.modeDetails).toContain("will be automatically reverted back in 700ms");
    expect((await running()).text).toBe(B);
    await eventually(async () => expect((await running()).text).toBe(A));
  });

  it('expectedVersion: the version read goes through; a stale one is a version-conflict and changes nothing', async () => {
    const { version } = await running();
    await c.applyConfiguration(B, { expectedVersion: version });
    const after = await running();
    expect(after).toEqual({ text: B, version: version + 1 });
    const err = await failure(c.applyConfiguration(A, { expectedVersion: version }));
    expect(err.kind).toBe('version-conflict');
    expect(err.message).toContain(String(version));
    expect(err.message).toContain(String(version + 1));
    expect(await running()).toEqual(after);
    await c.applyConfiguration(A);
  });

  it('refuses reboot, bad options and a bad config before or at the server; a reader gets permission-denied', async () => {
    const reboot = await failure(c.applyConfiguration(B, { mode: 'reboot' as 'auto' }));
    expect(reboot.kind).toBe('invalid-argument');
    expect(reboot.message).toBe('unknown apply mode "reboot": use auto, no-reboot, staged or try');
    expect((await failure(c.applyConfiguration(B, { mode: 'try', tryTimeoutMs: -1 }))).kind).toBe('invalid-argument');
    expect((await failure(c.applyConfiguration(B, { expectedVersion: 1.5 }))).kind).toBe('invalid-argument');
    const bad = await failure(c.applyConfiguration(machineConfig([pod('Bad_Name')])));
    expect(bad.kind).toBe('invalid-argument');
    expect(bad.message).toContain('metadata.name');

    const reader = connect({ endpoint: n.endpoint, caPem: n.pki.ca.certPem, certPem: n.pki.reader.certPem, keyPem: n.pki.reader.keyPem });
    try {
      const denied = await failure(reader.applyConfiguration(B));
      expect(denied.kind).toBe('permission-denied');
      expect(denied.message).toMatch(/ApplyConfiguration needs role os:admin/);
    } finally {
      reader.close();
    }
    const aborted = new AbortController();
    aborted.abort();
    expect((await failure(c.applyConfiguration(B, { signal: aborted.signal }))).kind).toBe('cancelled');
    expect((await running()).text).toBe(A);
  });
});
