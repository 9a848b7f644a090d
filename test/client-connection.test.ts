// Connecting: the library is quiet in the user's process (no DEP0123 for an IP endpoint) while it still checks the
// server's certificate against that IP; and each way a connection can fail is one line that says what is wrong and
// what to do, as the compiled cosictl prints it.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../client/index.js';
import { Cosid } from '../server/cosid.js';
import { serializeCosiConfig } from '../client/cosiconfig.js';
import { generateCa, issueClientCert, issueServerCert, type KeyPairPem } from '../shared/pki.js';
import { startServer, type TestServer } from './harness.js';
import { freePort } from './pipeline-harness.js';

const DIST_ENTRY = join(process.cwd(), 'dist', 'client', 'index.js');
const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runNode(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let srv: TestServer;
beforeAll(async () => {
  srv = await startServer();
});
afterAll(async () => {
  await srv.close();
});

describe('connecting to an IP endpoint', () => {
  it('prints no warning in the user\'s process (no DEP0123), with or without serverName', async () => {
    // A user's program: the built package, two calls, nothing else. Its stderr is what the user would see.
    const program = `
      import { connect } from ${JSON.stringify(DIST_ENTRY)};
      const creds = JSON.parse(process.env.COSI_TEST_CREDS);
      for (const extra of [{}, { serverName: '127.0.0.1' }]) {
        const client = connect({ endpoint: process.env.COSI_TEST_ENDPOINT, ...creds, ...extra });
        const namespaces = await client.list('namespaces');
        console.log(namespaces.map((n) => n.metadata.id).join(','));
        client.close();
      }
    `;
    const creds = { caPem: srv.pki.ca.certPem, certPem: srv.pki.admin.certPem, keyPem: srv.pki.admin.keyPem };
    const ran = await runNode(['--input-type=module', '-e', program], { COSI_TEST_ENDPOINT: srv.endpoint, COSI_TEST_CREDS: JSON.stringify(creds) });
    expect(ran.stderr).toBe('');
    expect(ran.stdout).toBe('config,k8s,meta\nconfig,k8s,meta\n');
    expect(ran.code).toBe(0);
  });

  it('still checks the server\'s certificate against the IP address: a certificate for another IP is refused', async () => {
    const elsewhere = await issueServerCert(srv.pki.ca, { sans: ['10.9.8.7'] });
    const cosid = await Cosid.start({ listen: '127.0.0.1:0', tls: { caPem: srv.pki.ca.certPem, certPem: elsewhere.certPem, keyPem: elsewhere.keyPem }, nodeName: 'elsewhere', shutdownGraceMs: 200 });
    try {
      const creds = { caPem: srv.pki.ca.certPem, certPem: srv.pki.admin.certPem, keyPem: srv.pki.admin.keyPem };
      const wrong = connect({ endpoint: `127.0.0.1:${cosid.port}`, ...creds });
      await expect(wrong.list('namespaces')).rejects.toMatchObject({ kind: 'unavailable', message: `the server certificate of 127.0.0.1:${cosid.port} is not valid for 127.0.0.1 (it names IP Address:10.9.8.7): dial a name it lists, or set serverName` });
      wrong.close();
      // Named as the certificate names it, the same server is trusted.
      const named = connect({ endpoint: `127.0.0.1:${cosid.port}`, serverName: '10.9.8.7', ...creds });
      expect((await named.list('namespaces')).length).toBe(3);
      named.close();
    } finally {
      await cosid.stop();
    }
  });
});

describe('a connection that fails says why in one line (cosictl get staticpods)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cosi-connect-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** cosictl get staticpods against `endpoint` with this CA and client certificate in its config. */
  async function cosictl(name: string, endpoint: string, caPem: string, client: KeyPairPem): Promise<Ran> {
    const path = join(dir, name);
    const context = { name, endpoints: [endpoint], nodes: [], caPem, certPem: client.certPem, keyPem: client.keyPem };
    await writeFile(path, serializeCosiConfig({ currentContext: name, contexts: new Map([[name, context]]) }), { mode: 0o600 });
    return runNode([CLI, '--cosiconfig', path, 'get', 'staticpods']);
  }

  /** One line on stderr, nothing on stdout, exit code 1. */
  function oneLine(ran: Ran): string {
    expect({ code: ran.code, stdout: ran.stdout }).toEqual({ code: 1, stdout: '' });
    expect(ran.stderr).toMatch(/^error: [^\n]+\n$/);
    return ran.stderr;
  }

  it('a port where nothing listens: connection refused, is cosid running there', async () => {
    const port = await freePort();
    const line = oneLine(await cosictl('closed', `127.0.0.1:${port}`, srv.pki.ca.certPem, srv.pki.admin));
    expect(line).toContain(`nothing is listening at 127.0.0.1:${port} (connection refused)`);
    expect(line).toContain('is cosid running');
    expect(line).not.toMatch(/Resolution note|Last error|No connection established/);
  });

  it('an expired client certificate: the server refused it, and it expired on its date', async () => {
    const day = 86_400_000;
    const notAfter = new Date(Date.now() - day);
    const expired = await issueClientCert(srv.pki.ca, { commonName: 'late', organizations: ['os:admin'], notBefore: new Date(Date.now() - 10 * day), notAfter });
    const line = oneLine(await cosictl('expired', srv.endpoint, srv.pki.ca.certPem, expired));
    expect(line).toContain(`the server at ${srv.endpoint} refused your client certificate`);
    expect(line).toContain(`your certificate expired on ${notAfter.toISOString().slice(0, 10)}`);
    expect(line).not.toMatch(/Failed to connect/);
  });

  it('a client certificate from another CA: the server refused it, and it is not from the CA in the config', async () => {
    const line = oneLine(await cosictl('foreign', srv.endpoint, srv.pki.ca.certPem, await srv.foreignCert()));
    expect(line).toContain(`the server at ${srv.endpoint} refused your client certificate`);
    expect(line).toContain('it is not signed by the CA in your config');
  });

  it('a server the config\'s CA does not trust: the server\'s certificate is not signed by that CA', async () => {
    const other = await generateCa({ commonName: 'another cluster' });
    const client = await issueClientCert(other, { commonName: 'admin', organizations: ['os:admin'] });
    const line = oneLine(await cosictl('untrusted', srv.endpoint, other.certPem, client));
    expect(line).toContain(`the server certificate of ${srv.endpoint} is not signed by the CA in your config`);
    expect(line).not.toContain('does it trust your certificate');
  });

  it('an HTTP port (the manifest server\'s) instead of the API port: it does not speak TLS/gRPC', async () => {
    // A plain HTTP listener, as the static pod manifest server for the kubelet is.
    const http = createServer((_req, res) => res.end('apiVersion: v1\n'));
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    try {
      const address = http.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      const line = oneLine(await cosictl('http', `127.0.0.1:${port}`, srv.pki.ca.certPem, srv.pki.admin));
      expect(line).toContain(`127.0.0.1:${port} does not speak TLS`);
      expect(line).toContain("is it cosid's API port");
      expect(line).not.toContain('wrong version number');
    } finally {
      http.close();
    }
  });
});
