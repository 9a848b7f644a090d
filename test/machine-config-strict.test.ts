// A typo in the machine config is refused the way Talos refuses it, where the user meets it: the compiled cosid
// keeps its pods and says why in its log, in MachineConfigStatus and in `cosictl get mcstatus`; the kubelet keeps
// running the pods. A YAML error reads whole on one line; a real Talos config with sections cosid does not model
// still loads.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Subscription } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { connect, type WatchEvent } from '../client/index.js';
import { eventually, makePki, pod } from './harness.js';
import { freePort, machineConfig, NODE, startNode } from './pipeline-harness.js';

const ROOT = process.cwd();
const CLI = join(ROOT, 'dist', 'client', 'cli', 'main.js');
const children: ChildProcess[] = [];
const dirs: string[] = [];
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** cosid's JSON log lines with this message. */
function logLines(stderr: string, msg: string): { error?: unknown }[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: unknown; error?: unknown })
    .filter((l) => l.msg === msg);
}

const TWO_PODS = 'version: v1alpha1\nmachine:\n  type: worker\n  pods:\n    - {apiVersion: v1, kind: Pod, metadata: {name: nginx}, spec: {containers: [{name: nginx, image: nginx}]}}\n    - {apiVersion: v1, kind: Pod, metadata: {name: web}, spec: {containers: [{name: web, image: httpd}]}}\n';
// The same with the typo of the issue: `podz` for `pods`.
const TYPO = TWO_PODS.replace('  pods:', '  podz:');
const BROKEN_YAML = 'version: v1alpha1\nmachine:\n  type: worker\n  pods: [\n';
// What `talosctl gen config` writes for a worker (secrets shortened), with a pod and more Talos documents.
const TALOS_WORKER = `version: v1alpha1
debug: false
persist: true
machine:
  type: worker
  token: abcdef.0123456789abcdef
  ca: {crt: LS0t, key: ""}
  certSANs: []
  kubelet:
    image: ghcr.io/siderolabs/kubelet:v1.34.1
    defaultRuntimeSeccompProfileEnabled: true
  network: {}
  install: {disk: /dev/sda, image: "ghcr.io/siderolabs/installer:v1.13.0", wipe: false}
  features: {rbac: true, kubePrism: {enabled: true, port: 7445}}
  pods:
    - {apiVersion: v1, kind: Pod, metadata: {name: nginx}, spec: {containers: [{name: nginx, image: nginx}]}}
cluster:
  id: aWQ=
  secret: c2VjcmV0
  controlPlane: {endpoint: "https://cp-1:6443"}
  clusterName: demo
  network: {dnsDomain: cluster.local, podSubnets: [10.244.0.0/16], serviceSubnets: [10.96.0.0/12]}
  token: abcdef.0123456789abcdef
  ca: {crt: LS0t, key: ""}
  discovery: {enabled: true, registries: {kubernetes: {disabled: true}, service: {}}}
---
apiVersion: v1alpha1
kind: HostnameConfig
auto: stable
`;

describe('cosid refuses a machine config with a key Talos does not know', () => {
  it('keeps both pods, and says file, line, column, the key and the near one in its log, the status and get mcstatus', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cosi-strict-'));
    dirs.push(dir);
    const pki = await makePki();
    dirs.push(pki.dir);
    const configPath = join(dir, 'machine.yaml');
    await writeFile(configPath, TWO_PODS);
    const port = await freePort();
    const child = spawn(
      process.execPath,
      ['dist/server/main.js', '--pki', pki.dir, '--config', configPath, '--listen', `127.0.0.1:${port}`, '--node', 'strict-node',
        '--cri-endpoint', `unix://${join(dir, 'no-runtime.sock')}`, '--pod-logs-dir', join(dir, 'pods')],
      { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    children.push(child);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await eventually(() => expect(stderr).toContain('"msg":"cosid serving"'), 30_000);
    const cli = [CLI, '--cosiconfig', pki.cosiconfig, '-e', `127.0.0.1:${port}`];
    const client = connect({ endpoint: `127.0.0.1:${port}`, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
    try {
      const ids = async () => (await client.list('staticpods')).map((r) => `${r.metadata.id}@${r.metadata.version}`);
      await eventually(async () => expect(await ids()).toEqual(['default-nginx@1', 'default-web@1']));

      await writeFile(configPath, TYPO);
      const expected = `${configPath}:4:3: unknown key machine.podz (did you mean machine.pods?)`;
      await eventually(() => expect(logLines(stderr, 'machine config rejected; keeping the last good state').map((l) => l.error)).toEqual([expected]));
      expect((await client.get('machineconfigstatus', 'machine-config')).spec).toMatchObject({ error: expected, pods: 2 });
      const mcs = await run([...cli, 'get', 'mcstatus']);
      expect(mcs.stderr).toBe('');
      expect(mcs.stdout.split('\n')[1]).toMatch(new RegExp(`^strict-node\\s+config\\s+MachineConfigStatus\\s+machine-config\\s+\\d+\\s+2\\s+0\\s+${escape(expected)}$`));
      // Nothing changed: the same pods at the same versions, and the kubelet is still served both.
      expect(await ids()).toEqual(['default-nginx@1', 'default-web@1']);
      const url = (await client.get('staticpodserverstatus', 'static-pod-server-status')).spec;
      const served = (await (await fetch(String((url as { url?: unknown } | null)?.url))).json()) as { items: { metadata: { name: string } }[] };
      expect(served.items.map((p) => p.metadata.name).sort()).toEqual(['nginx', 'web']);

      // A YAML error reads whole, on one line, in the log and in get mcstatus.
      await writeFile(configPath, BROKEN_YAML);
      const yamlError = `${configPath}:5:1: Flow sequence in block collection must be sufficiently indented and end with a ], after "pods: [" (line 4)`;
      await eventually(() => expect(logLines(stderr, 'machine config rejected; keeping the last good state').map((l) => l.error)).toEqual([expected, yamlError]));
      const mcsYaml = await run([...cli, 'get', 'mcstatus']);
      expect(mcsYaml.stdout.split('\n')[1]).toMatch(new RegExp(`\\s${escape(yamlError)}$`));
      expect(await ids()).toEqual(['default-nginx@1', 'default-web@1']);

      // A real Talos config, with the sections cosid does not model, loads.
      await writeFile(configPath, TALOS_WORKER);
      await eventually(async () => expect((await client.get('machineconfigstatus', 'machine-config')).spec).toMatchObject({ error: '', pods: 1 }));
      expect(await ids()).toEqual(['default-nginx@1']);
      expect(stderr).toMatch(/"level":"warn","msg":"[^"]*machine\.yaml:\d+: ignoring the HostnameConfig document \(a Talos document cosid does not model\)"/);
    } finally {
      client.close();
    }
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('the kubelet keeps running the pods of the last good config', () => {
  it('never stops nginx or web when a config with machine.podz arrives, and applies the next good one', async () => {
    const t = await startNode(machineConfig([pod('nginx'), pod('web', 'httpd')]));
    const subs: Subscription[] = [];
    try {
      const events: WatchEvent[] = [];
      subs.push(t.client.watch('podstatus', { bootstrap: true }).subscribe((e) => events.push(e)));
      const statuses = async () => (await t.client.list('podstatus')).map((r) => r.metadata.id);
      await eventually(async () => expect(await statuses()).toEqual([`default/nginx-${NODE}`, `default/web-${NODE}`]), 20_000);
      const before = (await t.client.get('machineconfigstatus', 'machine-config')).metadata.version;
      await t.writeConfig(machineConfig([pod('nginx'), pod('web', 'httpd')]).replace('  pods:', '  podz:'));
      // The status of that load, whatever its outcome: the pods are what this test is about.
      const refused = await eventually(async () => {
        const r = await t.client.get('machineconfigstatus', 'machine-config');
        expect(r.metadata.version).toBeGreaterThan(before);
        return r.spec;
      });
      // The next good config adds a pod: once the kubelet runs it, it has read the manifests since the refusal.
      await t.writeConfig(machineConfig([pod('nginx'), pod('web', 'httpd'), pod('extra', 'redis')]));
      await eventually(async () => expect(await statuses()).toEqual([`default/extra-${NODE}`, `default/nginx-${NODE}`, `default/web-${NODE}`]), 20_000);
      expect(events.filter((e) => e.type === 'destroyed').map((e) => e.resource?.metadata.id)).toEqual([]);
      expect(refused).toMatchObject({ error: expect.stringMatching(/:\d+:\d+: unknown key machine\.podz \(did you mean machine\.pods\?\)$/), pods: 2 });
    } finally {
      for (const s of subs) s.unsubscribe();
      await t.close();
    }
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
