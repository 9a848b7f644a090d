// X.509 for mTLS: a CA, server and client certificates (ECDSA P-256, SHA-256) through @peculiar/x509. The files of
// `cosictl gen pki` are written by `generatePki` in client/gen-pki.ts.
// @peculiar/x509 resolves its services through tsyringe, which throws at import time unless a Reflect
// metadata polyfill is loaded first; reflect-metadata is a direct dependency for that reason.
import 'reflect-metadata';
import { createPrivateKey, randomBytes, webcrypto, X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
// Backdating notBefore keeps a fresh certificate valid on a peer whose clock is a little behind.
const CLOCK_SKEW_MS = 5 * 60_000;

export interface KeyPairPem {
  certPem: string;
  /** PKCS#8 PEM ("PRIVATE KEY"). */
  keyPem: string;
}

interface Validity {
  validDays?: number;
  notBefore?: Date;
  notAfter?: Date;
}

function validity(opts: Validity, defaultDays: number): { notBefore: Date; notAfter: Date } {
  const days = opts.validDays ?? defaultDays;
  if (!Number.isFinite(days) || days <= 0) throw new Error(`validDays must be a positive number (got ${days})`);
  const now = Date.now();
  const notBefore = opts.notBefore ?? new Date(now - CLOCK_SKEW_MS);
  // Without an explicit start, the lifetime counts from now, so that a tiny validDays is not eaten by the backdating.
  const notAfter = opts.notAfter ?? new Date((opts.notBefore === undefined ? now : notBefore.getTime()) + days * DAY_MS);
  if (Number.isNaN(notBefore.getTime()) || Number.isNaN(notAfter.getTime())) throw new Error('notBefore and notAfter must be valid dates');
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new Error(`notAfter (${notAfter.toISOString()}) must be after notBefore (${notBefore.toISOString()})`);
  }
  return { notBefore, notAfter };
}

/** 16 random bytes: @peculiar/x509 strips leading zero octets and adds one when the top bit is set, so the DER integer is positive and minimal. */
function serial(): string {
  return randomBytes(16).toString('hex');
}

/** PEM files end with a newline, so that concatenating them makes a valid bundle. */
function withNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

/**
 * A distinguished name from literal values. @peculiar/x509 treats plain strings (even in its JSON form) as
 * RFC 4514 text, so quotes, backslashes and a leading '#' would change the value; typed values are taken as is.
 * PrintableString when the value allows it (as Go and OpenSSL do), else UTF8String.
 */
function distinguishedName(rdns: [type: 'CN' | 'O', value: string][]): x509.Name {
  for (const [type, value] of rdns) if (value === '') throw new Error(`a certificate name cannot have an empty ${type}`);
  return new x509.Name(rdns.map(([type, value]) => ({ [type]: [/^[A-Za-z0-9 '()+,\-./:=?]*$/.test(value) ? { printableString: value } : { utf8String: value }] })));
}

function newKeys(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
}

async function exportKeyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return withNewline(x509.PemConverter.encode(der, 'PRIVATE KEY'));
}

interface Issuer {
  cert: x509.X509Certificate;
  key: webcrypto.CryptoKey;
}

/** Loads a CA pair, with errors that say which part is wrong (the CA may come from `--ca-dir`, made by someone else). */
async function loadIssuer(ca: KeyPairPem): Promise<Issuer> {
  let nodeCert: NodeX509;
  try {
    nodeCert = new NodeX509(ca.certPem);
  } catch (err) {
    throw new Error(`the CA certificate is not a valid PEM certificate: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!nodeCert.ca) throw new Error(`the CA certificate (${nodeCert.subject.replace(/\n/g, ', ')}) is not a CA: it lacks basicConstraints CA:true`);
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey(ca.keyPem);
  } catch (err) {
    throw new Error(`the CA key is not a valid PEM private key: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (keyObject.asymmetricKeyType !== 'ec' || keyObject.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    const got = [keyObject.asymmetricKeyType ?? 'unknown', keyObject.asymmetricKeyDetails?.namedCurve].filter((s) => s !== undefined).join(' ');
    throw new Error(`the CA key must be an ECDSA P-256 key (got ${got})`);
  }
  if (!nodeCert.checkPrivateKey(keyObject)) throw new Error('the CA key does not belong to the CA certificate');
  // Re-exported as PKCS#8 so that a SEC1 ("EC PRIVATE KEY") CA key works too.
  const der = keyObject.export({ type: 'pkcs8', format: 'der' });
  const key = await webcrypto.subtle.importKey('pkcs8', der, ALG, false, ['sign']);
  return { cert: new x509.X509Certificate(nodeCert.raw), key };
}

export async function generateCa(opts: { commonName?: string; validDays?: number } = {}): Promise<KeyPairPem> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: distinguishedName([['CN', opts.commonName ?? 'cosi-pods CA']]),
    ...validity(opts, 3650),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: withNewline(cert.toString('pem')), keyPem: await exportKeyPem(keys.privateKey) };
}

async function issue(ca: KeyPairPem, subject: x509.Name, extensions: x509.Extension[], dates: { notBefore: Date; notAfter: Date }): Promise<KeyPairPem> {
  const issuer = await loadIssuer(ca);
  const keys = await newKeys();
  // The authority key identifier must equal the CA's subject key identifier, whatever method made that one.
  const caSki = issuer.cert.getExtension(x509.SubjectKeyIdentifierExtension);
  const aki = caSki !== null ? new x509.AuthorityKeyIdentifierExtension(caSki.keyId) : await x509.AuthorityKeyIdentifierExtension.create(issuer.cert.publicKey);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject,
    // The CA's own encoded name, so that chain building matches it byte for byte.
    issuer: issuer.cert.subjectName,
    ...dates,
    publicKey: keys.publicKey,
    signingKey: issuer.key,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      aki,
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      ...extensions,
    ],
  });
  return { certPem: withNewline(cert.toString('pem')), keyPem: await exportKeyPem(keys.privateKey) };
}

function generalName(san: string): x509.JsonGeneralName {
  const s = san.trim();
  if (s === '' || /\s/.test(s)) throw new Error(`invalid subject alternative name ${JSON.stringify(san)}: use a DNS name or an IP address`);
  // "[::1]" is how IPv6 is written next to a port; the SAN is the bare address.
  const bare = s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
  return isIP(bare) !== 0 ? { type: 'ip', value: bare } : { type: 'dns', value: s };
}

export async function issueServerCert(ca: KeyPairPem, opts: { commonName?: string; sans: string[]; validDays?: number }): Promise<KeyPairPem> {
  if (opts.sans.length === 0) throw new Error('a server certificate needs at least one subject alternative name');
  return issue(
    ca,
    distinguishedName([['CN', opts.commonName ?? 'cosid']]),
    [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]), new x509.SubjectAlternativeNameExtension(opts.sans.map(generalName))],
    validity(opts, 365),
  );
}

/** A client certificate: CN is the identity, and each organization (one O attribute each) a role such as os:admin. */
export async function issueClientCert(
  ca: KeyPairPem,
  opts: { commonName: string; organizations: string[]; validDays?: number; notBefore?: Date; notAfter?: Date },
): Promise<KeyPairPem> {
  return issue(
    ca,
    distinguishedName([['CN', opts.commonName], ...opts.organizations.map((o): ['O', string] => ['O', o])]),
    [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    validity(opts, 365),
  );
}
