// Connecting: the library is quiet in the user's process (no DEP0123 for an IP endpoint) while it still checks the
// server's certificate against that IP; and each way a connection can fail is one line that says what is wrong and
// what to do, as the compiled cosictl prints it.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../client/index.js';
import { Cosid } from '../server/cosid.js';
import { issueServerCert } from '../shared/pki.js';
import { startServer, type TestServer } from './harness.js';

const DIST_ENTRY = join(process.cwd(), 'dist', 'client', 'index.js');

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
      await expect(wrong.list('namespaces')).rejects.toMatchObject({ kind: 'unavailable', message: expect.stringContaining('127.0.0.1') });
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
