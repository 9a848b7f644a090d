// machine.MachineService/ApplyConfiguration against a real cosid with its machine config file, over real mTLS:
// Talos's modes (NO_REBOOT, AUTO, TRY, STAGED; REBOOT refused), the dry run and its diff, os:admin only (and the
// MachineConfig resources readable by os:admin only), one apply at a time, the optimistic version, validation
// before anything changes, the file written atomically (mode kept, no second reload), an unwritable file, the audit
// line and the metrics, and `buf curl` with only our .proto files.
import * as grpc from '@grpc/grpc-js';
import { execFile, spawnSync } from 'node:child_process';
import { chmod, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { connect, type CosiResource, type WatchEvent } from '../client/index.js';
import { issueClientCert } from '../shared/pki.js';
import { ApplyMode, type Json } from '../shared/wire.js';
import { eventually, pod } from './harness.js';
import { machineConfig } from './pipeline-harness.js';
import { expectError, expectOk, startConfigNode, type ConfigNode } from './apply-config-helpers.js';

const MC = 'MachineConfigs.config.talos.dev';
const A = machineConfig([pod('web', 'nginx:1'), pod('db', 'postgres:15')]);
const B = machineConfig([pod('web', 'nginx:2'), pod('cache', 'redis:7')]);
const C = machineConfig([pod('web', 'nginx:3')]);

let n: ConfigNode;
beforeAll(async () => {
  n = await startConfigNode(A);
});
afterAll(async () => {
  await n?.close();
});
// Every test starts from A, saved and running, whatever the one before left.
beforeEach(async () => {
  await reset();
});

/** The StaticPods as id=image. */
async function pods(node: ConfigNode = n): Promise<string[]> {
  return (await node.client.list('staticpods')).map((r) => `${r.metadata.id}=${imageOf(r.spec)}`).sort();
}

function imageOf(spec: Json): string {
  const s = spec as { spec?: { containers?: { image?: string }[] } } | null;
  return s?.spec?.containers?.[0]?.image ?? '';
}

async function config(id: 'v1alpha1' | 'persistent', node: ConfigNode = n): Promise<CosiResource> {
  return node.client.get(MC, id);
}

/** Puts the node back on A (saved and running), as a hand edit would not: through the API. */
async function reset(): Promise<void> {
  expectOk(await n.apply({ text: A, mode: ApplyMode.NO_REBOOT }));
  expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);
}

describe('modes', () => {
  it('NO_REBOOT applies now and saves: a StaticPod watch event, MachineConfig v1alpha1 and persistent, the file', async () => {
    const events: WatchEvent[] = [];
    const abort = new AbortController();
    const watching = (async () => {
      for await (const e of n.client.watchIter('staticpods', { bootstrap: true, signal: abort.signal })) events.push(e);
    })().catch(() => {});
    await eventually(() => expect(events.some((e) => e.type === 'bootstrapped')).toBe(true));
    const before = (await config('v1alpha1')).metadata.version;

    const m = expectOk(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT }));
    expect(m).toMatchObject({ metadata: { hostname: 'apply-node' }, mode: ApplyMode.NO_REBOOT, modeDetails: 'Applied configuration without a reboot', warnings: [] });
    // The watcher sees the change: web updated, db gone, cache new.
    await eventually(() => {
      const live = events.slice(events.findIndex((e) => e.type === 'bootstrapped') + 1);
      expect(live.map((e) => `${e.type}:${e.resource?.metadata.id ?? ''}`).sort()).toEqual(['created:default-cache', 'destroyed:default-db', 'updated:default-web']);
    });
    abort.abort();
    await watching;
    expect(await pods()).toEqual(['default-cache=redis:7', 'default-web=nginx:2']);
    const running = await config('v1alpha1');
    expect(running.spec).toBe(B);
    expect(running.metadata.version).toBe(before + 1);
    expect(running.metadata.namespace).toBe('config');
    expect((await config('persistent')).spec).toBe(B);
    expect(await readFile(n.configPath, 'utf8')).toBe(B);
    await reset();
  });

  it('AUTO does the same and answers NO_REBOOT; REBOOT is refused with Talos 1.14 words and changes nothing', async () => {
    const m = expectOk(await n.apply({ text: C, mode: ApplyMode.AUTO }));
    expect(m.mode).toBe(ApplyMode.NO_REBOOT);
    expect(m.modeDetails).toBe('Applied configuration without a reboot');
    expect(await pods()).toEqual(['default-web=nginx:3']);
    expect(await readFile(n.configPath, 'utf8')).toBe(C);

    const e = expectError(await n.apply({ text: A, mode: ApplyMode.REBOOT }));
    expect(e).toMatchObject({ code: grpc.status.UNIMPLEMENTED, details: 'the REBOOT mode is not supported, please use AUTO or NO_REBOOT' });
    expect(await pods()).toEqual(['default-web=nginx:3']);
    await reset();
  });

  it('TRY applies without saving and, after its timeout, the previous config runs again (counted)', async () => {
    const reverts = await n.metric('cosi_config_try_reverts_total');
    const m = expectOk(await n.apply({ text: B, mode: ApplyMode.TRY, tryTimeoutMs: 400 }));
    expect(m.mode).toBe(ApplyMode.TRY);
    expect(m.modeDetails).toBe("Applied configuration without a reboot\nThe config is applied in 'try' mode and will be automatically reverted back in 400ms");
    expect(await pods()).toEqual(['default-cache=redis:7', 'default-web=nginx:2']);
    expect((await config('v1alpha1')).spec).toBe(B);
    // Not saved: persistent and the file still hold A.
    expect((await config('persistent')).spec).toBe(A);
    expect(await readFile(n.configPath, 'utf8')).toBe(A);

    await eventually(async () => expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']));
    expect((await config('v1alpha1')).spec).toBe(A);
    expect(await n.metric('cosi_config_try_reverts_total')).toBe(reverts + 1);
    expect(n.logs.some((l) => l['msg'] === 'try mode timed out: the previous machine config is running again')).toBe(true);
  });

  it('TRY confirmed by a later NO_REBOOT stays, past its timeout', async () => {
    const reverts = await n.metric('cosi_config_try_reverts_total');
    expectOk(await n.apply({ text: B, mode: ApplyMode.TRY, tryTimeoutMs: 200 }));
    expectOk(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT }));
    expect(await readFile(n.configPath, 'utf8')).toBe(B);
    // A second try, longer than the first: when it reverts, the first one's timeout has long passed.
    const started = Date.now();
    expectOk(await n.apply({ text: C, mode: ApplyMode.TRY, tryTimeoutMs: 500 }));
    expect(await pods()).toEqual(['default-web=nginx:3']);
    await eventually(async () => expect(await n.metric('cosi_config_try_reverts_total')).toBe(reverts + 1));
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
    // It came back to the confirmed B, not to A.
    expect(await pods()).toEqual(['default-cache=redis:7', 'default-web=nginx:2']);
    expect((await config('v1alpha1')).spec).toBe(B);
    await reset();
  });

  it('STAGED saves without applying (persistent shows it, the file holds it, no reload), and the next start applies it', async () => {
    const reloads = await n.metric('cosi_config_reloads_total', { outcome: 'applied' });
    const m = expectOk(await n.apply({ text: C, mode: ApplyMode.STAGED }));
    expect(m).toMatchObject({ mode: ApplyMode.STAGED, modeDetails: 'Staged configuration to be applied after the next reboot' });
    expect(await readFile(n.configPath, 'utf8')).toBe(C);
    expect((await config('persistent')).spec).toBe(C);
    expect((await config('v1alpha1')).spec).toBe(A);
    expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);

    // The next change to the file is the first reload since: cosid's own write did not come back as one.
    await writeFile(n.configPath, B);
    await eventually(async () => expect(await pods()).toEqual(['default-cache=redis:7', 'default-web=nginx:2']));
    expect(await n.metric('cosi_config_reloads_total', { outcome: 'applied' })).toBe(reloads + 1);

    // Staged again, then a restart on the same folder: the staged config runs.
    expectOk(await n.apply({ text: C, mode: ApplyMode.STAGED }));
    const other = await startConfigNode('', { pki: n.pki, dir: n.dir });
    try {
      // Two cosids on one file is not a set-up to run; here the first keeps serving its running config meanwhile.
      expect(await pods(other)).toEqual(['default-web=nginx:3']);
      expect((await config('v1alpha1', other)).spec).toBe(C);
      expect((await config('persistent', other)).spec).toBe(C);
    } finally {
      await other.stop();
    }
    await reset();
  });
});

describe('dry run', () => {
  it('changes nothing and shows the unified diff of the running config against the new one', async () => {
    const version = (await config('v1alpha1')).metadata.version;
    const m = expectOk(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT, dryRun: true }));
    expect(m.mode).toBe(ApplyMode.NO_REBOOT);
    const [head, diff] = m.modeDetails.split('Config diff:\n\n');
    expect(head).toBe('Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\n');
    expect(diff?.split('\n').slice(0, 2)).toEqual(['--- a', '+++ b']);
    expect(diff).toMatch(/^- +image: nginx:1$/m);
    expect(diff).toMatch(/^\+ +image: nginx:2$/m);
    expect(diff).toMatch(/^\+ +image: redis:7$/m);
    expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);
    expect(await readFile(n.configPath, 'utf8')).toBe(A);
    expect((await config('v1alpha1')).metadata.version).toBe(version);

    const staged = expectOk(await n.apply({ text: B, mode: ApplyMode.STAGED, dryRun: true }));
    expect(staged.modeDetails).toMatch(/^Dry run summary:\nStaged configuration to be applied after the next reboot \(skipped in dry-run\)\.\nConfig diff:\n\n--- a\n\+\+\+ b\n/);
    expect((await config('persistent')).spec).toBe(A);

    const same = expectOk(await n.apply({ text: A, mode: ApplyMode.AUTO, dryRun: true }));
    expect(same.modeDetails).toBe('Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\nConfig diff:\n\nNo changes.');
  });
});

describe('who may', () => {
  let operator: { certPem: string; keyPem: string };
  beforeAll(async () => {
    operator = await issueClientCert(n.pki.ca, { commonName: 'ops', organizations: ['os:operator'] });
  });

  it('refuses the apply to os:reader and os:operator, and changes nothing', async () => {
    for (const cert of [n.pki.reader, operator]) {
      const e = expectError(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT }, cert));
      expect(e.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(e.details).toMatch(/^not authorized: ApplyConfiguration needs role os:admin/);
      // Even a dry run: the diff would show the config.
      expect(expectError(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT, dryRun: true }, cert)).code).toBe(grpc.status.PERMISSION_DENIED);
    }
    expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);
    expect(await readFile(n.configPath, 'utf8')).toBe(A);
  });

  it('lets only os:admin read MachineConfig (Get, List, Watch); a reader listing every type never sees it', async () => {
    for (const cert of [n.pki.reader, operator]) {
      const c = connect({ endpoint: n.endpoint, caPem: n.pki.ca.certPem, certPem: cert.certPem, keyPem: cert.keyPem });
      try {
        for (const read of [() => c.get('mc', 'v1alpha1'), () => c.list('machineconfig'), () => c.watchIter('mcs', { reconnect: false }).next()]) {
          await expect(read()).rejects.toMatchObject({ kind: 'permission-denied', message: expect.stringContaining('sensitive') });
        }
        // Every registered type, in its default namespace: MachineConfig is refused, the rest answers without it.
        const defs = await c.definitions();
        expect(defs.find((d) => d.type === MC)).toMatchObject({ sensitive: true, aliases: expect.arrayContaining(['machineconfig', 'mc', 'mcs']) });
        for (const d of defs) {
          if (d.type === MC) continue;
          const items = await c.list(d.type, { namespace: d.defaultNamespace });
          // The config's own text (its first line) appears in no other resource.
          expect(JSON.stringify(items)).not.toContain('version: v1alpha1');
          expect(items.every((r) => r.metadata.type !== MC)).toBe(true);
        }
      } finally {
        c.close();
      }
    }
    // os:admin reads it, as the text given.
    const running = await n.client.get('mc', 'v1alpha1');
    expect(running.spec).toBe(A);
    // Talos's mark of a YAML spec that is the text itself (talosctl's patch and edit read it).
    expect(running.metadata.annotations).toEqual({ 'talos.dev/yaml-spec': '1' });
    expect((await n.client.list('mcs')).map((r) => r.metadata.id)).toEqual(['persistent', 'v1alpha1']);
  });
});

describe('concurrency', () => {
  it('takes one apply at a time: the others meanwhile get FailedPrecondition with Talos words', async () => {
    // A config with many pods takes a while to validate: the calls sent with it overlap.
    const big = machineConfig(Array.from({ length: 300 }, (_, i) => pod(`p${i}`, `img:${i}`)));
    const answers = await Promise.all(Array.from({ length: 4 }, () => n.apply({ text: big, mode: ApplyMode.NO_REBOOT })));
    const refused = answers.filter((a) => !a.ok).map(expectError);
    expect(answers.filter((a) => a.ok).length).toBeGreaterThanOrEqual(1);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    for (const e of refused) expect(e).toEqual({ code: grpc.status.FAILED_PRECONDITION, details: 'another apply configuration is already in progress', kind: 'failed-precondition' });
    expect((await n.client.list('staticpods')).length).toBe(300);
    await reset();
  });

  it('refuses a config made from a version that is no longer running, naming both; nothing changes', async () => {
    const read = (await config('v1alpha1')).metadata.version;
    expectOk(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT, version: read }));
    const now = (await config('v1alpha1')).metadata.version;
    expect(now).toBe(read + 1);
    const e = expectError(await n.apply({ text: C, mode: ApplyMode.NO_REBOOT, version: read }));
    expect(e).toMatchObject({ code: grpc.status.FAILED_PRECONDITION, kind: 'version-conflict' });
    expect(e.details).toContain(`made from version ${read} of ${MC}/v1alpha1, which is now at version ${now}`);
    expect(await pods()).toEqual(['default-cache=redis:7', 'default-web=nginx:2']);
    expect(await readFile(n.configPath, 'utf8')).toBe(B);
    const bad = expectError(await n.apply({ text: C, mode: ApplyMode.NO_REBOOT, version: Number.NaN }));
    expect(bad.code).toBe(grpc.status.INVALID_ARGUMENT);
    await reset();
  });
});

describe('validation before anything changes', () => {
  it('refuses a config with an invalid pod, naming the pod and the field; the running pods are untouched', async () => {
    const bad = machineConfig([pod('web', 'nginx:9'), { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'broken' }, spec: { containers: [{ name: 'c' }] } }]);
    for (const mode of [ApplyMode.NO_REBOOT, ApplyMode.TRY, ApplyMode.STAGED]) {
      const e = expectError(await n.apply({ text: bad, mode }));
      expect(e.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(e.details).toMatch(/^config:\d+ \(machine\.pods\[1\]\): static pod default-broken: invalid pod: \[spec\.containers\[0\]\.image: Required value\]; nothing was applied$/);
    }
    expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);
    expect(await readFile(n.configPath, 'utf8')).toBe(A);
    expect((await config('persistent')).spec).toBe(A);
  });

  it('gives YAML errors with line and column, unknown keys with a near one; refuses a YAML bomb and an oversized config', async () => {
    const yamlErr = expectError(await n.apply({ text: 'version: v1alpha1\nmachine:\n  pods: [\n', mode: ApplyMode.NO_REBOOT }));
    expect(yamlErr.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(yamlErr.details).toMatch(/^config:\d+:\d+: /);
    const typo = expectError(await n.apply({ text: 'version: v1alpha1\nmachine:\n  podz: []\n', mode: ApplyMode.NO_REBOOT }));
    expect(typo.details).toBe('config:3:3: unknown key machine.podz (did you mean machine.pods?)');
    const bomb = ['version: v1alpha1', 'a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 10; i++) bomb.push(`a${i}: &a${i} [${Array(10).fill(`*a${i - 1}`).join(', ')}]`);
    const bombErr = expectError(await n.apply({ text: bomb.join('\n') + '\n', mode: ApplyMode.NO_REBOOT }));
    expect(bombErr.code).toBe(grpc.status.INVALID_ARGUMENT);
    const huge = `${A}# ${'x'.repeat(4 << 20)}\n`;
    const hugeErr = expectError(await n.apply({ text: huge, mode: ApplyMode.NO_REBOOT }));
    expect(hugeErr).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: `config: machine config is larger than ${4 << 20} bytes` });
    expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);
    expect(await readFile(n.configPath, 'utf8')).toBe(A);
  });

  it('returns non-fatal findings as warnings (none on a dry run)', async () => {
    const withNetwork = machineConfig([pod('web', 'nginx:1'), pod('db', 'postgres:15')], { docs: [{ apiVersion: 'v1alpha1', kind: 'HostnameConfig', hostname: 'n1' }] });
    const dry = expectOk(await n.apply({ text: withNetwork, mode: ApplyMode.NO_REBOOT, dryRun: true }));
    expect(dry.warnings).toEqual([]);
    const m = expectOk(await n.apply({ text: withNetwork, mode: ApplyMode.NO_REBOOT }));
    expect(m.warnings).toEqual([expect.stringMatching(/^config:\d+: ignoring the HostnameConfig document \(a Talos document cosid does not model\)$/)]);
    await reset();
  });
});

describe('the saved config is the file', () => {
  it('is written atomically: a new file in place of the old, its mode kept, no temporary file left; a hand edit still works', async () => {
    await chmod(n.configPath, 0o640);
    const before = await stat(n.configPath);
    const statusVersion = async () => (await n.client.get('machineconfigstatus', 'machine-config')).metadata.version;
    const status = await statusVersion();
    expectOk(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT }));
    const after = await stat(n.configPath);
    expect(after.ino).not.toBe(before.ino);
    expect(after.mode & 0o7777).toBe(0o640);
    expect(await readdir(n.dir)).toEqual(['machine.yaml']);
    // The status was written once, by the apply; then a hand edit is the next load, and the only one.
    expect(await statusVersion()).toBe(status + 1);
    // As editors save: a new file renamed over the old one (a write in place could be read half done, a load of its own).
    await writeFile(join(n.dir, 'edit.tmp'), C);
    await rename(join(n.dir, 'edit.tmp'), n.configPath);
    await eventually(async () => expect(await pods()).toEqual(['default-web=nginx:3']));
    expect(await statusVersion()).toBe(status + 2);
    expect((await config('persistent')).spec).toBe(C);
    expect((await config('v1alpha1')).spec).toBe(C);
    await reset();
  });

  it('answers FailedPrecondition when the file cannot be written (its folder immutable), and changes nothing', async (ctx) => {
    if (spawnSync('chattr', ['+i', n.dir]).status !== 0) ctx.skip();
    try {
      for (const mode of [ApplyMode.NO_REBOOT, ApplyMode.STAGED]) {
        const e = expectError(await n.apply({ text: B, mode }));
        expect(e).toMatchObject({ code: grpc.status.FAILED_PRECONDITION, kind: 'failed-precondition' });
        expect(e.details).toMatch(new RegExp(`^the machine config file ${n.configPath} cannot be written \\(cannot create a file in ${n.dir}: EPERM\\); nothing was changed$`));
      }
      expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);
      expect((await config('v1alpha1')).spec).toBe(A);
      expect((await config('persistent')).spec).toBe(A);
      // TRY writes no file: it works.
      expectOk(await n.apply({ text: B, mode: ApplyMode.TRY, tryTimeoutMs: 60_000 }));
    } finally {
      spawnSync('chattr', ['-i', n.dir]);
    }
    expect(await readFile(n.configPath, 'utf8')).toBe(A);
    await reset();
  });
});

describe('audit and metrics', () => {
  it('names who applied what: subject, roles, mode, dry run, outcome, pods added/changed/removed', async () => {
    expectOk(await n.apply({ text: B, mode: ApplyMode.NO_REBOOT }));
    const line = n.logs.filter((l) => l['msg'] === 'audit' && l['method'] === 'ApplyConfiguration').at(-1);
    expect(line).toMatchObject({
      peer: expect.stringContaining('O=os:admin'),
      roles: ['os:admin'],
      mode: 'no-reboot',
      dryRun: false,
      outcome: 'OK',
      added: { count: 1, first: ['default-cache'] },
      changed: { count: 1, first: ['default-web'] },
      removed: { count: 1, first: ['default-db'] },
    });
    expectError(await n.apply({ text: A, mode: ApplyMode.TRY }, n.pki.reader));
    expect(n.logs.filter((l) => l['msg'] === 'audit' && l['method'] === 'ApplyConfiguration').at(-1)).toMatchObject({ roles: ['os:reader'], mode: 'try', outcome: 'PERMISSION_DENIED' });
    expect(await n.metric('cosi_config_applies_total', { mode: 'try', outcome: 'permission-denied' })).toBeGreaterThanOrEqual(1);
    expect(await n.metric('cosi_config_applies_total', { mode: 'no-reboot', outcome: 'applied' })).toBeGreaterThanOrEqual(1);
    expect(await n.metric('cosi_config_applies_total', { mode: 'no-reboot', outcome: 'dry-run' })).toBeGreaterThanOrEqual(1);
    await reset();
  });
});

describe('a generic client with our machine.proto', () => {
  it('calls ApplyConfiguration (a dry run) with buf curl', async () => {
    const run = promisify(execFile);
    const buf = join(process.cwd(), 'node_modules', '.bin', 'buf');
    const pkiDir = n.pki.dir;
    const body = { data: Buffer.from(B).toString('base64'), mode: 'AUTO', dryRun: true };
    const { stdout } = await run(
      buf,
      ['curl', '--protocol', 'grpc', '--schema', 'proto', '--cacert', join(pkiDir, 'ca.crt'), '--cert', join(pkiDir, 'admin.crt'), '--key', join(pkiDir, 'admin.key'), '--data', JSON.stringify(body), `https://${n.endpoint}/machine.MachineService/ApplyConfiguration`],
      { timeout: 30_000 },
    );
    const res = JSON.parse(stdout) as { messages: { metadata: { hostname: string }; mode: string; modeDetails: string }[] };
    expect(res.messages).toHaveLength(1);
    expect(res.messages[0]).toMatchObject({ metadata: { hostname: 'apply-node' }, mode: 'NO_REBOOT', modeDetails: expect.stringContaining('Config diff:\n\n--- a\n+++ b\n') });
    expect(await readFile(n.configPath, 'utf8')).toBe(A);
  });
});
