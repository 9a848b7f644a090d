// cosictl gen cert as a new user runs it: the compiled binary with HOME pointed at an empty folder, so that what
// it writes (or must not write) under ~/.cosi is this test's; the configs it writes are then used against a real
// cosid.
import { X509Certificate } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadCosiConfig } from '../client/cosiconfig.js';
import { runCli, startServer, type CliRun, type TestServer } from './harness.js';

let srv: TestServer;
let tmp: string;
let home: string;

beforeAll(async () => {
  srv = await startServer({ nodeName: 'node-1' });
});
afterAll(async () => {
  await srv?.close();
});
beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cosi-cli-gen-'));
  home = join(tmp, 'home');
  await mkdir(home);
  return () => rm(tmp, { recursive: true, force: true });
});

function cosictl(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return runCli(args, { env: { HOME: home, COSICONFIG: '', ...env } });
}

const exists = (path: string) => stat(path).then(() => true, () => false);

describe('cosictl gen cert', () => {
  it('--roles os:impersonator writes cosid\'s proxy certificate and no client context', async () => {
    const out = join(tmp, 'proxy');
    const r = await cosictl(['gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'impersonator', '--roles', 'os:impersonator', '--out', out]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('for cosid, to proxy calls to other nodes; start it with --impersonator-cert');
    expect((await readdir(out)).sort()).toEqual(['impersonator.crt', 'impersonator.key']);
    const cert = new X509Certificate(await readFile(join(out, 'impersonator.crt'), 'utf8'));
    expect(cert.subject).toBe('CN=impersonator\nO=os:impersonator');
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(await exists(join(home, '.cosi'))).toBe(false);
  });

  it('without a client config, writes a new one beside the certificate, creates the --out folder, and never ~/.cosi/config', async () => {
    const out = join(tmp, 'certs', 'ops');
    const r = await cosictl(['gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'ops', '--roles', 'os:operator', '--out', out, '--endpoint', srv.endpoint]);
    const config = join(out, 'ops.cosiconfig');
    expect(r).toEqual({
      code: 0,
      stdout: '',
      stderr: [
        `wrote ${join(out, 'ops.crt')} and ${join(out, 'ops.key')} (os:operator, valid 365d)`,
        `wrote a new client config ${config} with the context "ops" (endpoints ${srv.endpoint}; use it with --cosiconfig ${config})`,
        '',
      ].join('\n'),
    });
    expect(await exists(join(home, '.cosi'))).toBe(false);
    expect((await readdir(out)).sort()).toEqual(['ops.cosiconfig', 'ops.crt', 'ops.key']);
    expect(new X509Certificate(await readFile(join(out, 'ops.crt'), 'utf8')).subject).toContain('O=os:operator');
    expect((await stat(join(out, 'ops.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(config)).mode & 0o777).toBe(0o600);
    // The new config holds the one context, current: it works as printed.
    const cfg = await loadCosiConfig(config);
    expect([cfg.currentContext, [...cfg.contexts.keys()]]).toEqual(['ops', ['ops']]);
    const listed = await cosictl(['--cosiconfig', config, 'get', 'namespaces', '-o', 'jsonpath={.metadata.id}']);
    expect(listed).toEqual({ code: 0, stdout: 'config\nk8s\nmeta\n', stderr: '' });
  });

  it('without --endpoint, a new config dials the endpoint of the CA folder\'s own config (gen pki\'s)', async () => {
    const r = await cosictl(['gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'viewer', '--out', tmp]);
    expect(r.code).toBe(0);
    const own = await loadCosiConfig(srv.pki.cosiconfig);
    const made = await loadCosiConfig(join(tmp, 'viewer.cosiconfig'));
    expect(made.contexts.get('viewer')?.endpoints).toEqual(own.contexts.get(own.currentContext)?.endpoints);
  });

  it('adds the context to ~/.cosi/config when it exists, keeping its current context', async () => {
    await mkdir(join(home, '.cosi'));
    const usual = join(home, '.cosi', 'config');
    await copyFile(srv.pki.cosiconfig, usual);
    const r = await cosictl(['gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'ops', '--out', tmp, '--endpoint', srv.endpoint]);
    expect(r.code).toBe(0);
    expect(r.stderr.split('\n')[1]).toBe(`added context "ops" to ${usual} (endpoints ${srv.endpoint}; use it with --context ops)`);
    expect(await exists(join(tmp, 'ops.cosiconfig'))).toBe(false);
    const cfg = await loadCosiConfig(usual);
    expect([cfg.currentContext, [...cfg.contexts.keys()]]).toEqual(['admin', ['admin', 'reader', 'ops']]);
    const listed = await cosictl(['--context', 'ops', 'get', 'namespaces', 'meta', '-o', 'jsonpath={.metadata.id}']);
    expect(listed).toEqual({ code: 0, stdout: 'meta\n', stderr: '' });
  });

  it('adds the context to $COSICONFIG when it exists', async () => {
    const named = join(tmp, 'team-config');
    await copyFile(srv.pki.cosiconfig, named);
    const r = await cosictl(['gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'ops', '--out', tmp, '--endpoint', srv.endpoint], { COSICONFIG: named });
    expect(r.code).toBe(0);
    expect(r.stderr.split('\n')[1]).toBe(`added context "ops" to ${named} (endpoints ${srv.endpoint}; use it with --context ops)`);
    expect([...(await loadCosiConfig(named)).contexts.keys()]).toEqual(['admin', 'reader', 'ops']);
    expect(await exists(join(home, '.cosi'))).toBe(false);
  });

  it('writes the config named with --cosiconfig, creating it when missing (as talosctl config new writes the file you name)', async () => {
    const named = join(tmp, 'configs', 'ops-config');
    const r = await cosictl(['--cosiconfig', named, 'gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'ops', '--out', tmp, '--endpoint', srv.endpoint]);
    expect(r.code).toBe(0);
    expect(r.stderr.split('\n')[1]).toBe(`wrote a new client config ${named} with the context "ops" (endpoints ${srv.endpoint}; use it with --cosiconfig ${named})`);
    const cfg = await loadCosiConfig(named);
    expect([cfg.currentContext, [...cfg.contexts.keys()]]).toEqual(['ops', ['ops']]);
    expect(await exists(join(home, '.cosi'))).toBe(false);
  });

  it('refuses a config it cannot read before writing anything', async () => {
    const broken = join(tmp, 'broken-config');
    await copyFile(join(srv.pki.dir, 'ca.crt'), broken);
    const r = await cosictl(['--cosiconfig', broken, 'gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'ops', '--out', join(tmp, 'out')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^error: ${broken}: `));
    expect(await exists(join(tmp, 'out'))).toBe(false);
  });
});
