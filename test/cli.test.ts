// cosictl as a user runs it: the compiled binary, a real cosid, real mTLS.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { loadCosiConfig, serializeCosiConfig } from '../client/cosiconfig.js';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { silentLogger } from '../shared/log.js';
import { pod, podStatus, runCli, startServer, type CliRun, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

let srv: TestServer;

beforeAll(async () => {
  srv = await startServer({ nodeName: 'node-1' });
  await reconcileStaticPods(srv.cosid.store, [{ id: 'default-nginx', pod: pod('nginx'), origin: 'test' }, { id: 'kube-system-etcd', pod: pod('etcd', 'etcd', 'kube-system'), origin: 'test' }], silentLogger);
  await srv.cosid.store.create({ ...STATUSES, id: 'default/nginx-node-1', spec: podStatus(true) }, TEST_OWNER);
});
afterAll(() => srv.close());

function cosictl(args: string[], opts: { env?: Record<string, string>; until?: (out: string) => boolean; withEndpoint?: boolean } = {}): Promise<CliRun> {
  const base = opts.withEndpoint === false ? [] : ['--cosiconfig', srv.pki.cosiconfig, '-e', srv.endpoint];
  return runCli([...base, ...args], opts);
}

describe('cosictl get', () => {
  it('prints an aligned table with the node the server reports', async () => {
    const r = await cosictl(['get', 'staticpods']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        'NODE     NAMESPACE   TYPE        ID                 VERSION   ERROR',
        'node-1   k8s         StaticPod   default-nginx      1',
        'node-1   k8s         StaticPod   kube-system-etcd   1',
        '',
      ].join('\n'),
    );
  });

  it('adds print columns (READY and RESTARTS for statuses)', async () => {
    const r = await cosictl(['get', 'staticpodstatus']);
    expect(r.stdout.split('\n')[0]).toMatch(/^NODE\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+READY\s+RESTARTS\s+STALE$/);
    expect(r.stdout.split('\n')[1]).toMatch(/^node-1\s+k8s\s+StaticPodStatus\s+default\/nginx-node-1\s+1\s+True$/);
  });

  it('gets one resource as YAML with node, metadata and the raw Pod spec', async () => {
    const r = await cosictl(['get', 'sp', 'default-nginx', '-o', 'yaml']);
    expect(r.code).toBe(0);
    const doc = YAML.parse(r.stdout) as Record<string, Record<string, unknown>>;
    expect(doc['node']).toBe('node-1');
    expect(doc['metadata']).toMatchObject({ namespace: 'k8s', type: 'StaticPods.kubernetes.talos.dev', id: 'default-nginx', version: 1, owner: 'k8s.StaticPodController', phase: 'running' });
    expect(doc['spec']).toEqual(pod('nginx'));
    expect(r.stdout).toContain('\n    namespace: k8s\n');
  });

  it('separates YAML documents with ---', async () => {
    const r = await cosictl(['get', 'staticpods', '-o', 'yaml']);
    const docs = YAML.parseAllDocuments(r.stdout).map((d) => d.toJS() as { metadata: { id: string } });
    expect(docs.map((d) => d.metadata.id)).toEqual(['default-nginx', 'kube-system-etcd']);
    expect(r.stdout.match(/^---$/gm)?.length).toBe(1);
  });

  it('prints JSON objects in sequence, or one array with --json-array', async () => {
    const seq = await cosictl(['get', 'staticpods', '-o', 'json']);
    const objects = seq.stdout.split(/\n(?=\{)/).map((s) => JSON.parse(s) as { metadata: { id: string } });
    expect(objects.map((o) => o.metadata.id)).toEqual(['default-nginx', 'kube-system-etcd']);
    expect(seq.stdout).toContain('\n    "node": "node-1"');
    const arr = await cosictl(['get', 'staticpods', '-o', 'json', '--json-array']);
    expect((JSON.parse(arr.stdout) as { spec: { metadata: { name: string } } }[]).map((o) => o.spec.metadata.name)).toEqual(['nginx', 'etcd']);
    const empty = await cosictl(['get', 'staticpods', '-o', 'json', '--json-array', '--namespace', 'meta']);
    expect(JSON.parse(empty.stdout)).toEqual([]);
  });

  it('evaluates jsonpath templates', async () => {
    const r = await cosictl(['get', 'staticpods', '-o', 'jsonpath={.metadata.id}={.spec.spec.containers[0].image}']);
    expect(r.stdout).toBe('default-nginx=nginx\nkube-system-etcd=etcd\n');
    const ready = await cosictl(['get', 'podstatus', '-o', 'jsonpath={.spec.conditions[?(@.type=="Ready")].status}']);
    expect(ready.stdout).toBe('True\n');
  });

  it('lists resource definitions with their aliases (get rd)', async () => {
    const r = await cosictl(['get', 'rd']);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^NODE\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+ALIASES$/);
    expect(r.stdout).toMatch(/meta\s+ResourceDefinition\s+staticpodstatuses\.kubernetes\.talos\.dev\s+1\s+podstatus staticpodstatus sps spss/);
  });

  it('reads the config named by COSICONFIG', async () => {
    const r = await cosictl(['-e', srv.endpoint, 'get', 'sp', '-o', 'jsonpath={.metadata.id}'], { withEndpoint: false, env: { COSICONFIG: srv.pki.cosiconfig } });
    expect(r.stdout).toBe('default-nginx\nkube-system-etcd\n');
  });

  it('names a node without a port (-n HOST) through the endpoint (-e or the context\'s), which answers for its own address', async () => {
    const port = srv.endpoint.slice(srv.endpoint.lastIndexOf(':') + 1);
    const viaFlag = await cosictl(['-n', '127.0.0.1', 'get', 'sp', '-o', 'jsonpath={.node} {.metadata.id}']);
    expect(viaFlag).toEqual({ code: 0, stdout: '127.0.0.1 default-nginx\n127.0.0.1 kube-system-etcd\n', stderr: '' });
    // A context whose endpoint is cosid's port (not 50000), as a user's config is.
    const cfg = await loadCosiConfig(srv.pki.cosiconfig);
    const config = join(srv.pki.dir, `cosiconfig-port-${port}`);
    await writeFile(config, serializeCosiConfig({ currentContext: 'admin', contexts: new Map([...cfg.contexts].map(([name, c]) => [name, { ...c, endpoints: [srv.endpoint] }])) }));
    const viaContext = await cosictl(['--cosiconfig', config, '-n', '127.0.0.1', 'get', 'sp', 'default-nginx', '-o', 'jsonpath={.node}'], { withEndpoint: false });
    expect(viaContext).toEqual({ code: 0, stdout: '127.0.0.1\n', stderr: '' });
  });

  it('uses the reader context', async () => {
    const r = await cosictl(['--context', 'reader', 'get', 'sp', 'default-nginx', '-o', 'jsonpath={.metadata.id}']);
    expect(r.stdout).toBe('default-nginx\n');
  });
});

describe('cosictl errors', () => {
  it.each([
    [['get', 'frobs'], /resource "frobs" is not registered/, 1],
    [['get', 'sps'], /ambiguous: .*StaticPods\.kubernetes\.talos\.dev/, 1],
    [['get', 'sp', 'missing'], /doesn't exist/, 1],
    [['get', 'sp', '-o', 'xml'], /unknown output format "xml"[\s\S]*cosictl get --help/, 2],
    [['get'], /needs a resource type[\s\S]*cosictl get --help/, 2],
    [['get', 'sp', '--bogus'], /Unknown option '--bogus'\nrun 'cosictl get --help' for usage\n$/, 2],
    [['--context', 'nobody', 'get', 'sp'], /context "nobody"/, 1],
  ] as const)('%j', async (args, message, code) => {
    const r = await cosictl([...args]);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.code).toBe(code);
  });

  it('says how to create a config when there is none', async () => {
    const r = await cosictl(['--cosiconfig', join(srv.pki.dir, 'absent'), 'get', 'sp'], { withEndpoint: false });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cosictl gen pki/);
  });
});

describe('cosictl get -w', () => {
  it('holds rows until bootstrapped, marks + and -, and exits 0 on Ctrl-C', async () => {
    const store = srv.cosid.store;
    let changed = false;
    // The writes run while cosictl does; their outcome (undefined, or the error) is checked once it exits.
    let writes: Promise<unknown> = Promise.resolve();
    const r = await cosictl(['get', 'podstatus', '-w'], {
      until: (out) => {
        if (!changed && out.includes('nginx-node-1')) {
          changed = true;
          writes = (async () => {
            await store.create({ ...STATUSES, id: 'kube-system/etcd-node-1', spec: podStatus(false) }, TEST_OWNER);
            await store.update({ ...STATUSES, id: 'kube-system/etcd-node-1', spec: podStatus(true) }, TEST_OWNER);
            await store.destroy({ ...STATUSES, id: 'kube-system/etcd-node-1' }, TEST_OWNER);
          })().catch((err: unknown) => err);
        }
        return out.split('\n').length >= 6;
      },
    });
    expect(await writes).toBeUndefined();
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NODE\s+\*\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+READY\s+RESTARTS\s+STALE$/);
    expect(lines[1]).toMatch(/^node-1\s+\+\s+k8s\s+StaticPodStatus\s+default\/nginx-node-1\s+1\s+True$/);
    expect(lines[2]).toMatch(/^node-1\s+\+\s+k8s\s+StaticPodStatus\s+kube-system\/etcd-node-1\s+1\s+False$/);
    expect(lines[3]).toMatch(/^node-1\s{4,}k8s\s+StaticPodStatus\s+kube-system\/etcd-node-1\s+2\s+True$/);
    expect(lines[4]).toMatch(/^node-1\s+-\s+k8s\s+StaticPodStatus\s+kube-system\/etcd-node-1\s+2\s+True$/);
  });

  it('watches in JSON and jsonpath', async () => {
    const json = await cosictl(['get', 'sp', '-w', '-o', 'json'], { until: (out) => out.includes('kube-system-etcd') && out.trimEnd().endsWith('}') });
    expect(json.code).toBe(0);
    const objects = json.stdout.trimEnd().split(/\n(?=\{)/).map((s) => JSON.parse(s) as { event: string; metadata: { id: string } });
    expect(objects.map((o) => `${o.event} ${o.metadata.id}`)).toEqual(['created default-nginx', 'created kube-system-etcd']);
    const jp = await cosictl(['get', 'sp', '-w', '-o', 'jsonpath={.event} {.metadata.id}'], { until: (out) => out.includes('etcd\n') });
    expect(jp.stdout).toBe('created default-nginx\ncreated kube-system-etcd\n');
  });

  it('watches in YAML with the event field', async () => {
    const r = await cosictl(['get', 'sp', 'default-nginx', '-w', '-o', 'yaml'], { until: (out) => out.includes('spec:') });
    expect(r.code).toBe(0);
    expect(YAML.parse(r.stdout)).toMatchObject({ node: 'node-1', event: 'created', metadata: { id: 'default-nginx' } });
  });

});
