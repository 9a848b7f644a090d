// The files of `cosictl gen pki`: a CA, server and client certificates, and a cosiconfig to use them.
import { access, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generateCa, issueClientCert, issueServerCert, type KeyPairPem } from '../shared/pki.js';
import { serializeCosiConfig } from './cosiconfig.js';

export interface PkiFiles {
  ca: string;
  caKey: string;
  server: string;
  serverKey: string;
  admin: string;
  adminKey: string;
  reader: string;
  readerKey: string;
  cosiconfig: string;
}

/** Writes a new CA, server.crt (SANs 127.0.0.1, localhost + sans), admin and reader client certs and a cosiconfig. */
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
    cosiconfig: join(dir, 'cosiconfig'),
  };
  if (opts.force !== true) {
    const exists = await access(files.caKey).then(
      () => true,
      () => false,
    );
    if (exists) throw new Error(`${files.caKey} already exists: refusing to replace a CA (use --force, or another --out folder)`);
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ca = await generateCa();
  const server = await issueServerCert(ca, { sans: [...new Set(['127.0.0.1', 'localhost', ...(opts.sans ?? [])])] });
  const admin = await issueClientCert(ca, { commonName: 'admin', organizations: ['os:admin'] });
  const reader = await issueClientCert(ca, { commonName: 'reader', organizations: ['os:reader'] });
  const put = (path: string, text: string, secret: boolean) => writeFile(path, text, { mode: secret ? 0o600 : 0o644 });
  await put(files.ca, ca.certPem, false);
  await put(files.caKey, ca.keyPem, true);
  await put(files.server, server.certPem, false);
  await put(files.serverKey, server.keyPem, true);
  await put(files.admin, admin.certPem, false);
  await put(files.adminKey, admin.keyPem, true);
  await put(files.reader, reader.certPem, false);
  await put(files.readerKey, reader.keyPem, true);
  const endpoint = opts.endpoint ?? '127.0.0.1:50000';
  const context = (name: string, pair: KeyPairPem) => ({ name, endpoints: [endpoint], nodes: [], caPem: ca.certPem, certPem: pair.certPem, keyPem: pair.keyPem });
  const config = serializeCosiConfig({ currentContext: 'admin', contexts: new Map([['admin', context('admin', admin)], ['reader', context('reader', reader)]]) });
  await put(files.cosiconfig, config, true);
  return files;
}
