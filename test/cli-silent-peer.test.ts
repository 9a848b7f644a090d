// cosictl against a server that accepts the connection and then never answers: the compiled binary, a real socket.
// Two such peers: one that accepts TCP and never speaks (the TLS handshake never completes), one that completes the
// TLS handshake with a certificate of the test CA and then never speaks HTTP/2. Whatever the server does, the
// command must end with its error; the process must not linger until the peer closes the connection.
import { spawn } from 'node:child_process';
import { createServer as createTcpServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makePki, type TestPki } from './harness.js';

const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');
/** How long after printing its error the process may take to be gone (a loaded machine included). */
const EXIT_WITHIN_MS = 5_000;

let pki: TestPki;
const servers: Server[] = [];
const sockets: Socket[] = [];
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
});

beforeAll(async () => {
  pki = await makePki();
});

/** A peer that accepts and keeps every connection open, saying nothing. */
async function silentPeer(kind: 'tcp' | 'tls'): Promise<{ endpoint: string; handshakes: () => number }> {
  let handshakes = 0;
  const keep = (s: Socket) => {
    sockets.push(s);
    s.on('error', () => {});
  };
  const server =
    kind === 'tcp'
      ? createTcpServer(keep)
      : createTlsServer({ key: pki.server.keyPem, cert: pki.server.certPem, ca: pki.ca.certPem, requestCert: true, ALPNProtocols: ['h2'] }, (s) => {
          handshakes++;
          keep(s);
        });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return { endpoint: `127.0.0.1:${address.port}`, handshakes: () => handshakes };
}

interface Ended {
  code: number | null;
  stderr: string;
  /** From the error's first byte on stderr to the process's end; undefined when it printed nothing. */
  lingeredMs: number | undefined;
}

/** Runs cosictl; a process still there EXIT_WITHIN_MS after its error is killed (and reported so). */
function run(endpoint: string, args: string[]): Promise<Ended> {
  const child = spawn(process.execPath, [CLI, '--cosiconfig', pki.cosiconfig, '-e', endpoint, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let printedAt: number | undefined;
  // A bound, not a synchronisation: the first one for a command that never prints, the second for one that lingers.
  let kill = setTimeout(() => child.kill('SIGKILL'), 30_000);
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (printedAt === undefined) {
      printedAt = Date.now();
      clearTimeout(kill);
      kill = setTimeout(() => child.kill('SIGKILL'), EXIT_WITHIN_MS);
    }
  });
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(kill);
      resolve({ code, stderr, lingeredMs: printedAt === undefined ? undefined : Date.now() - printedAt });
    }),
  );
}

describe('cosictl against a peer that never answers', () => {
  it.each([
    ['tcp', ['get', 'rd']],
    ['tcp', ['containers', '-k']],
    ['tcp', ['wait', 'podstatus', '--for', 'delete']],
    ['tls', ['get', 'rd']],
    ['tls', ['get', 'staticpods', '-w']],
  ] as const)('%s peer, %j: prints the deadline error and exits at once (--request-timeout 1s)', async (kind, args) => {
    const peer = await silentPeer(kind);
    const r = await run(peer.endpoint, ['--request-timeout', '1s', ...args]);
    expect(r.stderr).toMatch(new RegExp(`^error: \\w+: no complete answer from ${peer.endpoint.replace(/\./g, '\\.')} within 1000 ms \\(deadline exceeded\\)\\n$`));
    expect(r.code).toBe(1);
    expect(r.lingeredMs).toBeLessThan(EXIT_WITHIN_MS);
    // The TLS peer is a real TLS server of the test CA: the handshake completed, only HTTP/2 never came.
    if (kind === 'tls') expect(peer.handshakes()).toBeGreaterThan(0);
  });

  it.each([['1'], ['-1s']])('--request-timeout %s is a usage error', async (value) => {
    const r = await run('127.0.0.1:1', [`--request-timeout=${value}`, 'get', 'rd']);
    expect(r.stderr).toBe(`error: --request-timeout needs a duration such as 10s, 1m or 500ms (0: no deadline), not ${JSON.stringify(value)}\nrun 'cosictl get --help' for usage\n`);
    expect(r.code).toBe(2);
  });
});
