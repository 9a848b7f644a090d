// examples/wait-ready.ts as its user runs it: the compiled example against two real cosids, the static pods put
// in place by the controller and their statuses written to the stores as the kubelet poller writes them; the test
// waits for the lines the example prints, never for time to pass.
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadCosiConfig, serializeCosiConfig } from '../client/cosiconfig.js';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { STALE_LABEL } from '../server/resources/k8s.js';
import { silentLogger } from '../shared/log.js';
import type { Json } from '../shared/wire.js';
import { makePki, pod, podStatus, startServer, STATUSES, TEST_OWNER, type TestPki, type TestServer } from './harness.js';

const EXAMPLE = join(process.cwd(), 'dist', 'examples', 'wait-ready.js');
const servers: TestServer[] = [];
const children: ChildProcess[] = [];
afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const s of servers) await s.close();
});

async function server(nodeName: string, pki: TestPki): Promise<TestServer> {
  const s = await startServer({ nodeName, pki });
  servers.push(s);
  return s;
}

/** The running example: its output so far, a way to wait for a line of it, and its exit. */
class Example {
  stdout = '';
  stderr = '';
  readonly exit: Promise<number | null>;
  private readonly waiters: (() => void)[] = [];
  private readonly child: ChildProcess;

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [EXAMPLE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(this.child);
    const settle = () => {
      for (const w of [...this.waiters]) w();
    };
    this.child.stdout?.on('data', (d: Buffer) => {
      this.stdout += d.toString();
      settle();
    });
    this.child.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      settle();
    });
    // A bound, not a synchronisation: an example that hangs fails the test rather than the run.
    const kill = setTimeout(() => this.child.kill('SIGKILL'), 45_000);
    this.exit = new Promise((resolve) =>
      this.child.on('close', (code) => {
        clearTimeout(kill);
        settle();
        resolve(code);
      }),
    );
  }

  /** Resolves once stdout holds `line` as a whole line. */
  line(line: string): Promise<void> {
    const has = () => `\n${this.stdout}`.includes(`\n${line}\n`);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no line ${JSON.stringify(line)}; stdout ${JSON.stringify(this.stdout)}, stderr ${JSON.stringify(this.stderr)}`)), 30_000);
      const check = () => {
        const ended = this.child.exitCode !== null || this.child.signalCode !== null;
        if (!has() && !ended) return;
        this.waiters.splice(this.waiters.indexOf(check), 1);
        clearTimeout(timer);
        if (has()) resolve();
        else reject(new Error(`the example exited without the line ${JSON.stringify(line)}; stdout ${JSON.stringify(this.stdout)}, stderr ${JSON.stringify(this.stderr)}`));
      };
      this.waiters.push(check);
      check();
    });
  }

  async result(): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return { code: await this.exit, stdout: this.stdout, stderr: this.stderr };
  }
}

const put = async (s: TestServer, id: string, spec: Json, labels: Record<string, string> = {}): Promise<void> => {
  const exists = (await s.cosid.store.list(STATUSES)).some((r) => r.metadata.id === id);
  if (exists) await s.cosid.store.update({ ...STATUSES, id, spec, labels }, TEST_OWNER);
  else await s.cosid.store.create({ ...STATUSES, id, spec, labels }, TEST_OWNER);
};

describe('examples/wait-ready', () => {
  it('prints a line per change of a node, and exits 0 once every static pod on every node is Ready', async () => {
    const pki = await makePki();
    const one = await server('node-1', pki);
    const two = await server('node-2', pki);
    await reconcileStaticPods(one.cosid.store, [{ id: 'default-web', pod: pod('web'), origin: 'test' }, { id: 'default-db', pod: pod('db'), origin: 'test' }], silentLogger);
    // A KubeStaticPodConfig's ID is its own name, not the pod's: the status is found by the pod's name.
    await reconcileStaticPods(two.cosid.store, [{ id: 'default-web', pod: pod('web'), origin: 'test' }, { id: 'custom', pod: pod('api', 'api', 'kube-system'), origin: 'test' }], silentLogger);
    await put(one, 'default/web-node-1', podStatus(true));
    await put(one, 'default/db-node-1', podStatus(false));
    const [a, b] = [one.endpoint, two.endpoint];

    const ex = new Example(['--cosiconfig', pki.cosiconfig, '-n', `${a},${b}`, '--timeout', '1m']);
    await ex.line(`${a}: 1/2 ready (waiting for default/db-node-1)`);
    await ex.line(`${b}: 0/2 ready (waiting for kube-system/api-node-2 (no status yet), default/web-node-2 (no status yet))`);
    await put(one, 'default/db-node-1', podStatus(true));
    await ex.line(`${a}: 2/2 ready`);
    // Another node's status on node-2 is not node-2's pod's.
    await put(two, 'default/web-node-1', podStatus(true));
    await put(two, 'default/web-node-2', podStatus(false));
    await ex.line(`${b}: 0/2 ready (waiting for kube-system/api-node-2 (no status yet), default/web-node-2)`);
    // A stale Ready proves nothing: the kubelet could not be read.
    await put(two, 'kube-system/api-node-2', podStatus(true), { [STALE_LABEL]: 'true' });
    await ex.line(`${b}: 0/2 ready (waiting for kube-system/api-node-2 (stale: the kubelet cannot be read), default/web-node-2)`);
    await put(two, 'kube-system/api-node-2', podStatus(true));
    await ex.line(`${b}: 1/2 ready (waiting for default/web-node-2)`);
    await put(two, 'default/web-node-2', podStatus(true));
    const r = await ex.result();
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    // Each node's lines in order (the two nodes' first lines may come in either order).
    expect(lines.filter((l) => l.startsWith(`${a}: `))).toEqual([`${a}: 1/2 ready (waiting for default/db-node-1)`, `${a}: 2/2 ready`]);
    expect(lines.filter((l) => l.startsWith(`${b}: `))).toEqual([
      `${b}: 0/2 ready (waiting for kube-system/api-node-2 (no status yet), default/web-node-2 (no status yet))`,
      `${b}: 0/2 ready (waiting for kube-system/api-node-2 (no status yet), default/web-node-2)`,
      `${b}: 0/2 ready (waiting for kube-system/api-node-2 (stale: the kubelet cannot be read), default/web-node-2)`,
      `${b}: 1/2 ready (waiting for default/web-node-2)`,
      `${b}: 2/2 ready`,
    ]);
    expect(lines.at(-1)).toBe('all 4 static pods ready on 2 nodes');
    expect(lines.length).toBe(8);
  });

  it('exits 1 at the timeout, saying what each node still waits for (an invalid static pod never gets ready)', async () => {
    const pki = await makePki();
    const one = await server('node-1', pki);
    // A pod without containers fails validation: it is kept, labelled invalid, and never served to the kubelet.
    const invalid = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'broken' }, spec: { containers: [] } };
    await reconcileStaticPods(one.cosid.store, [{ id: 'default-web', pod: pod('web'), origin: 'test' }, { id: 'default-broken', pod: invalid, origin: 'test' }], silentLogger);
    await put(one, 'default/web-node-1', podStatus(true));
    const r = await new Example(['--cosiconfig', pki.cosiconfig, '-n', one.endpoint, '--timeout', '3s']).result();
    const line = `${one.endpoint}: 1/2 ready (waiting for default-broken (invalid: not served to the kubelet))`;
    expect(r).toEqual({ code: 1, stdout: `${line}\n`, stderr: `error: timed out after 3s:\n  ${line}\n` });
  });

  it('dials a node named without a port at the port of the context\'s endpoint, and says which address does not answer', async () => {
    const pki = await makePki();
    // cosid on a port of its own (not 50000), and a client config whose context dials it, as a user's does.
    const one = await server('node-1', pki);
    const cfg = await loadCosiConfig(pki.cosiconfig);
    const config = join(pki.dir, 'cosiconfig-own-port');
    await writeFile(config, serializeCosiConfig({ currentContext: 'admin', contexts: new Map([...cfg.contexts].map(([name, c]) => [name, { ...c, endpoints: [one.endpoint] }])) }));
    await reconcileStaticPods(one.cosid.store, [{ id: 'default-web', pod: pod('web'), origin: 'test' }], silentLogger);
    await put(one, 'default/web-node-1', podStatus(true));
    expect(await new Example(['--cosiconfig', config, '-n', '127.0.0.1', '--timeout', '30s']).result()).toEqual({
      code: 0,
      stdout: '127.0.0.1: 1/1 ready\nall 1 static pod ready on 1 node\n',
      stderr: '',
    });
    // A node that does not answer: told at once on stderr with the address dialled, and again at the timeout.
    const down = await new Example(['--cosiconfig', config, '-n', '127.0.0.1,127.0.0.1:1', '--timeout', '5s']).result();
    expect(down.code).toBe(1);
    expect(down.stdout).toBe('127.0.0.1: 1/1 ready\n');
    expect(down.stderr).toMatch(/^127\.0\.0\.1:1: not answering at 127\.0\.0\.1:1 \(.+\); retrying until the timeout \(5s\)\n/);
    expect(down.stderr).toMatch(/\nerror: timed out after 5s:\n {2}127\.0\.0\.1:1: not listed yet \(not answering at 127\.0\.0\.1:1: .+\)\n$/);
  });

  it('exits 0 at once when a node has no static pods, and 2 on a usage error', async () => {
    const pki = await makePki();
    const one = await server('node-1', pki);
    expect(await new Example(['--cosiconfig', pki.cosiconfig, '-n', one.endpoint]).result()).toEqual({ code: 0, stdout: `${one.endpoint}: 0/0 ready\nall 0 static pods ready on 1 node\n`, stderr: '' });
    const bad = await new Example(['--cosiconfig', pki.cosiconfig, '-n', one.endpoint, '--timeout', 'soon']).result();
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^error: --timeout "soon": use a duration such as 90s, 5m or 1h30m\nUsage: wait-ready/);
    const unknown = await new Example(['--bogus']).result();
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^error: Unknown option '--bogus'/);
  });
});
