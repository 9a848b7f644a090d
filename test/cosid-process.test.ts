// cosid and `npm start` as processes: the printed command works, SIGTERM ends streams with a status.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { connect, type WatchEvent } from '../client/index.js';
import { loadCosiConfig, selectContext } from '../client/cosiconfig.js';
import { eventually } from './harness.js';

const ROOT = process.cwd();
const children: ChildProcess[] = [];
const dirs: string[] = [];
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('npm start', () => {
  it('runs the whole loop: prints cosictl commands that show default-nginx and its status going Ready; SIGTERM drains', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cosi-state-'));
    dirs.push(state);
    const [port, manifestPort, kubeletPort] = [await freePort(), await freePort(), await freePort()];
    const child = spawn(process.execPath, ['scripts/start.mjs'], {
      cwd: ROOT,
      env: {
        ...process.env,
        COSI_STATE_DIR: state,
        COSI_RUNTIME: 'simulated',
        COSI_NODE: 'demo-node',
        COSID_LISTEN: `127.0.0.1:${port}`,
        COSID_MANIFEST_LISTEN: `127.0.0.1:${manifestPort}`,
        KUBELET_SIM_LISTEN: `127.0.0.1:${kubeletPort}`,
      },
    });
    children.push(child);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await eventually(() => expect(stderr).toContain('"msg":"cosid serving"'), 30_000);
    const printed = /^\s+node (dist\/client\/cli\/main\.js .*get staticpods)$/m.exec(stderr)?.[1];
    expect(printed).toBeDefined();
    const out = await run(process.execPath, (printed ?? '').split(' '));
    expect(out.stderr).toBe('');
    expect(out.stdout).toMatch(/^NODE\s+NAMESPACE\s+TYPE\s+ID\s+VERSION\s+ERROR\ndemo-node\s+k8s\s+StaticPod\s+default-nginx\s+1\n$/);

    // The second printed command watches the status go Ready through the kubelet simulator.
    const watchCmd = /^\s+node (dist\/client\/cli\/main\.js .*get staticpodstatus -w)$/m.exec(stderr)?.[1];
    expect(watchCmd).toBeDefined();
    const watcher = spawn(process.execPath, (watchCmd ?? '').split(' '), { cwd: ROOT });
    children.push(watcher);
    let watched = '';
    watcher.stdout.on('data', (d: Buffer) => (watched += d.toString()));
    await eventually(() => expect(watched, `watch printed:\n${watched}`).toMatch(/^demo-node\s+(\+\s+)?k8s\s+StaticPodStatus\s+default\/nginx-demo-node\s+\d+\s+True\s+0\s*$/m), 30_000);
    watcher.kill('SIGINT');

    // A watch open during SIGTERM ends with UNAVAILABLE (a status, not a connection reset).
    const ctx = selectContext(await loadCosiConfig(join(state, 'pki', 'cosiconfig')));
    const client = connect({ endpoint: `127.0.0.1:${port}`, caPem: ctx.caPem, certPem: ctx.certPem, keyPem: ctx.keyPem });
    const events: WatchEvent[] = [];
    const ended = new Promise<unknown>((resolve) => client.watch('staticpods', { bootstrap: true, reconnect: false }).subscribe({ next: (e) => events.push(e), error: resolve, complete: () => resolve('completed') }));
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['created', 'bootstrapped']));
    child.kill('SIGTERM');
    const err = await ended;
    expect(err).toMatchObject({ code: grpc.status.UNAVAILABLE, message: expect.stringContaining('shutting down') });
    expect(await exited).toBe(0);
    client.close();
  });
});

describe('cosid command line', () => {
  it('explains a missing PKI and a broken config, and exits non-zero', async () => {
    const missing = await run(process.execPath, ['dist/server/main.js', '--pki', '/nonexistent', '--config', 'examples/machine-config.yaml']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/cannot read \/nonexistent\/ca\.crt: ENOENT \(create the PKI with: cosictl gen pki --out \/nonexistent\)/);
    const usage = await run(process.execPath, ['dist/server/main.js']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('--pki and --config are required');
  });
});
