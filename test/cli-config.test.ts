// cosictl get/apply-config/patch/edit of the machine config, as a user runs them: the compiled binary, a real cosid
// with its pipeline (config file -> StaticPods, a kubelet simulator) and real mTLS. A forwarding gRPC server between
// cosictl and cosid counts the calls and can make a change on the node between a patch's read and its apply.
import * as grpc from '@grpc/grpc-js';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import type { CosiResource, Json, WatchEvent } from '../client/index.js';
import { eventually, pod, runCli, type CliRun } from './harness.js';
import { freePort, machineConfig, startNode, type TestNode } from './pipeline-harness.js';

const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');
const MC = 'MachineConfigs.config.talos.dev';
const A = machineConfig([pod('web', 'nginx:1'), pod('db', 'postgres:15')]);
const B = machineConfig([pod('web', 'nginx:2'), pod('cache', 'redis:7')]);

let n: TestNode;
let endpoint: string;
let dir: string;
let fwd: Forwarder;

beforeAll(async () => {
  n = await startNode(A);
  endpoint = `127.0.0.1:${n.node.cosid.port}`;
  dir = await mkdtemp(join(tmpdir(), 'cosictl-config-'));
  fwd = await Forwarder.start(n, endpoint);
});
afterAll(async () => {
  await fwd?.stop();
  await n?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** Every test starts from A, running and saved, set through the API (and the StaticPods caught up). */
beforeEach(async () => {
  const running = await n.client.get(MC, 'v1alpha1');
  if (running.spec !== A) await n.client.applyConfiguration(A, { mode: 'no-reboot' });
  const saved = await n.client.get(MC, 'persistent');
  if (saved.spec !== A) await n.client.applyConfiguration(A, { mode: 'no-reboot' });
  await eventually(async () => expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']));
  fwd.beforeApply = undefined;
  fwd.calls.length = 0;
});

function cosictl(args: string[], opts: { env?: Record<string, string>; via?: string; context?: string } = {}): Promise<CliRun> {
  const base = ['--cosiconfig', n.pki.cosiconfig, '-e', opts.via ?? endpoint, ...(opts.context !== undefined ? ['--context', opts.context] : [])];
  return runCli([...base, ...args], opts.env !== undefined ? { env: opts.env } : {});
}

async function pods(): Promise<string[]> {
  return (await n.client.list('staticpods')).map((r) => `${r.metadata.id}=${imageOf(r.spec)}`).sort();
}

function imageOf(spec: Json): string {
  const s = spec as { spec?: { containers?: { image?: string }[] } } | null;
  return s?.spec?.containers?.[0]?.image ?? '';
}

async function config(id: 'v1alpha1' | 'persistent'): Promise<CosiResource> {
  return n.client.get(MC, id);
}

async function file(name: string, text: string, mode?: number): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  if (mode !== undefined) await chmod(path, mode);
  return path;
}

/** Collects StaticPod events after the bootstrap until stopped. */
async function watchPods(): Promise<{ events: () => string[]; stop: () => Promise<void> }> {
  const seen: WatchEvent[] = [];
  const abort = new AbortController();
  const running = (async () => {
    for await (const e of n.client.watchIter('staticpods', { bootstrap: true, signal: abort.signal })) seen.push(e);
  })().catch(() => {});
  await eventually(() => expect(seen.some((e) => e.type === 'bootstrapped')).toBe(true));
  return {
    events: () => seen.slice(seen.findIndex((e) => e.type === 'bootstrapped') + 1).map((e) => `${e.type}:${e.resource?.metadata.id ?? ''}=${e.resource === undefined ? '' : imageOf(e.resource.spec)}`),
    stop: async () => {
      abort.abort();
      await running;
    },
  };
}

/**
 * A gRPC server that forwards cosictl's calls to cosid (as the admin, with their request metadata) and records
 * them; `beforeApply` runs before an ApplyConfiguration goes on, to change the node in between.
 */
class Forwarder {
  readonly calls: string[] = [];
  beforeApply: (() => Promise<void>) | undefined;

  private constructor(
    private readonly server: grpc.Server,
    private readonly upstream: grpc.Client,
    readonly endpoint: string,
  ) {}

  static async start(node: TestNode, target: string): Promise<Forwarder> {
    const { pki } = node;
    const upstream = new grpc.Client(target, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(pki.admin.keyPem), Buffer.from(pki.admin.certPem)));
    const server = new grpc.Server();
    const raw = (b: Buffer) => b;
    let self: Forwarder | undefined;
    const unary = (method: string): grpc.handleUnaryCall<Buffer, Buffer> => (call, callback) => {
      self?.calls.push(method);
      void (async () => {
        if (method.endsWith('/ApplyConfiguration')) await self?.beforeApply?.();
        upstream.makeUnaryRequest(method, raw, raw, call.request, call.metadata.clone(), (err, res) => callback(err, res));
      })();
    };
    const stream = (method: string): grpc.handleServerStreamingCall<Buffer, Buffer> => (call) => {
      self?.calls.push(method);
      const up = upstream.makeServerStreamRequest(method, raw, raw, call.request, call.metadata.clone());
      up.on('data', (b: Buffer) => call.write(b));
      up.on('error', (err) => call.destroy(err));
      up.on('end', () => call.end());
    };
    server.register('/cosi.resource.State/Get', unary('/cosi.resource.State/Get'), raw, raw, 'unary');
    server.register('/machine.MachineService/ApplyConfiguration', unary('/machine.MachineService/ApplyConfiguration'), raw, raw, 'unary');
    server.register('/cosi.resource.State/List', stream('/cosi.resource.State/List'), raw, raw, 'serverStream');
    const creds = grpc.ServerCredentials.createSsl(Buffer.from(pki.ca.certPem), [{ private_key: Buffer.from(pki.server.keyPem), cert_chain: Buffer.from(pki.server.certPem) }], true);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (err, p) => (err !== null ? reject(err) : resolve(p))));
    self = new Forwarder(server, upstream, `127.0.0.1:${port}`);
    return self;
  }

  applies(): number {
    return this.calls.filter((c) => c.endsWith('/ApplyConfiguration')).length;
  }

  async stop(): Promise<void> {
    this.upstream.close();
    await new Promise<void>((r) => this.server.tryShutdown(() => r()));
  }
}

describe('cosictl get machineconfig', () => {
  it('-o yaml prints node, metadata and the config text as a block (spec: |), as talosctl does; mc is an alias', async () => {
    const r = await cosictl(['get', 'mc', '-o', 'yaml']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const docs = YAML.parseAllDocuments(r.stdout).map((d) => d.toJS() as { node: string; metadata: Record<string, unknown>; spec: string });
    expect(docs.map((d) => d.metadata['id'])).toEqual(['persistent', 'v1alpha1']);
    for (const d of docs) {
      expect(d.node).toBe('node-1');
      expect(d.metadata).toMatchObject({ namespace: 'config', type: MC, phase: 'running' });
      expect(d.spec).toBe(A);
    }
    // The text as a literal block, indented four spaces under spec, as talosctl prints it.
    expect(r.stdout).toContain(`spec: |\n${A.trimEnd().replace(/^/gm, '    ')}\n`);
    expect(r.stdout.match(/^---$/gm)?.length).toBe(1);
    const one = await cosictl(['get', 'machineconfig', 'v1alpha1']);
    expect(one.code).toBe(0);
    expect(one.stdout.split('\n')[1]).toMatch(/^node-1\s+config\s+MachineConfig\s+v1alpha1\s+\d+$/);
  });

  it('is refused to a reader (exit code 1, the server\'s words)', async () => {
    const r = await cosictl(['get', 'mc', 'v1alpha1'], { context: 'reader' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: .*not authorized: MachineConfigs\.config\.talos\.dev is sensitive and needs role os:admin/);
  });
});

describe('cosictl apply-config', () => {
  it('--mode no-reboot (and the default auto) applies and saves: StaticPod events, the file, both resources', async () => {
    const w = await watchPods();
    const f = await file('b.yaml', B);
    const r = await cosictl(['apply-config', '-f', f, '--mode', 'no-reboot']);
    expect(r).toEqual({ code: 0, stdout: '', stderr: 'Applied configuration without a reboot\n' });
    await eventually(() => expect(w.events().sort()).toEqual(['created:default-cache=redis:7', 'destroyed:default-db=postgres:15', 'updated:default-web=nginx:2']));
    await w.stop();
    expect((await config('v1alpha1')).spec).toBe(B);
    expect((await config('persistent')).spec).toBe(B);
    expect(await readFile(n.configPath, 'utf8')).toBe(B);

    const back = await cosictl(['apply', '-f', await file('a.yaml', A)]);
    expect(back).toEqual({ code: 0, stdout: '', stderr: 'Applied configuration without a reboot\n' });
    expect((await config('v1alpha1')).spec).toBe(A);
  });

  it('--mode staged saves without applying; --dry-run changes nothing and prints the diff', async () => {
    const f = await file('b.yaml', B);
    const dry = await cosictl(['apply-config', '-f', f, '--dry-run']);
    expect(dry.code).toBe(0);
    expect(dry.stderr).toContain('Dry run summary:');
    expect(dry.stderr).toContain('\n-            image: nginx:1\n+            image: nginx:2\n');
    expect((await config('v1alpha1')).spec).toBe(A);
    expect((await config('persistent')).spec).toBe(A);

    const staged = await cosictl(['apply-config', '-f', f, '-m', 'staged']);
    expect(staged.code).toBe(0);
    expect(staged.stderr).toMatch(/staged/i);
    expect((await config('persistent')).spec).toBe(B);
    expect((await config('v1alpha1')).spec).toBe(A);
    expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:1']);
  });

  it('--mode try --timeout applies without saving and reverts after the timeout; -p patches the file first', async () => {
    const f = await file('a.yaml', A);
    const patch = '[{"op": "replace", "path": "/machine/pods/0/spec/containers/0/image", "value": "nginx:try"}]';
    const r = await cosictl(['apply-config', '-f', f, '-p', patch, '--mode', 'try', '--timeout', '1500ms']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/will be automatically reverted back in 1\.5s/);
    await eventually(async () => expect(await pods()).toContain('default-web=nginx:try'));
    expect((await config('persistent')).spec).toBe(A);
    // The revert: the node goes back to A by itself.
    await eventually(async () => expect(await pods()).toContain('default-web=nginx:1'), 15_000);
    expect((await config('v1alpha1')).spec).toBe(A);
  });

  it('refuses a reader with the server\'s message (exit code 1), and an invalid pod naming the field', async () => {
    const f = await file('b.yaml', B);
    const reader = await cosictl(['apply-config', '-f', f], { context: 'reader' });
    expect(reader.code).toBe(1);
    expect(reader.stderr).toMatch(/^error: not authorized: ApplyConfiguration needs role os:admin; certificate .* has only os:reader\n$/);
    const bad = await cosictl(['apply-config', '-f', await file('bad.yaml', machineConfig([pod('Bad_Name', 'nginx:1')]))]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^error: .*Bad_Name.*metadata\.name/s);
    expect((await config('v1alpha1')).spec).toBe(A);
  });
});

describe('cosictl patch machineconfig', () => {
  it('keeps the comments and layout of what the patch does not touch, and other documents byte for byte', async () => {
    const other = ['---', '# the other document', 'apiVersion: v1alpha1', 'kind: KubeStaticPodConfig  # kept as written', 'name: extra', 'pod: {apiVersion: v1, kind: Pod, metadata: {name: extra}, spec: {containers: [{name: extra, image: "busybox:1"}]}}', ''].join('\n');
    const commented = `# my node\n${A.replace('type: worker', 'type: worker # the kind')}${other}`;
    await n.client.applyConfiguration(commented);
    const r = await cosictl(['patch', 'mc', '-p', 'machine:\n  pods:\n    - metadata: {name: db}\n      $patch: delete\n']);
    expect(r.code).toBe(0);
    const text = String((await config('v1alpha1')).spec);
    expect(text.startsWith('# my node\nversion: v1alpha1\nmachine:\n  type: worker # the kind\n')).toBe(true);
    expect(text.endsWith(other)).toBe(true);
    expect(text).not.toContain('postgres');
  });

  it('strategic merge with $patch: delete replaces a pod and removes another: the StaticPod watch sees it', async () => {
    const w = await watchPods();
    const patch = await file(
      'sm.yaml',
      [
        'machine:',
        '  pods:',
        '    - metadata: {name: db}',
        '      $patch: delete',
        '    - metadata: {name: web}',
        '      $patch: delete',
        '    - apiVersion: v1',
        '      kind: Pod',
        '      metadata: {name: web}',
        '      spec: {containers: [{name: web, image: "nginx:sm"}]}',
        '',
      ].join('\n'),
    );
    const r = await cosictl(['patch', 'machineconfig', '-p', `@${patch}`], { via: fwd.endpoint });
    expect(r).toEqual({ code: 0, stdout: '', stderr: `patched ${MC}/v1alpha1 at the node 127.0.0.1\nApplied configuration without a reboot\n` });
    await eventually(() => expect(w.events().sort()).toEqual(['destroyed:default-db=postgres:15', 'updated:default-web=nginx:sm']));
    await w.stop();
    // The version it read travelled with the apply.
    expect(fwd.calls.filter((c) => !c.endsWith('/List'))).toEqual(['/cosi.resource.State/Get', '/machine.MachineService/ApplyConfiguration']);
    expect(YAML.parse(await readFile(n.configPath, 'utf8'))).toEqual(YAML.parse(machineConfig([pod('web', 'nginx:sm')])));
  });

  it('RFC 6902 as JSON (--patch-file) and as a YAML list; the same patch again is skipped without an apply', async () => {
    const json = await file('j.json', '[{"op": "replace", "path": "/machine/pods/0/spec/containers/0/image", "value": "nginx:json"}]');
    const r1 = await cosictl(['patch', 'mc', '--patch-file', json]);
    expect(r1.code).toBe(0);
    await eventually(async () => expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:json']));
    const r2 = await cosictl(['patch', 'mc', '-p', '- op: replace\n  path: /machine/pods/1/spec/containers/0/image\n  value: postgres:yaml\n']);
    expect(r2.code).toBe(0);
    await eventually(async () => expect(await pods()).toEqual(['default-db=postgres:yaml', 'default-web=nginx:json']));

    const again = await cosictl(['patch', 'mc', '-p', '- op: replace\n  path: /machine/pods/1/spec/containers/0/image\n  value: postgres:yaml\n'], { via: fwd.endpoint });
    expect(again).toEqual({ code: 0, stdout: '', stderr: 'Apply was skipped: no changes detected.\n' });
    expect(fwd.applies()).toBe(0);
    expect(fwd.calls).toContain('/cosi.resource.State/Get');
  });

  it('a change on the node between the read and the apply is refused (version), and it is not overwritten', async () => {
    const concurrent = machineConfig([pod('web', 'nginx:other')]);
    fwd.beforeApply = async () => {
      await n.client.applyConfiguration(concurrent, { mode: 'no-reboot' });
    };
    const version = (await config('v1alpha1')).metadata.version;
    const r = await cosictl(['patch', 'mc', '-p', '[{"op": "replace", "path": "/machine/type", "value": "controlplane"}]'], { via: fwd.endpoint });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${version}`);
    expect(r.stderr).toContain(`${version + 1}`);
    expect(r.stderr).toMatch(/^error: /);
    expect((await config('v1alpha1')).spec).toBe(concurrent);
    expect(await readFile(n.configPath, 'utf8')).toBe(concurrent);
  });

  it('refuses RFC 6902 on a multi-document config, a bad patch, and a reader, changing nothing', async () => {
    const multi = machineConfig([pod('web', 'nginx:1'), pod('db', 'postgres:15')], { docs: [{ apiVersion: 'v1alpha1', kind: 'KubeStaticPodConfig', name: 'x' }] });
    const rfc = await cosictl(['apply-config', '-f', await file('multi.yaml', multi), '-p', '[{"op": "remove", "path": "/machine/pods/0"}]']);
    expect(rfc).toEqual({ code: 1, stdout: '', stderr: 'error: RFC 6902 patches are not supported for multi-document machine configuration\n' });
    const missing = await cosictl(['patch', 'mc', '-p', 'machine:\n  network:\n    $patch: delete\n'], { via: fwd.endpoint });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("patch delete: path 'machine.network' in document 'v1alpha1': lookup failed");
    expect(fwd.applies()).toBe(0);
    const reader = await cosictl(['patch', 'mc', '-p', '[{"op": "replace", "path": "/machine/type", "value": "controlplane"}]'], { context: 'reader' });
    expect(reader.code).toBe(1);
    expect(reader.stderr).toMatch(/^error: not authorized: MachineConfigs\.config\.talos\.dev is sensitive/);
    expect((await config('v1alpha1')).spec).toBe(A);
  });
});

describe('cosictl edit machineconfig', () => {
  it('applies what the editor saved ($COSI_EDITOR over $EDITOR)', async () => {
    const editor = await file('edit.sh', '#!/bin/sh\nset -e\nsed -i "s/nginx:1/nginx:edited/" "$1"\n', 0o755);
    const r = await cosictl(['edit', 'machineconfig'], { env: { COSI_EDITOR: editor, EDITOR: '/bin/false' } });
    expect(r).toEqual({ code: 0, stdout: '', stderr: 'Applied configuration without a reboot\n' });
    await eventually(async () => expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:edited']));
  });

  it('reopens the editor with the error as # lines after an invalid pod, then applies the fix', async () => {
    const seen = join(dir, 'second-round.yaml');
    const editor = await file(
      'fix.sh',
      [
        '#!/bin/sh',
        'set -e',
        `if [ ! -e "${dir}/round1" ]; then`,
        `  touch "${dir}/round1"`,
        '  sed -i "s/name: web/name: Bad_Web/" "$1"',
        'else',
        `  cp "$1" "${seen}"`,
        '  sed -i "s/name: Bad_Web/name: web/; s/nginx:1/nginx:fixed/" "$1"',
        'fi',
        '',
      ].join('\n'),
      0o755,
    );
    const r = await cosictl(['edit', 'mc'], { env: { EDITOR: editor, COSI_EDITOR: '' } });
    expect(r).toEqual({ code: 0, stdout: '', stderr: 'Applied configuration without a reboot\n' });
    const second = await readFile(seen, 'utf8');
    expect(second).toMatch(/^# Editing MachineConfigs\.config\.talos\.dev\/v1alpha1 at node node-1\n# \n# .*static pod default-Bad_Web: invalid pod: \[metadata\.name: Invalid value: "Bad_Web"/);
    expect(second).toContain('name: Bad_Web');
    await eventually(async () => expect(await pods()).toEqual(['default-db=postgres:15', 'default-web=nginx:fixed']));
  });

  it('skips an unchanged or empty file without an apply; an unchanged file after an error cancels with a copy', async () => {
    const unchanged = await cosictl(['edit', 'mc'], { env: { COSI_EDITOR: 'true' }, via: fwd.endpoint });
    expect(unchanged).toEqual({ code: 0, stdout: '', stderr: 'Apply was skipped: no changes detected.\n' });
    const empty = await cosictl(['edit', 'mc'], { env: { COSI_EDITOR: await file('empty.sh', '#!/bin/sh\n: > "$1"\n', 0o755) }, via: fwd.endpoint });
    expect(empty).toEqual({ code: 0, stdout: '', stderr: 'Apply was skipped: empty file.\n' });
    expect(fwd.applies()).toBe(0);

    // Breaks the pod once, then saves what it is shown unchanged: cancelled, exit code 1, the copy kept.
    const stubborn = await file('stubborn.sh', `#!/bin/sh\nset -e\nif [ ! -e "${dir}/broke" ]; then touch "${dir}/broke"; sed -i "s/name: db/name: Bad_Db/" "$1"; fi\n`, 0o755);
    const cancelled = await cosictl(['edit', 'mc'], { env: { COSI_EDITOR: stubborn } });
    expect(cancelled.code).toBe(1);
    expect(cancelled.stderr).toContain('Edit canceled, no valid changes were saved.');
    const copy = /stored to "([^"]+)"/.exec(cancelled.stderr)?.[1] ?? '';
    expect(await readFile(copy, 'utf8')).toContain('Bad_Db');
    await rm(join(copy, '..'), { recursive: true, force: true });
    expect((await config('v1alpha1')).spec).toBe(A);
  });

  it('a change on the node while the editor is open is refused, not overwritten', async () => {
    const other = await file('other.yaml', machineConfig([pod('web', 'nginx:meanwhile')]));
    const editor = await file(
      'race.sh',
      `#!/bin/sh\nset -e\n"${process.execPath}" "${CLI}" --cosiconfig "${n.pki.cosiconfig}" -e "${endpoint}" apply-config -f "${other}" 2>/dev/null\nsed -i "s/nginx:1/nginx:mine/" "$1"\n`,
      0o755,
    );
    const r = await cosictl(['edit', 'mc'], { env: { COSI_EDITOR: editor } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: .*version/);
    expect(r.stderr).toContain('A copy of your changes has been stored to');
    const copy = /stored to "([^"]+)"/.exec(r.stderr)?.[1] ?? '';
    await rm(join(copy, '..'), { recursive: true, force: true });
    expect((await config('v1alpha1')).spec).toBe(machineConfig([pod('web', 'nginx:meanwhile')]));
  });
});

describe('usage of the config commands', () => {
  it.each([
    [['apply-config'], 'apply-config needs the config file: cosictl apply-config -f FILE', 'apply-config'],
    [['apply-config', '-f', 'x', '--mode', 'reboot'], '--mode reboot is not supported: cosid has nothing to reboot; use auto, no-reboot, staged or try', 'apply-config'],
    [['apply-config', '-f', 'x', '--timeout', 'soon'], '--timeout needs a positive duration such as 1m, 30s or 1m30s, not "soon"', 'apply-config'],
    [['apply-config', '-f', 'x', '--patch-file', 'p'], '--patch-file does not apply to apply-config', 'apply-config'],
    [['patch', 'mc'], "patch needs a patch: -p @patch.yaml, -p '<json patch>' or --patch-file FILE", 'patch'],
    [['patch', 'staticpods', '-p', '[]'], 'patch changes the machine config only (machineconfig, mc), not "staticpods"', 'patch'],
    [['edit', 'mc', 'persistent'], 'edit changes the running config (v1alpha1) only, not "persistent"', 'edit'],
    [['edit', 'mc', '-f'], '-f does not apply to edit', 'edit'],
  ] as const)('%j: exit code 2, one line and the help to read', async (args, message, command) => {
    const r = await cosictl([...args]);
    expect(r).toEqual({ code: 2, stdout: '', stderr: `error: ${message}\nrun 'cosictl ${command} --help' for usage\n` });
  });

  it.each(['apply-config', 'patch', 'edit'])('%s --help prints its own help', async (command) => {
    const r = await cosictl([command, '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^cosictl ${command}: `));
    expect(r.stdout).toContain('--mode');
  });
});
