// The PKI (shared/pki.ts) and the client config (client/cosiconfig.ts) through real interfaces: files on disk,
// certificates read back by node:crypto, handshakes against a real node:tls server with client certificates.
// @peculiar/x509 (used here to read extensions back) needs the Reflect polyfill loaded before it.
import 'reflect-metadata';
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type Server } from 'node:tls';
import * as x509 from '@peculiar/x509';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import YAML from 'yaml';
import {
  defaultCosiConfigPath,
  loadCosiConfig,
  parseCosiConfig,
  selectContext,
  serializeCosiConfig,
  upsertContext,
  type CosiConfig,
  type CosiContext,
} from '../client/cosiconfig.js';
import { generatePki, type PkiFiles } from '../client/gen-pki.js';
import { CosiError } from '../shared/errors.js';
import { generateCa, issueClientCert, issueServerCert, type KeyPairPem } from '../shared/pki.js';

const DAY_MS = 86_400_000;
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

let root = '';
let files: PkiFiles;
let ca: KeyPairPem;
let server: KeyPairPem;
let admin: KeyPairPem;
let reader: KeyPairPem;
const servers: Server[] = [];

async function pair(cert: string, key: string): Promise<KeyPairPem> {
  return { certPem: await readFile(cert, 'utf8'), keyPem: await readFile(key, 'utf8') };
}

const days = (ms: number) => ms / DAY_MS;
const parsed = (pem: string) => new X509Certificate(pem);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cosi-pki-test-'));
  files = await generatePki(join(root, 'pki'), { sans: ['cosid.example', '10.0.0.7', '::1'], endpoint: '10.0.0.7:50000' });
  ca = await pair(files.ca, files.caKey);
  server = await pair(files.server, files.serverKey);
  admin = await pair(files.admin, files.adminKey);
  reader = await pair(files.reader, files.readerKey);
});

afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  if (root !== '') await rm(root, { recursive: true, force: true });
});

describe('generatePki', () => {
  it('writes the CA, server, admin, reader and impersonator pairs and a cosiconfig, with keys readable by the owner only', async () => {
    expect(Object.keys(files).sort()).toEqual(['admin', 'adminKey', 'ca', 'caKey', 'cosiconfig', 'fleet', 'fleetKey', 'impersonator', 'impersonatorKey', 'reader', 'readerKey', 'server', 'serverKey']);
    for (const secret of [files.caKey, files.serverKey, files.adminKey, files.readerKey, files.impersonatorKey, files.fleetKey, files.cosiconfig]) {
      expect(((await stat(secret)).mode & 0o777).toString(8), secret).toBe('600');
    }
    for (const p of [ca, server, admin, reader]) {
      expect(p.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/);
      const key = createPrivateKey(p.keyPem);
      expect(key.asymmetricKeyType).toBe('ec');
      expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      expect(parsed(p.certPem).checkPrivateKey(key)).toBe(true);
    }
  });

  it('makes a self-signed CA valid for 10 years', () => {
    const cert = parsed(ca.certPem);
    expect(cert.subject).toBe('CN=cosi-pods CA');
    expect(cert.issuer).toBe('CN=cosi-pods CA');
    expect(cert.ca).toBe(true);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(Date.parse(cert.validFrom)).toBeLessThanOrEqual(Date.now());
    expect(days(Date.parse(cert.validTo) - Date.now())).toBeCloseTo(3650, 0);
  });

  it('makes a server certificate for 127.0.0.1, localhost and the extra SANs, signed by the CA, valid for a year', () => {
    const cert = parsed(server.certPem);
    expect(cert.subject).toBe('CN=cosid');
    expect(cert.issuer).toBe('CN=cosi-pods CA');
    expect(cert.ca).toBe(false);
    expect(cert.verify(parsed(ca.certPem).publicKey)).toBe(true);
    expect(cert.checkIssued(parsed(ca.certPem))).toBe(true);
    expect(cert.subjectAltName).toBe('IP Address:127.0.0.1, DNS:localhost, DNS:cosid.example, IP Address:10.0.0.7, IP Address:0:0:0:0:0:0:0:1');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(cert.checkHost('localhost')).toBe('localhost');
    // Node's X509Certificate.keyUsage is the extended key usage.
    expect(cert.keyUsage).toEqual([SERVER_AUTH]);
    expect(days(Date.parse(cert.validTo) - Date.now())).toBeCloseTo(365, 0);
  });

  it('makes client certificates with CN = the name and one O per role', () => {
    const caKey = parsed(ca.certPem).publicKey;
    for (const [p, name, role] of [
      [admin, 'admin', 'os:admin'],
      [reader, 'reader', 'os:reader'],
    ] as const) {
      const cert = parsed(p.certPem);
      expect(cert.subject).toBe(`CN=${name}\nO=${role}`);
      expect(cert.issuer).toBe('CN=cosi-pods CA');
      expect(cert.ca).toBe(false);
      expect(cert.verify(caKey)).toBe(true);
      expect(cert.keyUsage).toEqual([CLIENT_AUTH]);
      expect(cert.subjectAltName).toBeUndefined();
    }
  });

  it('uses distinct positive serials of at most 128 bits', () => {
    const serials = [ca, server, admin, reader].map((p) => BigInt(`0x${parsed(p.certPem).serialNumber}`));
    expect(new Set(serials).size).toBe(4);
    for (const s of serials) {
      expect(s > 0n).toBe(true);
      expect(s < 2n ** 128n).toBe(true);
    }
  });

  it('sets the CA and leaf extensions (critical basic constraints and key usage, key identifiers)', () => {
    // node:crypto does not expose these, so @peculiar/x509 reads them back from the DER.
    const caCert = new x509.X509Certificate(ca.certPem);
    const bc = caCert.getExtension(x509.BasicConstraintsExtension);
    expect(bc?.ca).toBe(true);
    expect(bc?.critical).toBe(true);
    const ku = caCert.getExtension(x509.KeyUsagesExtension);
    expect(ku?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    expect(ku?.critical).toBe(true);
    const ski = caCert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
    expect(ski).toMatch(/^[0-9a-f]{40}$/);
    for (const p of [server, admin]) {
      const leaf = new x509.X509Certificate(p.certPem);
      expect(leaf.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(ski);
      const leafKu = leaf.getExtension(x509.KeyUsagesExtension);
      expect(leafKu?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
      expect(leafKu?.critical).toBe(true);
      expect(leaf.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
    }
  });

  it('refuses to replace a CA unless forced, and defaults to 127.0.0.1:50000 and no extra SANs', async () => {
    const dir = join(root, 'again');
    const first = await generatePki(dir, {});
    const caBefore = await readFile(first.ca, 'utf8');
    await expect(generatePki(dir, {})).rejects.toThrow(`${first.caKey} already exists: refusing to replace a CA`);
    expect(await readFile(first.ca, 'utf8')).toBe(caBefore);

    // A key file left world-readable is narrowed when forced over.
    await chmod(first.adminKey, 0o644);
    const forced = await generatePki(dir, { force: true });
    const caAfter = await readFile(forced.ca, 'utf8');
    expect(caAfter).not.toBe(caBefore);
    expect(((await stat(forced.adminKey)).mode & 0o777).toString(8)).toBe('600');
    expect(parsed(await readFile(forced.server, 'utf8')).subjectAltName).toBe('IP Address:127.0.0.1, DNS:localhost');
    const cfg = await loadCosiConfig(forced.cosiconfig);
    expect(selectContext(cfg).endpoints).toEqual(['127.0.0.1:50000']);
    expect(selectContext(cfg).caPem).toBe(caAfter);
  });
});

describe('issuing certificates', () => {
  it('keeps names literal: commas, quotes, a leading # and non-ASCII are values, not syntax', async () => {
    const odd = await issueClientCert(ca, { commonName: '#a, b="c"+d\\e', organizations: ['os:operator', 'os:reader', 'Zürich, Büro'] });
    const subject = parsed(odd.certPem).toLegacyObject().subject;
    expect(subject['CN']).toBe('#a, b="c"+d\\e');
    expect(subject['O']).toEqual(['os:operator', 'os:reader', 'Zürich, Büro']);
  });

  it('honours tiny, expired and future validity windows', async () => {
    const minute = parsed((await issueClientCert(ca, { commonName: 'short', organizations: [], validDays: 1 / 1440 })).certPem);
    expect(Date.parse(minute.validTo) - Date.now()).toBeGreaterThan(0);
    expect(Date.parse(minute.validTo) - Date.now()).toBeLessThanOrEqual(60_000);
    const later = new Date(Date.now() + 10 * DAY_MS);
    const future = parsed((await issueClientCert(ca, { commonName: 'future', organizations: [], notBefore: later, validDays: 2 })).certPem);
    expect(Date.parse(future.validFrom)).toBe(Math.floor(later.getTime() / 1000) * 1000);
    expect(days(Date.parse(future.validTo) - Date.parse(future.validFrom))).toBeCloseTo(2, 3);
    await expect(issueClientCert(ca, { commonName: 'x', organizations: [], notBefore: later, notAfter: new Date() })).rejects.toThrow(/notAfter .* must be after notBefore/);
    await expect(issueClientCert(ca, { commonName: 'x', organizations: [], validDays: 0 })).rejects.toThrow(/validDays must be a positive number/);
  });

  it('says what is wrong with the CA pair it is given', async () => {
    await expect(issueServerCert({ certPem: ca.certPem, keyPem: admin.keyPem }, { sans: ['localhost'] })).rejects.toThrow('the CA key does not belong to the CA certificate');
    await expect(issueClientCert(admin, { commonName: 'x', organizations: [] })).rejects.toThrow(/is not a CA/);
    await expect(issueClientCert({ certPem: 'junk', keyPem: ca.keyPem }, { commonName: 'x', organizations: [] })).rejects.toThrow(/not a valid PEM certificate/);
    await expect(issueServerCert(ca, { sans: ['has space'] })).rejects.toThrow(/invalid subject alternative name/);
    const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    await expect(issueClientCert({ certPem: ca.certPem, keyPem: p384 }, { commonName: 'x', organizations: [] })).rejects.toThrow('the CA key must be an ECDSA P-256 key (got ec secp384r1)');
  });

  it('accepts a CA key in SEC1 ("EC PRIVATE KEY") form', async () => {
    const sec1 = createPrivateKey(ca.keyPem).export({ type: 'sec1', format: 'pem' }).toString();
    const cert = parsed((await issueClientCert({ certPem: ca.certPem, keyPem: sec1 }, { commonName: 'x', organizations: ['os:reader'] })).certPem);
    expect(cert.verify(parsed(ca.certPem).publicKey)).toBe(true);
  });
});

interface Dialled {
  /** What the server wrote after the handshake; empty when it refused. */
  received: string;
  error: string | undefined;
}

/** Connects, reads until the server closes, and never hangs: the socket is destroyed after 5 s. */
function dial(port: number, client: KeyPairPem | undefined, opts: { servername?: string } = {}): Promise<Dialled> {
  return new Promise((resolve) => {
    const socket = connect({
      host: '127.0.0.1',
      port,
      ca: ca.certPem,
      ...(client !== undefined ? { cert: client.certPem, key: client.keyPem } : {}),
      ...(opts.servername !== undefined ? { servername: opts.servername } : {}),
    });
    let received = '';
    let error: string | undefined;
    const timer = setTimeout(() => socket.destroy(new Error('timed out')), 5000);
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (received += d));
    socket.on('error', (err) => (error = err.message));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ received, error });
    });
  });
}

async function listen(s: Server): Promise<number> {
  servers.push(s);
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return (s.address() as AddressInfo).port;
}

describe('mutual TLS with the generated certificates', () => {
  let strictPort = 0;
  let observerPort = 0;
  let foreign: KeyPairPem;
  let expired: KeyPairPem;
  let notYetValid: KeyPairPem;

  beforeAll(async () => {
    // The server as cosid runs it: it refuses any client the CA does not vouch for. It tells an accepted client its roles.
    const strict = createServer({ cert: server.certPem, key: server.keyPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (socket) => {
      const o = socket.getPeerCertificate().subject['O'];
      socket.end(JSON.stringify({ authorized: socket.authorized, o }));
    });
    // Node's strict server drops a refused client without saying why; this one accepts all and reports the verdict.
    const observer = createServer({ cert: server.certPem, key: server.keyPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: false }, (socket) => {
      socket.end(JSON.stringify({ authorized: socket.authorized, reason: socket.authorizationError ?? null }));
    });
    strictPort = await listen(strict);
    observerPort = await listen(observer);
    // Same CA name as the real one, another key: only the signature tells them apart.
    foreign = await issueClientCert(await generateCa(), { commonName: 'admin', organizations: ['os:admin'] });
    expired = await issueClientCert(ca, { commonName: 'old', organizations: ['os:admin'], notBefore: new Date(Date.now() - 2 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS) });
    notYetValid = await issueClientCert(ca, { commonName: 'new', organizations: ['os:admin'], notBefore: new Date(Date.now() + DAY_MS), validDays: 1 });
  });

  it('accepts the admin and reader certificates, and the server sees their roles', async () => {
    expect(JSON.parse((await dial(strictPort, admin)).received)).toEqual({ authorized: true, o: 'os:admin' });
    expect(JSON.parse((await dial(strictPort, reader)).received)).toEqual({ authorized: true, o: 'os:reader' });
  });

  it('is verified by the client under its IP and DNS names', async () => {
    expect((await dial(strictPort, admin, { servername: 'localhost' })).error).toBeUndefined();
    const wrongName = await dial(strictPort, admin, { servername: 'elsewhere.example' });
    expect(wrongName.received).toBe('');
    expect(wrongName.error).toMatch(/Hostname\/IP does not match certificate's altnames/);
  });

  it('refuses a client without a certificate', async () => {
    const r = await dial(strictPort, undefined);
    expect(r.received).toBe('');
    expect(r.error).toMatch(/certificate required/);
  });

  it.each([
    ['a certificate from another CA with the same name', () => foreign, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ['an expired certificate', () => expired, 'CERT_HAS_EXPIRED'],
    ['a certificate that is not valid yet', () => notYetValid, 'CERT_NOT_YET_VALID'],
    // OpenSSL checks the client's extended key usage against the TLS client purpose, and Node keeps that check.
    ['the server certificate (serverAuth only, no clientAuth)', () => server, 'INVALID_PURPOSE'],
  ] as const)('refuses %s', async (_label, cert, reason) => {
    const refused = await dial(strictPort, cert());
    expect(refused.received).toBe('');
    expect(JSON.parse((await dial(observerPort, cert())).received)).toEqual({ authorized: false, reason });
  });
});

describe('cosiconfig', () => {
  const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it('loads what generatePki wrote: admin (current) and reader, with the PEMs of the files', async () => {
    const cfg = await loadCosiConfig(files.cosiconfig);
    expect(cfg.currentContext).toBe('admin');
    expect([...cfg.contexts.keys()]).toEqual(['admin', 'reader']);
    for (const [name, p] of [
      ['admin', admin],
      ['reader', reader],
    ] as const) {
      const ctx = selectContext(cfg, name);
      expect(ctx).toEqual({ name, endpoints: ['10.0.0.7:50000'], nodes: [], caPem: ca.certPem, certPem: p.certPem, keyPem: p.keyPem });
    }
    expect(selectContext(cfg).name).toBe('admin');
    // The talosconfig shape: base64 of each PEM under contexts.<name>.
    const raw: unknown = YAML.parse(await readFile(files.cosiconfig, 'utf8'));
    expect(raw).toMatchObject({ context: 'admin', contexts: { reader: { endpoints: ['10.0.0.7:50000'], ca: b64(ca.certPem), crt: b64(reader.certPem), key: b64(reader.keyPem) } } });
  });

  it('round-trips through serializeCosiConfig, nodes included', () => {
    const ctx: CosiContext = { name: 'lab', endpoints: ['10.0.0.1:50000', '[::1]:50000'], nodes: ['node-1', 'node-2'], caPem: ca.certPem, certPem: admin.certPem, keyPem: admin.keyPem };
    const cfg: CosiConfig = { currentContext: 'lab', contexts: new Map([['lab', ctx]]) };
    const back = parseCosiConfig(serializeCosiConfig(cfg), 'mem');
    expect(back.currentContext).toBe('lab');
    expect(back.contexts.get('lab')).toEqual(ctx);
  });

  it('names the known contexts when asked for an unknown one', async () => {
    const cfg = await loadCosiConfig(files.cosiconfig);
    expect(() => selectContext(cfg, 'nope')).toThrow(CosiError);
    expect(() => selectContext(cfg, 'nope')).toThrow(`context "nope" is not in ${files.cosiconfig}; known contexts: admin, reader`);
  });

  describe('rejects bad files with the file name and what to do', () => {
    type Doc = { context?: unknown; contexts: Record<string, Record<string, unknown>> };
    const damaged = (change: (doc: Doc) => void) => async () => {
      const doc = YAML.parse(await readFile(files.cosiconfig, 'utf8')) as Doc;
      change(doc);
      return YAML.stringify(doc);
    };
    const adminCtx = (doc: Doc): Record<string, unknown> => {
      const c = doc.contexts['admin'];
      if (c === undefined) throw new Error('fixture has no admin context');
      return c;
    };
    const badCertPem = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
    it.each<[string, () => Promise<string>, RegExp]>([
      ['not YAML', async () => 'contexts: [admin', /^cfg: not valid YAML: /],
      ['empty', async () => '', /^cfg: the file is empty; create one with "cosictl gen pki --out DIR"/],
      ['a list', async () => '- admin\n', /^cfg: expected a mapping with "context" and "contexts", not a list/],
      ['no contexts', async () => 'context: admin\n', /^cfg: no "contexts" mapping .*cosictl gen pki --out DIR/],
      ['a context that is not a mapping', async () => 'contexts:\n  admin: [a]\n', /^cfg: context "admin" must be a mapping/],
      ['no endpoints', damaged((d) => delete adminCtx(d)['endpoints']), /^cfg: context "admin" has no endpoints; add "endpoints: \[HOST:PORT\]"/],
      ['empty endpoints', damaged((d) => (adminCtx(d)['endpoints'] = [])), /^cfg: context "admin" has no endpoints/],
      ['a number as endpoint', damaged((d) => (adminCtx(d)['endpoints'] = [50000])), /^cfg: context "admin": endpoints\[0\] must be a HOST or HOST:PORT string/],
      ['nodes not a list', damaged((d) => (adminCtx(d)['nodes'] = 'node-1')), /^cfg: context "admin": nodes must be a list/],
      ['no ca', damaged((d) => delete adminCtx(d)['ca']), /^cfg: context "admin" has no ca \(the base64 of the CA certificate PEM\)/],
      ['ca not base64', damaged((d) => (adminCtx(d)['ca'] = 'not base64!')), /^cfg: context "admin": ca is not valid base64/],
      ['ca as raw PEM', damaged((d) => (adminCtx(d)['ca'] = ca.certPem)), /^cfg: context "admin": ca is a raw PEM; it must be base64-encoded/],
      ['crt not a PEM', damaged((d) => (adminCtx(d)['crt'] = b64('hello'))), /^cfg: context "admin": crt does not hold a PEM certificate/],
      ['crt damaged', damaged((d) => (adminCtx(d)['crt'] = b64(badCertPem))), /^cfg: context "admin": crt certificate 1 is damaged/],
      ['key is a certificate', damaged((d) => (adminCtx(d)['key'] = b64(admin.certPem))), /^cfg: context "admin": key does not hold a PEM private key/],
      ['key of another certificate', damaged((d) => (adminCtx(d)['key'] = b64(reader.keyPem))), /^cfg: context "admin": crt and key do not belong together/],
      ['context not a name', damaged((d) => (d.context = ['admin'])), /^cfg: "context" must be the name of a context/],
    ])('%s', async (_label, text, message) => {
      const input = await text();
      expect(() => parseCosiConfig(input, 'cfg')).toThrow(CosiError);
      expect(() => parseCosiConfig(input, 'cfg')).toThrow(message);
    });
  });

  it('says how to make a config when the file is missing, and what to pass when it is a folder', async () => {
    const absent = join(root, 'absent', 'config');
    await expect(loadCosiConfig(absent)).rejects.toThrow(CosiError);
    await expect(loadCosiConfig(absent)).rejects.toThrow(`no client config at ${absent}: create one with "cosictl gen pki --out DIR" and pass --cosiconfig DIR/cosiconfig (or set COSICONFIG)`);
    await expect(loadCosiConfig(root)).rejects.toThrow(`${root} is a folder: pass the config file, for example ${join(root, 'cosiconfig')}`);
  });

  it('defaults to $COSICONFIG, else ~/.cosi/config', () => {
    vi.stubEnv('COSICONFIG', '/etc/cosi/config');
    expect(defaultCosiConfigPath()).toBe('/etc/cosi/config');
    vi.stubEnv('COSICONFIG', '');
    expect(defaultCosiConfigPath()).toBe(join(homedir(), '.cosi', 'config'));
  });

  it('upsertContext creates the file 0600, adds, replaces and switches contexts, and never writes a bad one', async () => {
    const path = join(root, 'home', '.cosi', 'config');
    const ctx = (name: string, endpoint: string, p: KeyPairPem): CosiContext => ({ name, endpoints: [endpoint], nodes: [], caPem: ca.certPem, certPem: p.certPem, keyPem: p.keyPem });
    const load = () => loadCosiConfig(path);

    await upsertContext(path, ctx('ops', '10.0.0.1:50000', admin), { makeCurrent: false });
    expect(((await stat(path)).mode & 0o777).toString(8)).toBe('600');
    expect((await load()).currentContext).toBe('ops');

    await upsertContext(path, ctx('viewer', '10.0.0.2:50000', reader), { makeCurrent: false });
    let cfg = await load();
    expect(cfg.currentContext).toBe('ops');
    expect([...cfg.contexts.keys()]).toEqual(['ops', 'viewer']);

    await chmod(path, 0o644);
    await upsertContext(path, ctx('ops', '10.0.0.3:50000', admin), { makeCurrent: false });
    await upsertContext(path, ctx('viewer', '10.0.0.2:50000', reader), { makeCurrent: true });
    cfg = await load();
    expect(cfg.currentContext).toBe('viewer');
    expect(selectContext(cfg, 'ops').endpoints).toEqual(['10.0.0.3:50000']);
    expect(selectContext(cfg).certPem).toBe(reader.certPem);
    expect(((await stat(path)).mode & 0o777).toString(8)).toBe('600');

    const before = await readFile(path, 'utf8');
    await expect(upsertContext(path, { ...ctx('broken', '10.0.0.4:50000', admin), endpoints: [] }, { makeCurrent: true })).rejects.toThrow(/context "broken" has no endpoints/);
    await expect(upsertContext(path, { ...ctx('broken', '10.0.0.4:50000', admin), keyPem: reader.keyPem }, { makeCurrent: true })).rejects.toThrow(/do not belong together/);
    expect(await readFile(path, 'utf8')).toBe(before);

    // A damaged file is reported, not overwritten.
    await writeFile(path, 'contexts: [', { mode: 0o600 });
    await expect(upsertContext(path, ctx('ops', '10.0.0.1:50000', admin), { makeCurrent: true })).rejects.toThrow(/not valid YAML/);
    expect(await readFile(path, 'utf8')).toBe('contexts: [');
  });
});
