// The grpc-js internals cosid hooks (server/grpc-internals.ts): grpc-js is pinned exactly, the hooks are active on a
// running cosid (the TLS handshake limit, the refusal log), and a missing internal stops cosid at start.
import * as grpc from '@grpc/grpc-js';
import { readFile, rm } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cosid } from '../server/cosid.js';
import { GRPC_JS_VERSION, limitHandshake, tlsServersOf } from '../server/grpc-internals.js';
import { createLogger, type Logger } from '../shared/log.js';
import { generateCa, issueClientCert } from '../shared/pki.js';
import { makePki, type TestPki } from './harness.js';

/** Generous on a loaded 2-core machine; without the hooks the waits below would last Node's 120 s default. */
const DEADLINE_MS = 20_000;
const HANDSHAKE_TIMEOUT_MS = 300;

let pki: TestPki;
beforeAll(async () => {
  pki = await makePki();
});
afterAll(async () => {
  await rm(pki.dir, { recursive: true, force: true });
});

/** A logger whose lines can be awaited: `next(pred)` resolves with the first line (past or future) that matches. */
function capturingLogger(): { log: Logger; lines: string[]; next(pred: (line: string) => boolean, what: string): Promise<string> } {
  const lines: string[] = [];
  const waiters = new Set<(line: string) => void>();
  const log = createLogger({
    level: 'debug',
    write: (line) => {
      lines.push(line);
      for (const w of waiters) w(line);
    },
  });
  return {
    log,
    lines,
    next: (pred, what) =>
      new Promise((resolve, reject) => {
        const seen = lines.find(pred);
        if (seen !== undefined) return resolve(seen);
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no log line ${what} within ${DEADLINE_MS} ms; got:\n${lines.join('\n')}`));
        }, DEADLINE_MS);
        const check = (line: string) => {
          if (!pred(line)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(line);
        };
        waiters.add(check);
      }),
  };
}

async function startCosid(log: Logger): Promise<Cosid> {
  return Cosid.start({
    listen: '127.0.0.1:0',
    tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
    nodeName: 'internals',
    handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
    log,
    shutdownGraceMs: 1000,
    runtime: { criEndpoint: `unix://${pki.dir}/no-runtime.sock`, podLogsDir: `${pki.dir}/no-pod-logs` },
  });
}

/** Resolves when the socket closes; rejects after the deadline. */
function closed(socket: { once(event: 'close', l: () => void): unknown; destroy(): void }): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server did not close the connection within ${DEADLINE_MS} ms`));
    }, DEADLINE_MS);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

describe('grpc-js is pinned', () => {
  it('to the exact version installed, in package.json and package-lock.json', async () => {
    const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { dependencies: Record<string, string> };
    const lock = JSON.parse(await readFile(new URL('../package-lock.json', import.meta.url), 'utf8')) as {
      packages: Record<string, { version?: string; dependencies?: Record<string, string> }>;
    };
    expect(pkg.dependencies['@grpc/grpc-js']).toMatch(/^\d+\.\d+\.\d+$/);
    expect(pkg.dependencies['@grpc/grpc-js']).toBe(GRPC_JS_VERSION);
    expect(lock.packages['']?.dependencies?.['@grpc/grpc-js']).toBe(GRPC_JS_VERSION);
    expect(lock.packages['node_modules/@grpc/grpc-js']?.version).toBe(GRPC_JS_VERSION);
  });
});

describe('the hooks are active on a running cosid', () => {
  it('closes a TCP connection that never sends a ClientHello after handshakeTimeoutMs, and logs why', async () => {
    const { log, next } = capturingLogger();
    const cosid = await startCosid(log);
    try {
      const started = performance.now();
      const socket = tcpConnect(cosid.port, '127.0.0.1');
      socket.on('error', () => {});
      await closed(socket);
      const elapsed = performance.now() - started;
      // Closed by the handshake timer: not at once, and long before Node's default of 120 s.
      expect(elapsed).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 50);
      expect(socket.bytesRead).toBe(0);
      const line = await next((l) => l.includes('TLS handshake refused'), 'for the handshake timeout');
      expect(JSON.parse(line)).toMatchObject({ level: 'warn', reason: 'TLS handshake timeout', code: 'ERR_TLS_HANDSHAKE_TIMEOUT' });
    } finally {
      await cosid.stop();
    }
  });

  it('logs a client certificate from a foreign CA as a refused handshake, with the verification error', async () => {
    const { log, lines, next } = capturingLogger();
    const cosid = await startCosid(log);
    try {
      const foreignCa = await generateCa({ commonName: 'someone else' });
      const intruder = await issueClientCert(foreignCa, { commonName: 'intruder', organizations: ['os:admin'] });
      const socket = tlsConnect({ host: '127.0.0.1', port: cosid.port, ca: pki.ca.certPem, cert: intruder.certPem, key: intruder.keyPem, ALPNProtocols: ['h2'] });
      socket.on('error', () => {});
      await closed(socket);
      const line = await next((l) => l.includes('TLS handshake refused'), 'for the foreign certificate');
      // Node releases the connection of a refused certificate before it reports the refusal: the subject and the
      // peer's address are gone by then (server/cosid.ts, logHandshakeRefusals), the verification error is not.
      expect(JSON.parse(line)).toEqual({
        ts: expect.any(String),
        level: 'warn',
        msg: 'TLS handshake refused',
        peer: 'unknown',
        subject: 'unknown',
        // The peer sent its certificate alone, and no trusted CA signed it.
        reason: 'unable to verify the first certificate',
        code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
      });
      expect(lines.join('\n')).not.toMatch(/PRIVATE KEY/);
    } finally {
      await cosid.stop();
    }
  });

  it('logs a client without a certificate with its peer address and "(no certificate)"', async () => {
    const { log, next } = capturingLogger();
    const cosid = await startCosid(log);
    try {
      const socket = tlsConnect({ host: '127.0.0.1', port: cosid.port, ca: pki.ca.certPem, ALPNProtocols: ['h2'] });
      socket.on('error', () => {});
      await closed(socket);
      const line = await next((l) => l.includes('TLS handshake refused'), 'for the client without a certificate');
      expect(JSON.parse(line)).toMatchObject({
        level: 'warn',
        peer: '127.0.0.1',
        subject: '(no certificate)',
        reason: 'peer did not return a certificate',
        code: 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE',
      });
    } finally {
      await cosid.stop();
    }
  });
});

describe('a missing internal stops cosid at start', () => {
  it('tlsServersOf throws, naming the grpc-js version and the internal, without the TLS servers', () => {
    const message = new RegExp(`^@grpc/grpc-js ${GRPC_JS_VERSION.replace(/\./g, '\\.')}: the internal grpc\\.Server#http2Servers `);
    expect(() => tlsServersOf({} as grpc.Server)).toThrow(message);
    expect(() => tlsServersOf({} as grpc.Server)).toThrow(/is missing/);
    // A server that bound nothing has the map, but no TLS server in it.
    const unbound = new grpc.Server();
    expect(() => tlsServersOf(unbound)).toThrow(message);
    expect(() => tlsServersOf(unbound)).toThrow(/holds no TLS server after bindAsync/);
  });

  it('limitHandshake throws without _getConstructorOptions, or when it returns no options', () => {
    const message = new RegExp(`^@grpc/grpc-js ${GRPC_JS_VERSION.replace(/\./g, '\\.')}: the internal ServerCredentials#_getConstructorOptions `);
    expect(() => limitHandshake({} as grpc.ServerCredentials, 300)).toThrow(message);
    expect(() => limitHandshake({} as grpc.ServerCredentials, 300)).toThrow(/is missing/);
    expect(() => limitHandshake({ _getConstructorOptions: () => null } as unknown as grpc.ServerCredentials, 300)).toThrow(/returns no TLS server options/);
    // Where it is there, the timeout joins grpc-js's own options.
    const creds = { _getConstructorOptions: () => ({ requestCert: true }) } as unknown as grpc.ServerCredentials & { _getConstructorOptions(): object };
    limitHandshake(creds, 300);
    expect(creds._getConstructorOptions()).toEqual({ requestCert: true, handshakeTimeout: 300 });
  });

  it('Cosid.start rejects with that error when grpc-js lacks _getConstructorOptions', async () => {
    const proto = grpc.ServerCredentials.prototype as unknown as { _getConstructorOptions?: unknown };
    const original = Object.getOwnPropertyDescriptor(proto, '_getConstructorOptions');
    expect(original).toBeDefined();
    delete proto._getConstructorOptions;
    try {
      await expect(startCosid(createLogger({ write: () => {} }))).rejects.toThrow(
        new RegExp(`@grpc/grpc-js ${GRPC_JS_VERSION.replace(/\./g, '\\.')}: the internal ServerCredentials#_getConstructorOptions is missing`),
      );
    } finally {
      if (original !== undefined) Object.defineProperty(proto, '_getConstructorOptions', original);
    }
    // grpc-js is whole again: cosid starts.
    const cosid = await startCosid(createLogger({ write: () => {} }));
    await cosid.stop();
  });
});
