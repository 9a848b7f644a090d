// Deadlines and cancellation: a stalled server never hangs a call. Real peers on 127.0.0.1 that accept and never
// answer (plain TCP: the TLS handshake stalls; TLS: the handshake completes and HTTP/2 stays silent), and a real
// cosid behind a proxy that stops forwarding its answers. Each wait is the call's own promise, bounded by the test.
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type CosiClient } from '../client/index.js';
import { makePki, startServer, type TestPki, type TestServer } from './harness.js';
import { StallableProxy } from './proxy.js';

let pki: TestPki;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  pki = await makePki();
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** A peer that accepts connections and never says a word; `accepted` resolves on the first connection. */
async function silentPeer(kind: 'tcp' | 'tls'): Promise<{ endpoint: string; accepted: Promise<void> }> {
  const sockets: Socket[] = [];
  let onAccept: () => void = () => {};
  const accepted = new Promise<void>((resolve) => (onAccept = resolve));
  const keep = (s: Socket) => {
    sockets.push(s);
    s.on('error', () => {});
    onAccept();
  };
  const server: TcpServer | TlsServer =
    kind === 'tcp'
      ? createTcpServer(keep)
      : createTlsServer({ key: pki.server.keyPem, cert: pki.server.certPem, ca: pki.ca.certPem, requestCert: true, ALPNProtocols: ['h2'] }, keep);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { endpoint: `127.0.0.1:${(server.address() as AddressInfo).port}`, accepted };
}

function clientFor(endpoint: string, defaultTimeoutMs?: number): CosiClient {
  const c = connect({ endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem, ...(defaultTimeoutMs !== undefined ? { defaultTimeoutMs } : {}) });
  cleanups.push(() => c.close());
  return c;
}

/** Runs the call and returns how it failed and after how long. */
async function failure(call: () => Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const started = performance.now();
  try {
    await call();
  } catch (error) {
    return { error, ms: performance.now() - started };
  }
  throw new Error('the call succeeded against a silent peer');
}

describe.each(['tcp', 'tls'] as const)('a %s peer that accepts and never answers', (kind) => {
  it('fails get() with deadline-exceeded at its timeoutMs, not later', async () => {
    const peer = await silentPeer(kind);
    const client = clientFor(peer.endpoint);
    const { error, ms } = await failure(() => client.get('staticpods', 'x', { timeoutMs: 400 }));
    expect(error).toMatchObject({ name: 'CosiError', kind: 'deadline-exceeded', code: 4, message: `Get: no complete answer from ${peer.endpoint} within 400 ms (deadline exceeded)` });
    expect(ms).toBeGreaterThanOrEqual(390);
    expect(ms).toBeLessThan(400 + 2000);
  });

  it('applies the client\'s default deadline to get, list, listIter, definitions and containers', async () => {
    const peer = await silentPeer(kind);
    const client = clientFor(peer.endpoint, 300);
    const calls: [string, () => Promise<unknown>][] = [
      ['get', () => client.get('staticpods', 'x')],
      ['list', () => client.list('staticpods')],
      ['listIter', () => client.listIter('staticpods').next()],
      ['definitions', () => client.definitions()],
      ['containers', () => client.containers()],
    ];
    const results = await Promise.all(calls.map(async ([name, call]) => [name, await failure(call)] as const));
    for (const [name, { error, ms }] of results) {
      expect(error, name).toMatchObject({ kind: 'deadline-exceeded' });
      expect(ms, name).toBeLessThan(300 + 2000);
    }
  });
});

describe('cancellation', () => {
  it('an AbortSignal cancels a call in flight with cancelled, saying why', async () => {
    const peer = await silentPeer('tls');
    const client = clientFor(peer.endpoint);
    const abort = new AbortController();
    const pending = failure(() => client.get('staticpods', 'x', { signal: abort.signal }));
    await peer.accepted;
    abort.abort(new Error('the user pressed Ctrl-C'));
    const { error } = await pending;
    expect(error).toMatchObject({ kind: 'cancelled', code: 1, message: 'Get was cancelled: the user pressed Ctrl-C' });
  });

  it('an already aborted signal fails the call at once', async () => {
    const peer = await silentPeer('tcp');
    const client = clientFor(peer.endpoint);
    await expect(client.list('staticpods', { signal: AbortSignal.abort() })).rejects.toMatchObject({ kind: 'cancelled', message: 'List was cancelled' });
    await expect(client.containers({ signal: AbortSignal.abort() })).rejects.toMatchObject({ kind: 'cancelled' });
  });

  it('closing the client fails its calls in flight with cancelled', async () => {
    const peer = await silentPeer('tls');
    const client = clientFor(peer.endpoint);
    const pending = failure(() => client.get('staticpods', 'x'));
    await peer.accepted;
    client.close();
    expect((await pending).error).toMatchObject({ kind: 'cancelled', message: 'Get was cancelled: the client was closed' });
  });

  it('a watch ends quietly on its signal, and with deadline-exceeded at its timeoutMs', async () => {
    const peer = await silentPeer('tls');
    const client = clientFor(peer.endpoint);
    const abort = new AbortController();
    const quiet = client.watchIter('staticpods', { bootstrap: true, signal: abort.signal }).next();
    await peer.accepted;
    abort.abort();
    expect(await quiet).toEqual({ done: true, value: undefined });
    const { error, ms } = await failure(() => client.watchIter('staticpods', { bootstrap: true, timeoutMs: 300 }).next());
    expect(error).toMatchObject({ kind: 'deadline-exceeded', message: 'the watch of staticpods reached its deadline of 300 ms' });
    expect(ms).toBeLessThan(300 + 2000);
  });
});

describe('a cosid whose answers stop arriving', () => {
  let srv: TestServer;
  let proxy: StallableProxy;
  beforeAll(async () => {
    srv = await startServer({ pki });
    proxy = await StallableProxy.start(() => ({ host: '127.0.0.1', port: srv.cosid.port }));
  });
  afterAll(async () => {
    await proxy.close();
    await srv.close();
  });

  it('fails get() at the deadline on a connection that worked a moment before, and works again once it flows', async () => {
    const client = clientFor(proxy.endpoint);
    expect((await client.list('staticpods')).length).toBe(0);
    proxy.stall();
    const { error, ms } = await failure(() => client.get('staticpods', 'x', { timeoutMs: 400 }));
    expect(error).toMatchObject({ kind: 'deadline-exceeded', message: `Get: no complete answer from ${proxy.endpoint} within 400 ms (deadline exceeded)` });
    expect(ms).toBeLessThan(400 + 2000);
    proxy.resume();
    await expect(client.get('staticpods', 'x', { timeoutMs: 10_000 })).rejects.toMatchObject({ kind: 'not-found' });
  });
});
