// The serving certificate, its key and the trusted client CAs, reloaded when their files change: rotation
// without a restart. A bad new set (unreadable, not matching, not parseable) is refused and the current one
// stays; a CA file may hold several CAs, so the old and the new CA are trusted together during a rotation.
import * as grpc from '@grpc/grpc-js';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createSecureContext } from 'node:tls';
import type { Logger } from '../../shared/log.js';
import { limitHandshake } from '../grpc-internals.js';

export interface TlsPaths {
  caFile: string;
  certFile: string;
  keyFile: string;
}

interface Material {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

type CaListener = (update: { caCertificate: Buffer } | null) => void;
type IdentityListener = (update: { certificate: Buffer; privateKey: Buffer } | null) => void;

/** Splits a PEM bundle into its certificates and parses each (a bad one refuses the whole bundle). */
function parseBundle(pem: string, file: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error(`${file}: no PEM certificate`);
  return blocks.map((b) => new X509Certificate(b));
}

export function validateMaterial(m: Material, paths: TlsPaths): { subject: string; notAfter: string; cas: number; fingerprint: string } {
  const cas = parseBundle(m.ca.toString('utf8'), paths.caFile);
  for (const ca of cas) if (!ca.ca) throw new Error(`${paths.caFile}: ${ca.subject.replace(/\n/g, ', ')} is not a CA certificate`);
  const [cert] = parseBundle(m.cert.toString('utf8'), paths.certFile);
  if (cert === undefined) throw new Error(`${paths.certFile}: no certificate`);
  const key = createPrivateKey(m.key);
  if (!cert.checkPrivateKey(key)) throw new Error(`${paths.keyFile} does not belong to ${paths.certFile}`);
  // The same check Node makes when it builds the context, done before anything is swapped in.
  createSecureContext({ ca: m.ca, cert: m.cert, key: m.key });
  return { subject: cert.subject.replace(/\n/g, ', '), notAfter: cert.validTo, cas: cas.length, fingerprint: cert.fingerprint256 };
}

export class TlsMaterial {
  private current: Material;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private watchers: FSWatcher[] = [];
  private poll: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private reloading: Promise<void> = Promise.resolve();

  private constructor(
    private readonly paths: TlsPaths,
    private readonly log: Logger,
    initial: Material,
  ) {
    this.current = initial;
  }

  /** When the serving certificate and each trusted CA stop being valid (for metrics). */
  expiry(): { server: Date | undefined; cas: { subject: string; notAfter: Date }[] } {
    const [cert] = parseBundle(this.current.cert.toString('utf8'), this.paths.certFile);
    const cas = parseBundle(this.current.ca.toString('utf8'), this.paths.caFile);
    return {
      server: cert === undefined ? undefined : new Date(cert.validTo),
      cas: cas.map((c) => ({ subject: c.subject.replace(/\n/g, ', '), notAfter: new Date(c.validTo) })),
    };
  }

  /** The files' text in use: for a second dial of its own (shared/tls-probe.ts). */
  pem(): { caPem: string; certPem: string; keyPem: string } {
    return { caPem: this.current.ca.toString('utf8'), certPem: this.current.cert.toString('utf8'), keyPem: this.current.key.toString('utf8') };
  }

  /** The certificate in use (this side's own, not a CA's). */
  certificate(): X509Certificate {
    const [cert] = parseBundle(this.current.cert.toString('utf8'), this.paths.certFile);
    if (cert === undefined) throw new Error(`${this.paths.certFile}: no certificate`);
    return cert;
  }

  /** Reads and checks the files; fails when they are not a usable set. */
  static async load(paths: TlsPaths, log: Logger): Promise<TlsMaterial> {
    const m = await readMaterial(paths);
    validateMaterial(m, paths);
    return new TlsMaterial(paths, log, m);
  }

  /** From PEM text (tests and embedded use): no files to watch. */
  static fromPem(pem: { caPem: string; certPem: string; keyPem: string }, log: Logger): TlsMaterial {
    const m = { ca: normalizeBundle(Buffer.from(pem.caPem)), cert: Buffer.from(pem.certPem), key: Buffer.from(pem.keyPem) };
    const paths = { caFile: '<ca>', certFile: '<cert>', keyFile: '<key>' };
    validateMaterial(m, paths);
    return new TlsMaterial(paths, log, m);
  }

  /**
   * Server credentials that follow this material: new connections use the latest set at once. Throws when the
   * grpc-js internal that sets the handshake timeout is missing.
   */
  serverCredentials(opts: { handshakeTimeoutMs: number }): grpc.ServerCredentials {
    const creds = grpc.experimental.createCertificateProviderServerCredentials(this, this, true);
    // Half-open or idle handshakes must not hold a socket for Node's default 120 s. This reaches a grpc-js
    // internal, and throws when it is not there.
    limitHandshake(creds, opts.handshakeTimeoutMs);
    return creds;
  }

  /** Reloads on file changes (folder watch, as files are often replaced) and every `pollMs` as a fallback. */
  watch(pollMs = 10_000): void {
    const dirs = new Set([dirname(this.paths.caFile), dirname(this.paths.certFile), dirname(this.paths.keyFile)]);
    for (const d of dirs) {
      try {
        const w = watch(d, { persistent: false }, () => {
          clearTimeout(this.debounce);
          this.debounce = setTimeout(() => void this.reload(), 100);
        });
        w.on('error', () => {});
        this.watchers.push(w);
      } catch (err) {
        this.log.warn('cannot watch the TLS files; polling only', { dir: d, error: err });
      }
    }
    this.poll = setInterval(() => void this.reload(), pollMs);
    this.poll.unref();
  }

  stop(): void {
    clearInterval(this.poll);
    clearTimeout(this.debounce);
    for (const w of this.watchers) w.close();
  }

  /** Re-reads the files; swaps in a new, valid set; keeps the current one otherwise. */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(async () => {
      let next: Material;
      try {
        next = await readMaterial(this.paths);
      } catch (err) {
        this.log.error('cannot read the TLS files; keeping the current certificate', { error: err });
        return;
      }
      if (next.ca.equals(this.current.ca) && next.cert.equals(this.current.cert) && next.key.equals(this.current.key)) return;
      try {
        const info = validateMaterial(next, this.paths);
        this.current = next;
        this.log.info('TLS certificate and trusted CAs reloaded', info);
        for (const l of this.caListeners) l({ caCertificate: next.ca });
        for (const l of this.identityListeners) l({ certificate: next.cert, privateKey: next.key });
      } catch (err) {
        this.log.error('new TLS files refused; keeping the current certificate', { error: err });
      }
    });
    return this.reloading;
  }

  // grpc-js CertificateProvider: listeners get the current set, then every change. The first call is deferred:
  // grpc-js registers its own watcher only after adding these listeners, and would miss a synchronous one.
  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    queueMicrotask(() => {
      if (this.caListeners.has(listener)) listener({ caCertificate: this.current.ca });
    });
  }
  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }
  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    queueMicrotask(() => {
      if (this.identityListeners.has(listener)) listener({ certificate: this.current.cert, privateKey: this.current.key });
    });
  }
  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }
}

async function readMaterial(paths: TlsPaths): Promise<Material> {
  const [ca, cert, key] = await Promise.all([readFile(paths.caFile), readFile(paths.certFile), readFile(paths.keyFile)]);
  return { ca: normalizeBundle(ca), cert, key };
}

/** One certificate per PEM block, newline-separated: a bundle written without newlines between blocks still works. */
function normalizeBundle(pem: Buffer): Buffer {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  return blocks === null ? pem : Buffer.from(blocks.join('\n') + '\n');
}
