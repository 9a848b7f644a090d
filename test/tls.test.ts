// Certificates: rotation without a restart, refusals at the handshake, refusals by role, gen cert, audit.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { connect } from '../client/index.js';
import { loadCosiConfig, selectContext } from '../client/cosiconfig.js';
import { Cosid } from '../server/cosid.js';
import { TlsMaterial } from '../server/tls/material.js';
import { createLogger } from '../shared/log.js';
import { generateCa, issueClientCert, issueServerCert, type KeyPairPem } from '../shared/pki.js';
import { eventually, makePki, startServer } from './harness.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function canList(endpoint: string, caPem: string, client: KeyPairPem): Promise<number> {
  const c = connect({ endpoint, caPem, certPem: client.certPem, keyPem: client.keyPem });
  try {
    await c.list('namespaces');
    return grpc.status.OK;
  } catch (err) {
    return (err as { code: number }).code;
  } finally {
    c.close();
  }
}

function servingFingerprint(port: number, caPem: string, client: KeyPairPem): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca: caPem, cert: client.certPem, key: client.keyPem, ALPNProtocols: ['h2'] }, () => {
      resolve(s.getPeerCertificate().fingerprint256);
      s.destroy();
    });
    s.on('error', reject);
  });
}

describe('certificate rotation without a restart', () => {
  it('trusts old and new CAs together, serves the new certificate at once, refuses a bad set and drops a removed CA', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cosi-rot-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const oldCa = await generateCa({ commonName: 'old CA' });
    const oldServer = await issueServerCert(oldCa, { sans: ['127.0.0.1'] });
    const oldAdmin = await issueClientCert(oldCa, { commonName: 'old-admin', organizations: ['os:admin'] });
    const files = { caFile: join(dir, 'ca.crt'), certFile: join(dir, 'server.crt'), keyFile: join(dir, 'server.key') };
    await writeFile(files.caFile, oldCa.certPem);
    await writeFile(files.certFile, oldServer.certPem);
    await writeFile(files.keyFile, oldServer.keyPem);
    const lines: string[] = [];
    const log = createLogger({ write: (l) => lines.push(l) });
    const material = await TlsMaterial.load(files, log);
    material.watch(100);
    cleanups.push(() => material.stop());
    const cosid = await Cosid.start({ listen: '127.0.0.1:0', tls: material, nodeName: 'rot', log, shutdownGraceMs: 500 });
    cleanups.push(() => cosid.stop());
    const endpoint = `127.0.0.1:${cosid.port}`;
    expect(await canList(endpoint, oldCa.certPem, oldAdmin)).toBe(grpc.status.OK);

    // Rotate: a new CA next to the old one, and a server certificate from the new CA.
    const newCa = await generateCa({ commonName: 'new CA' });
    const newServer = await issueServerCert(newCa, { sans: ['127.0.0.1'] });
    const newAdmin = await issueClientCert(newCa, { commonName: 'new-admin', organizations: ['os:admin'] });
    const bothCas = `${oldCa.certPem}${newCa.certPem}`;
    await writeFile(files.caFile, bothCas);
    await writeFile(files.keyFile, newServer.keyPem);
    await writeFile(files.certFile, newServer.certPem);
    const newFingerprint = new (await import('node:crypto')).X509Certificate(newServer.certPem).fingerprint256;
    await eventually(async () => expect(await servingFingerprint(cosid.port, bothCas, newAdmin)).toBe(newFingerprint));
    expect(await canList(endpoint, bothCas, newAdmin)).toBe(grpc.status.OK);
    expect(await canList(endpoint, bothCas, oldAdmin)).toBe(grpc.status.OK);

    // A key that does not belong to the certificate is refused; the current set stays.
    const stray = await issueServerCert(newCa, { sans: ['127.0.0.1'] });
    await writeFile(files.keyFile, stray.keyPem);
    await eventually(() => expect(lines.some((l) => l.includes('new TLS files refused'))).toBe(true));
    expect(lines.join('\n')).not.toContain('PRIVATE KEY');
    expect(await canList(endpoint, bothCas, newAdmin)).toBe(grpc.status.OK);
    await writeFile(files.keyFile, newServer.keyPem);

    // The rotation ends: the old CA is no longer trusted for new connections.
    await writeFile(files.caFile, newCa.certPem);
    await eventually(async () => expect(await canList(endpoint, bothCas, oldAdmin)).toBe(grpc.status.UNAVAILABLE));
    expect(await canList(endpoint, bothCas, newAdmin)).toBe(grpc.status.OK);
  });
});

describe('refused at the handshake', () => {
  it('refuses expired, not yet valid, and server-only (no clientAuth) certificates, and logs why', async () => {
    const lines: string[] = [];
    const srv = await startServer({ log: createLogger({ write: (l) => lines.push(l) }) });
    cleanups.push(() => srv.close());
    const ca = srv.pki.ca;
    const day = 86_400_000;
    const expired = await issueClientCert(ca, { commonName: 'late', organizations: ['os:admin'], notBefore: new Date(Date.now() - 10 * day), notAfter: new Date(Date.now() - day) });
    const future = await issueClientCert(ca, { commonName: 'early', organizations: ['os:admin'], notBefore: new Date(Date.now() + day) });
    const serverOnly = await issueServerCert(ca, { commonName: 'not-a-client', sans: ['127.0.0.1'] });
    for (const cert of [expired, future, serverOnly]) expect(await canList(srv.endpoint, ca.certPem, cert)).toBe(grpc.status.UNAVAILABLE);
    expect(await canList(srv.endpoint, ca.certPem, srv.pki.admin)).toBe(grpc.status.OK);
    // Node reports little about a refused client certificate under TLS 1.3 (often "socket hang up"), but the
    // server logs each refusal, once per reason: here one for each certificate.
    const refused = () =>
      lines
        .filter((l) => l.includes('TLS handshake refused'))
        .map((l) => (JSON.parse(l) as { reason: string }).reason)
        .sort();
    await eventually(() => expect(refused()).toEqual(['certificate has expired', 'certificate is not yet valid', 'unsupported certificate purpose']));
    expect(lines.join('\n')).not.toMatch(/PRIVATE KEY/);
  });

  it('closes a connection that never finishes its handshake', async () => {
    const pki = await makePki();
    cleanups.push(() => rm(pki.dir, { recursive: true, force: true }));
    const lines: string[] = [];
    const log = createLogger({ write: (l) => lines.push(l) });
    const cosid = await Cosid.start({ listen: '127.0.0.1:0', tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem }, nodeName: 'hs', handshakeTimeoutMs: 300, log });
    cleanups.push(() => cosid.stop());
    // A client that connects and never says a word: the server closes the connection, and says it was the timeout.
    const received: Buffer[] = [];
    await new Promise<void>((resolve) => {
      const s = tcpConnect(cosid.port, '127.0.0.1');
      s.on('data', (d: Buffer) => received.push(d));
      s.on('close', () => resolve());
      s.on('error', () => {});
    });
    expect(Buffer.concat(received).length).toBe(0);
    await eventually(() => expect(lines.filter((l) => l.includes('TLS handshake refused')).map((l) => (JSON.parse(l) as { reason: string }).reason)).toEqual([expect.stringMatching(/handshake timeout/i)]));
  });
});

describe('refusals are logged once, and calls are audited when asked', () => {
  it('logs a refusal once per subject and reason, without key material, and one audit line per call', async () => {
    const lines: string[] = [];
    const srv = await startServer({ audit: true, log: createLogger({ write: (l) => lines.push(l) }) });
    cleanups.push(() => srv.close());
    const nobody = await srv.certWithRoles(['system:nodes']);
    for (let i = 0; i < 3; i++) await srv.client(nobody).list('staticpods').catch(() => undefined);
    await srv.client().get('staticpods', 'nope').catch(() => undefined);
    const refusals = lines.filter((l) => l.includes('"msg":"request refused"'));
    expect(refusals.length).toBe(1);
    expect(refusals[0]).toContain('CN=tester, O=system:nodes');
    const audit = lines.filter((l) => l.includes('"msg":"audit"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(audit.some((a) => a['method'] === 'Get' && a['outcome'] === 'NOT_FOUND' && a['type'] === 'StaticPods.kubernetes.talos.dev' && String(a['peer']).includes('O=os:admin'))).toBe(true);
    // One line per call: the three refused lists (the refusal above is logged once, the audit every time).
    expect(audit.filter((a) => a['outcome'] === 'PERMISSION_DENIED').map((a) => `${a['method']} ${String(a['peer'])}`)).toEqual(Array(3).fill('List CN=tester, O=system:nodes'));
    expect(lines.join('\n')).not.toMatch(/PRIVATE KEY|BEGIN CERTIFICATE/);
  });
});

describe('cosictl gen cert', () => {
  it('issues a client certificate with chosen roles and lifetime from an existing CA and adds a context', async () => {
    const srv = await startServer();
    cleanups.push(() => srv.close());
    const run = (args: string[]) =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const c = spawn(process.execPath, [join(process.cwd(), 'dist', 'client', 'cli', 'main.js'), ...args]);
        let out = '';
        let err = '';
        c.stdout.on('data', (d: Buffer) => (out += d.toString()));
        c.stderr.on('data', (d: Buffer) => (err += d.toString()));
        c.on('close', (code) => resolve({ code, out, err }));
      });
    const cfg = srv.pki.cosiconfig;
    const issuedFrom = Date.now();
    const made = await run(['--cosiconfig', cfg, 'gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'ops', '--roles', 'os:operator', '--ttl', '2h', '--endpoint', srv.endpoint]);
    expect(made.err).toContain(`added context "ops" to ${cfg} (endpoints ${srv.endpoint}; use it with --cosiconfig ${cfg} --context ops)\n`);
    expect(made.code).toBe(0);
    const pem = await readFile(join(srv.pki.dir, 'ops.crt'), 'utf8');
    const x = new (await import('node:crypto')).X509Certificate(pem);
    expect(x.subject).toContain('O=os:operator');
    // Valid for the two hours asked, from when it was issued (X.509 keeps whole seconds).
    const validTo = new Date(x.validTo).getTime();
    expect(validTo).toBeGreaterThanOrEqual(issuedFrom + 2 * 3600_000 - 1000);
    expect(validTo).toBeLessThanOrEqual(Date.now() + 2 * 3600_000);
    const ctx = selectContext(await loadCosiConfig(cfg), 'ops');
    expect(ctx.endpoints).toEqual([srv.endpoint]);
    const listed = await run(['--cosiconfig', cfg, '--context', 'ops', 'get', 'namespaces', '-o', 'jsonpath={.metadata.id}']);
    expect(listed.out).toBe('config\nk8s\nmeta\n');
    const bad = await run(['--cosiconfig', cfg, 'gen', 'cert', '--ca-dir', srv.pki.dir, '--name', 'x', '--roles', 'root']);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain('unknown role root');
  });
});
