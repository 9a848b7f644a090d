// Test harness: a real cosid on a loopback port with real mTLS, and clients with real certificates.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type CosiClient } from '../client/index.js';
import { Cosid } from '../server/cosid.js';
import { generatePki } from '../client/gen-pki.js';
import { generateCa, issueClientCert, type KeyPairPem } from '../shared/pki.js';
import { K8S_NAMESPACE, STATIC_POD_STATUS_TYPE, STATIC_POD_TYPE } from '../server/resources/k8s.js';
import type { Logger } from '../shared/log.js';
import type { Json } from '../shared/wire.js';
import type { WatchLimits } from '../server/watch/limits.js';
import type { RuntimeOptions } from '../server/api/machine-service.js';
import type { ResourceStore } from '../server/store/store.js';

export interface TestPki {
  dir: string;
  ca: KeyPairPem;
  server: KeyPairPem;
  admin: KeyPairPem;
  reader: KeyPairPem;
  /** os:impersonator: what a test cosid passes calls naming another node on with. */
  impersonator: KeyPairPem;
  cosiconfig: string;
}

export async function makePki(): Promise<TestPki> {
  // Under the run's folder (test/tmp-setup.ts), removed at the end of the run even if a test file forgets to.
  const dir = await mkdtemp(join(process.env['COSI_TEST_TMP'] ?? tmpdir(), 'cosi-pki-'));
  await generatePki(dir, { endpoint: '127.0.0.1:0' });
  const pair = async (name: string): Promise<KeyPairPem> => ({
    certPem: await readFile(join(dir, `${name}.crt`), 'utf8'),
    keyPem: await readFile(join(dir, `${name}.key`), 'utf8'),
  });
  return {
    dir,
    ca: await pair('ca'),
    server: await pair('server'),
    admin: await pair('admin'),
    reader: await pair('reader'),
    impersonator: await pair('impersonator'),
    cosiconfig: join(dir, 'cosiconfig'),
  };
}

export interface TestServer {
  cosid: Cosid;
  pki: TestPki;
  endpoint: string;
  client(cert?: KeyPairPem): CosiClient;
  /** A client certificate signed by the cluster CA with the given roles. */
  certWithRoles(roles: string[]): Promise<KeyPairPem>;
  /** A client certificate from a CA the server does not trust. */
  foreignCert(): Promise<KeyPairPem>;
  close(): Promise<void>;
}

export const STATIC_PODS = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };
export const STATUSES = { namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE };
export const TEST_OWNER = 'test.Producer';

export async function startServer(
  opts: {
    pki?: TestPki;
    historySize?: number;
    historyAgeMs?: number;
    nodeName?: string;
    listen?: string;
    bookmarkIntervalMs?: number;
    maxWatchesPerConnection?: number;
    maxBacklog?: number;
    audit?: boolean;
    log?: Logger;
    maxConnectionsPerAddress?: number;
    watchLimits?: Partial<WatchLimits>;
    /** The container runtime behind machine.MachineService; default: none (a socket in the PKI dir that does not exist). */
    runtime?: Partial<RuntimeOptions>;
    /** Opens the store for this server (default: memory with historySize/historyAgeMs); cosid closes it. */
    store?: () => Promise<ResourceStore>;
    /** Compress shared watch messages for clients that accept gzip (default true). */
    watchCompression?: boolean;
    /** The node list file (YAML nodes: [{name, address}]) for calls naming another node. */
    nodesFile?: string;
    /** A client certificate with role os:impersonator: this cosid proxies calls naming another node with it (default: the PKI's). */
    impersonator?: KeyPairPem;
  } = {},
): Promise<TestServer> {
  const pki = opts.pki ?? (await makePki());
  // Never the host's containerd: a test names the runtime it uses.
  const runtime = { criEndpoint: `unix://${join(pki.dir, 'no-runtime.sock')}`, podLogsDir: join(pki.dir, 'no-pod-logs'), ...opts.runtime };
  const cosid = await Cosid.start({
    listen: opts.listen ?? '127.0.0.1:0',
    tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
    nodeName: opts.nodeName ?? 'test-node',
    historySize: opts.historySize,
    historyAgeMs: opts.historyAgeMs,
    ...(opts.store !== undefined ? { store: await opts.store() } : {}),
    ...(opts.watchCompression !== undefined ? { watchCompression: opts.watchCompression } : {}),
    ...(opts.nodesFile !== undefined ? { nodesFile: opts.nodesFile } : {}),
    impersonator: { caPem: pki.ca.certPem, certPem: (opts.impersonator ?? pki.impersonator).certPem, keyPem: (opts.impersonator ?? pki.impersonator).keyPem },
    watchLimits: {
      ...(opts.bookmarkIntervalMs !== undefined ? { bookmarkIntervalMs: opts.bookmarkIntervalMs } : {}),
      ...(opts.maxBacklog !== undefined ? { maxBacklog: opts.maxBacklog } : {}),
      ...opts.watchLimits,
    },
    ...(opts.maxWatchesPerConnection !== undefined ? { maxWatchesPerConnection: opts.maxWatchesPerConnection } : {}),
    ...(opts.audit !== undefined ? { audit: opts.audit } : {}),
    ...(opts.maxConnectionsPerAddress !== undefined ? { maxConnectionsPerAddress: opts.maxConnectionsPerAddress } : {}),
    ...(opts.log !== undefined ? { log: opts.log } : {}),
    runtime,
    shutdownGraceMs: 1000,
  });
  const endpoint = `127.0.0.1:${cosid.port}`;
  const clients: CosiClient[] = [];
  return {
    cosid,
    pki,
    endpoint,
    client(cert = pki.admin) {
      const c = connect({ endpoint, caPem: pki.ca.certPem, certPem: cert.certPem, keyPem: cert.keyPem });
      clients.push(c);
      return c;
    },
    certWithRoles: (roles) => issueClientCert(pki.ca, { commonName: 'tester', organizations: roles }),
    async foreignCert() {
      const other = await generateCa({ commonName: 'someone else' });
      return issueClientCert(other, { commonName: 'intruder', organizations: ['os:admin'] });
    },
    async close() {
      for (const c of clients) c.close();
      await cosid.stop();
      if (opts.pki === undefined) await rm(pki.dir, { recursive: true, force: true });
    },
  };
}

/** A pod status spec as the kubelet reports it. */
export function podStatus(ready: boolean, extra: Record<string, Json> = {}): Json {
  return {
    phase: ready ? 'Running' : 'Pending',
    conditions: [
      { type: 'Initialized', status: 'True' },
      { type: 'Ready', status: ready ? 'True' : 'False' },
    ],
    ...extra,
  };
}

export function pod(name: string, image = 'nginx', namespace?: string): { [key: string]: Json } {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, ...(namespace !== undefined ? { namespace } : {}) },
    spec: { containers: [{ name, image }] },
  };
}

/** Waits until `check` passes, polling; fails with the last error after `ms`. */
export async function eventually<T>(check: () => T | Promise<T>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** What a compiled binary printed, and how it ended. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');

/**
 * Runs the compiled cosictl to its end and collects its output. `env` is laid over this process's; `until` sends
 * SIGINT (a user's Ctrl-C) once stdout satisfies it. Killed after 30 s: a bound, not a synchronisation.
 */
export function runCli(args: readonly string[], opts: { env?: NodeJS.ProcessEnv; until?: (stdout: string) => boolean } = {}): Promise<CliRun> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let interrupted = false;
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    // Once, as a user's Ctrl-C: a second one after the CLI has let go of SIGINT would kill it.
    if (!interrupted && opts.until?.(stdout) === true) {
      interrupted = true;
      child.kill('SIGINT');
    }
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const kill = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(kill);
      resolve({ code, stdout, stderr });
    }),
  );
}
