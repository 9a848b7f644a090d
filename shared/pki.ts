// X.509 for mTLS: a CA, server and client certificates (ECDSA P-256, SHA-256) through @peculiar/x509.
// @peculiar/x509 resolves its ASN.1 services through tsyringe, which needs the reflect-metadata polyfill.
import 'reflect-metadata';
import { randomBytes, webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;

export interface KeyPairPem {
  certPem: string;
  keyPem: string;
}

interface Issuer {
  cert: x509.X509Certificate;
  key: webcrypto.CryptoKey;
}

async function loadIssuer(ca: KeyPairPem): Promise<Issuer> {
  const cert = new x509.X509Certificate(ca.certPem);
  const der = x509.PemConverter.decodeFirst(ca.keyPem);
  const key = await webcrypto.subtle.importKey('pkcs8', der, ALG, false, ['sign']);
  return { cert, key };
}

function newKeys(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
}

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return withNewline(x509.PemConverter.encode(der, 'PRIVATE KEY'));
}

/** A random positive 128-bit serial (the top bit cleared keeps the DER integer positive). */
function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f;
  return b.toString('hex');
}

/** PEM files end with a newline, so that concatenating them makes a valid bundle. */
function withNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

/** Escapes a value for an RFC 4514 distinguished name. */
function rdn(value: string): string {
  return value.replace(/([,+"\\<>;=#])/g, '\\$1');
}

function validity(opts: { validDays?: number; notBefore?: Date; notAfter?: Date }, defaultDays: number): { notBefore: Date; notAfter: Date } {
  // Backdate a little so a freshly issued certificate is valid on a peer whose clock is slightly behind.
  const notBefore = opts.notBefore ?? new Date(Date.now() - 5 * 60_000);
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + (opts.validDays ?? defaultDays) * DAY_MS);
  return { notBefore, notAfter };
}

export async function generateCa(opts: { commonName?: string; validDays?: number } = {}): Promise<KeyPairPem> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${rdn(opts.commonName ?? 'cosi-pods CA')}`,
    ...validity(opts, 3650),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: withNewline(cert.toString('pem')), keyPem: await keyPem(keys.privateKey) };
}

async function issue(ca: KeyPairPem, subject: string, extensions: x509.Extension[], dates: { notBefore: Date; notAfter: Date }): Promise<KeyPairPem> {
  const issuer = await loadIssuer(ca);
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject,
    issuer: issuer.cert.subject,
    ...dates,
    publicKey: keys.publicKey,
    signingKey: issuer.key,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.cert),
      ...extensions,
    ],
  });
  return { certPem: withNewline(cert.toString('pem')), keyPem: await keyPem(keys.privateKey) };
}

export async function issueServerCert(ca: KeyPairPem, opts: { commonName?: string; sans: string[]; validDays?: number }): Promise<KeyPairPem> {
  const names = opts.sans.map((s) => (isIP(s) !== 0 ? { type: 'ip' as const, value: s } : { type: 'dns' as const, value: s }));
  return issue(
    ca,
    `CN=${rdn(opts.commonName ?? 'cosid')}`,
    [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names),
    ],
    validity(opts, 365),
  );
}

export async function issueClientCert(
  ca: KeyPairPem,
  opts: { commonName: string; organizations: string[]; validDays?: number; notBefore?: Date; notAfter?: Date },
): Promise<KeyPairPem> {
  // One O attribute per role, as talosctl's certificates carry them.
  const subject = [`CN=${rdn(opts.commonName)}`, ...opts.organizations.map((o) => `O=${rdn(o)}`)].join(', ');
  return issue(
    ca,
    subject,
    [new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true), new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    validity(opts, 365),
  );
}
