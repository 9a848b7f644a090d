// The files of `cosictl gen pki`: a CA, server and client certificates, and a cosiconfig to use them.
import { mkdir, open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { generateCa, issueClientCert, issueServerCert, type KeyPairPem } from '../shared/pki.js';
import { serializeCosiConfig, type CosiContext } from './cosiconfig.js';

export interface PkiFiles {
  ca: string;
  caKey: string;
  server: string;
  serverKey: string;
  admin: string;
  adminKey: string;
  reader: string;
  readerKey: string;
  impersonator: string;
  impersonatorKey: string;
  fleet: string;
  fleetKey: string;
  cosiconfig: string;
}

/**
 * Writes one file. Secrets are created 0600, and an existing file is narrowed to 0600 before the secret is
 * written into it (mode on open applies only to new files). `exclusive` refuses to replace an existing file.
 */
async function writeOut(path: string, text: string, secret: boolean, exclusive: boolean): Promise<void> {
  const mode = secret ? 0o600 : 0o644;
  let fh: FileHandle;
  try {
    fh = await open(path, exclusive ? 'wx' : 'w', mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`${path} already exists: refusing to replace a CA (use --force, or another --out folder)`);
    throw err;
  }
  try {
    if (secret) await fh.chmod(mode);
    await fh.writeFile(text, 'utf8');
  } finally {
    await fh.close();
  }
}

/**
 * Writes a new PKI into dir: ca.crt/key, server.crt/key (SANs 127.0.0.1, localhost and opts.sans),
 * admin.crt/key (O=os:admin), reader.crt/key (O=os:reader), impersonator.crt/key (O=os:impersonator: what cosid
 * passes calls naming another node on with, as Talos's apid), fleet.crt/key (O=os:reader and O=os:impersonator: what
 * cosi-fleet follows nodes and relays calls to them with) and a cosiconfig with the contexts admin (current) and
 * reader. Refuses when dir already holds a ca.key, unless opts.force.
 */
export async function generatePki(dir: string, opts: { sans?: string[]; endpoint?: string; force?: boolean } = {}): Promise<PkiFiles> {
  const files: PkiFiles = {
    ca: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    server: join(dir, 'server.crt'),
    serverKey: join(dir, 'server.key'),
    admin: join(dir, 'admin.crt'),
    adminKey: join(dir, 'admin.key'),
    reader: join(dir, 'reader.crt'),
    readerKey: join(dir, 'reader.key'),
    impersonator: join(dir, 'impersonator.crt'),
    impersonatorKey: join(dir, 'impersonator.key'),
    fleet: join(dir, 'fleet.crt'),
    fleetKey: join(dir, 'fleet.key'),
    cosiconfig: join(dir, 'cosiconfig'),
  };
  const force = opts.force === true;
  // Checked up front to fail before any work; the exclusive open of ca.key below closes the race.
  if (!force && (await stat(files.caKey).then(() => true, () => false))) {
    throw new Error(`${files.caKey} already exists: refusing to replace a CA (use --force, or another --out folder)`);
  }
  const endpoint = opts.endpoint ?? '127.0.0.1:50000';
  if (endpoint.trim() === '') throw new Error('the endpoint must be HOST:PORT');

  const ca = await generateCa();
  const server = await issueServerCert(ca, { sans: [...new Set(['127.0.0.1', 'localhost', ...(opts.sans ?? [])])] });
  const admin = await issueClientCert(ca, { commonName: 'admin', organizations: ['os:admin'] });
  const reader = await issueClientCert(ca, { commonName: 'reader', organizations: ['os:reader'] });
  const impersonator = await issueClientCert(ca, { commonName: 'cosid', organizations: ['os:impersonator'] });
  const fleet = await issueClientCert(ca, { commonName: 'cosi-fleet', organizations: ['os:reader', 'os:impersonator'] });
  const context = (name: string, pair: KeyPairPem): CosiContext => ({ name, endpoints: [endpoint], nodes: [], caPem: ca.certPem, certPem: pair.certPem, keyPem: pair.keyPem });
  const config = serializeCosiConfig({
    currentContext: 'admin',
    contexts: new Map([
      ['admin', context('admin', admin)],
      ['reader', context('reader', reader)],
    ]),
  });

  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeOut(files.caKey, ca.keyPem, true, !force);
  await writeOut(files.ca, ca.certPem, false, false);
  await writeOut(files.server, server.certPem, false, false);
  await writeOut(files.serverKey, server.keyPem, true, false);
  await writeOut(files.admin, admin.certPem, false, false);
  await writeOut(files.adminKey, admin.keyPem, true, false);
  await writeOut(files.reader, reader.certPem, false, false);
  await writeOut(files.readerKey, reader.keyPem, true, false);
  await writeOut(files.impersonator, impersonator.certPem, false, false);
  await writeOut(files.impersonatorKey, impersonator.keyPem, true, false);
  await writeOut(files.fleet, fleet.certPem, false, false);
  await writeOut(files.fleetKey, fleet.keyPem, true, false);
  await writeOut(files.cosiconfig, config, true, false);
  return files;
}
