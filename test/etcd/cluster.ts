// A real etcd on loopback with mutual TLS, for tests (and benchmarks): one member or three, each its own process,
// its data on tmpfs when there is one (etcd fsyncs every write). Members can be stopped, killed and started again.
//
// Every member has ONE certificate, used on its client port and on its peer port. It carries both serverAuth and
// clientAuth: etcd dials its peers with its peer certificate, which `--peer-client-cert-auth` then checks as a
// client certificate, and etcd 3.4's grpc-gateway dials the member's own client port with `--cert-file`. A
// serverAuth-only certificate (shared/pki.ts's issueServerCert) makes both fail with "x509: certificate specifies
// an incompatible key usage", so that a three-member cluster never elects a leader. The CA and the client
// certificate come from shared/pki.ts.
import 'reflect-metadata';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import { accessSync, constants as fsConstants, existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import * as x509 from '@peculiar/x509';
import { Etcd3 } from 'etcd3';
import { generateCa, issueClientCert, type KeyPairPem } from '../../shared/pki.js';

export const ETCD_APT_INSTALL = 'apt-get install -y etcd-server';

/** Client credentials: files for etcd's own tools, PEM text for the etcd3 client. */
export interface EtcdTls {
  caFile: string;
  certFile: string;
  keyFile: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface EtcdMember {
  name: string;
  /** https://127.0.0.1:PORT */
  clientUrl: string;
  /** The current process, undefined before the first start. */
  pid: number | undefined;
  running: boolean;
}

export interface EtcdCluster {
  /** https://127.0.0.1:PORT for each member, in member order. */
  readonly endpoints: string[];
  /** A client certificate (CN root, no organization) signed by the cluster's CA. */
  readonly client: EtcdTls;
  readonly members: readonly EtcdMember[];
  /** SIGTERM member i; resolves when its process has exited (SIGKILL after 15 s). No-op when it is not running. */
  stop(i: number): Promise<void>;
  /** SIGKILL member i; resolves when its process has exited. No-op when it is not running. */
  kill(i: number): Promise<void>;
  /** Starts stopped member i again on its data dir and ports; resolves when it serves a linearizable read. */
  start(i: number): Promise<void>;
  /** Kills every member and removes the directory. Idempotent. */
  close(): Promise<void>;
}

export interface EtcdClusterOptions {
  size: 1 | 3;
  /** Created if missing and removed by close(); default a new directory on /dev/shm, else under os.tmpdir(). */
  dir?: string;
  /** Each line etcd writes (only errors: it runs with --log-level error), prefixed with the member's name. */
  log?: (line: string) => void;
}

const START_DEADLINE_MS = 20_000;
const PROBE_DEADLINE_MS = 2_000;
const POLL_MS = 100;
const STOP_GRACE_MS = 15_000;
const KEPT_LOG_LINES = 50;
const START_ATTEMPTS = 3;
const MEMBER_NAMES = ['a', 'b', 'c'] as const;
const SANS = ['127.0.0.1', 'localhost'];
/** grpc-js sends the host as TLS server name, and Node warns (DEP0123) when that is an IP; the certificates name localhost. */
const GRPC_OPTIONS = { 'grpc.ssl_target_name_override': 'localhost' };

// etcd's binary may sit in an sbin directory that a non-login PATH lacks.
const SEARCH_PATH = [...(process.env['PATH'] ?? '').split(':'), '/usr/local/bin', '/usr/bin', '/usr/local/sbin', '/usr/sbin', '/bin']
  .filter((p, i, all) => p !== '' && all.indexOf(p) === i);

function which(bin: string): string | undefined {
  for (const dir of SEARCH_PATH) {
    const file = join(dir, bin);
    try {
      accessSync(file, fsConstants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** etcd takes every ETCD_* variable as a flag: the caller's environment must not configure our members. */
function etcdEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ETCD_') && !k.startsWith('ETCDCTL_')));
}

export function etcdPrerequisites(): { ok: true; version: string } | { ok: false; reason: string } {
  const bin = which('etcd');
  if (bin === undefined) return { ok: false, reason: `etcd is not installed (not found in ${SEARCH_PATH.join(':')}); install with: ${ETCD_APT_INSTALL}` };
  let out: string;
  try {
    out = execFileSync(bin, ['--version'], { env: etcdEnv(), encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    return { ok: false, reason: `${bin} --version failed: ${message(err)}; reinstall with: ${ETCD_APT_INSTALL}` };
  }
  const version = /etcd Version:\s*(\d+)\.(\d+)\.(\S+)/.exec(out);
  if (version === null) return { ok: false, reason: `${bin} --version printed no etcd version: ${JSON.stringify(out.slice(0, 200))}` };
  const [, major, minor] = version.map(Number) as [number, number, number];
  if (major < 3 || (major === 3 && minor < 4)) return { ok: false, reason: `${bin} is etcd ${version[1]}.${version[2]}.${version[3]}; 3.4 or later is needed` };
  return { ok: true, version: `${version[1]}.${version[2]}.${version[3]}` };
}

let setprivWorks: boolean | undefined;
/**
 * Whether util-linux's setpriv can give the member a parent-death signal: then the kernel kills etcd when the
 * process that spawned it dies, even by SIGKILL, when no 'exit' handler runs. (The signal comes when the spawning
 * THREAD ends: spawn from a main thread, as vitest's forks pool and globalSetup do.)
 */
function canUsePdeathsig(): boolean {
  if (setprivWorks === undefined) {
    try {
      execFileSync('setpriv', ['--pdeathsig', 'KILL', '--', 'true'], { stdio: 'ignore', timeout: 5_000 });
      setprivWorks = true;
    } catch {
      setprivWorks = false;
    }
  }
  return setprivWorks;
}

// Safety net: whatever a test forgets, no etcd outlives the process that started it.
const liveProcesses = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of liveProcesses) c.kill('SIGKILL');
    });
  }
  liveProcesses.add(child);
}

/**
 * Distinct free loopback ports: all are held open until every one is chosen, then released for etcd. They are
 * chosen below the kernel's ephemeral range (32768 and up here), where no other test's bind(0) or outgoing
 * connection can take one before etcd binds it (a member is also started again on its ports).
 */
async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let attempt = 0; ports.length < n; attempt++) {
      if (attempt >= 50 * n) throw new Error('no free ports found between 20000 and 32000');
      const port = 20_000 + Math.floor(Math.random() * 12_000);
      const server = createServer();
      const bound = await new Promise<boolean>((resolve) => {
        server.once('error', () => resolve(false));
        server.listen(port, '127.0.0.1', () => resolve(true));
      });
      if (!bound) continue;
      servers.push(server);
      ports.push(port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** A member certificate for 127.0.0.1 and localhost with serverAuth AND clientAuth (see the top of this file). */
async function issueMemberCert(ca: KeyPairPem, name: string): Promise<KeyPairPem> {
  x509.cryptoProvider.set(webcrypto);
  const caCert = new x509.X509Certificate(ca.certPem);
  const caKey = await webcrypto.subtle.importKey('pkcs8', createPrivateKey(ca.keyPem).export({ type: 'pkcs8', format: 'der' }), EC, false, ['sign']);
  const caKeyId = caCert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(16).toString('hex'),
    subject: new x509.Name([{ CN: [{ printableString: `etcd member ${name}` }] }]),
    issuer: caCert.subjectName,
    // Backdated a little for clock skew; the cluster lives for one test run.
    notBefore: new Date(now - 5 * 60_000),
    notAfter: new Date(now + 30 * 86_400_000),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: EC,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(SANS.map((s) => (/^[\d.]+$/.test(s) ? { type: 'ip' as const, value: s } : { type: 'dns' as const, value: s }))),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      caKeyId !== undefined ? new x509.AuthorityKeyIdentifierExtension(caKeyId) : await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
    ],
  });
  const keyDer = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { certPem: `${cert.toString('pem').trimEnd()}\n`, keyPem: `${x509.PemConverter.encode(keyDer, 'PRIVATE KEY').trimEnd()}\n` };
}

async function writePair(dir: string, base: string, pair: KeyPairPem): Promise<{ certFile: string; keyFile: string }> {
  const certFile = join(dir, `${base}.crt`);
  const keyFile = join(dir, `${base}.key`);
  await writeFile(certFile, pair.certPem);
  await writeFile(keyFile, pair.keyPem, { mode: 0o600 });
  return { certFile, keyFile };
}

interface Member {
  view: EtcdMember;
  peerUrl: string;
  dataDir: string;
  certFile: string;
  keyFile: string;
  proc: ChildProcess | undefined;
  /** Settles when the current process has exited and its output has ended. */
  ended: Promise<void>;
  lines: string[];
}

interface Layout {
  dir: string;
  token: string;
  caFile: string;
  tls: EtcdTls;
  members: Member[];
  log: ((line: string) => void) | undefined;
}

function memberArgs(layout: Layout, m: Member, state: 'new' | 'existing'): string[] {
  const initialCluster = layout.members.map((p) => `${p.view.name}=${p.peerUrl}`).join(',');
  return [
    '--name', m.view.name,
    '--data-dir', m.dataDir,
    '--listen-client-urls', m.view.clientUrl,
    '--advertise-client-urls', m.view.clientUrl,
    '--listen-peer-urls', m.peerUrl,
    '--initial-advertise-peer-urls', m.peerUrl,
    // Read only when the data dir is empty: a restarted member rejoins from its own data.
    '--initial-cluster', initialCluster,
    '--initial-cluster-state', state,
    '--initial-cluster-token', layout.token,
    '--cert-file', m.certFile,
    '--key-file', m.keyFile,
    '--trusted-ca-file', layout.caFile,
    '--client-cert-auth',
    '--peer-cert-file', m.certFile,
    '--peer-key-file', m.keyFile,
    '--peer-trusted-ca-file', layout.caFile,
    '--peer-client-cert-auth',
    '--logger', 'zap',
    '--log-level', 'error',
    '--log-outputs', 'stderr',
  ];
}

function spawnMember(layout: Layout, m: Member, state: 'new' | 'existing'): void {
  const etcd = which('etcd');
  if (etcd === undefined) throw new Error(`etcd is not installed; install with: ${ETCD_APT_INSTALL}`);
  const args = memberArgs(layout, m, state);
  const [cmd, argv]: [string, string[]] = canUsePdeathsig() ? ['setpriv', ['--pdeathsig', 'KILL', '--', etcd, ...args]] : [etcd, args];
  m.lines = [];
  const proc = spawn(cmd, argv, { env: etcdEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: false });
  m.proc = proc;
  m.view.pid = proc.pid;
  m.view.running = true;
  track(proc);
  const onLine = (line: string): void => {
    m.lines.push(line);
    if (m.lines.length > KEPT_LOG_LINES) m.lines.shift();
    layout.log?.(`${m.view.name}: ${line}`);
  };
  for (const stream of [proc.stdout, proc.stderr]) if (stream !== null) createInterface({ input: stream, crlfDelay: Infinity }).on('line', onLine);
  m.ended = new Promise<void>((resolve) => {
    let done = false;
    const finish = (note: string): void => {
      if (done) return;
      done = true;
      liveProcesses.delete(proc);
      if (m.proc === proc) m.view.running = false;
      onLine(note);
      resolve();
    };
    proc.once('error', (err) => finish(`[spawn ${cmd} failed: ${err.message}]`));
    proc.once('close', (code, signal) => finish(`[process ${proc.pid ?? '?'} exited: ${signal !== null ? `signal ${signal}` : `code ${code ?? '?'}`}]`));
  });
}

function failure(m: Member, what: string): Error {
  const log = m.lines.length > 0 ? m.lines.map((l) => `  ${l}`).join('\n') : '  (nothing)';
  return new Error(`etcd member ${m.view.name} (${m.view.clientUrl}) ${what}; its last output:\n${log}`);
}

function tlsCredentials(tls: EtcdTls): { rootCertificate: Buffer; privateKey: Buffer; certChain: Buffer } {
  return { rootCertificate: Buffer.from(tls.caPem), privateKey: Buffer.from(tls.keyPem), certChain: Buffer.from(tls.certPem) };
}

/** One linearizable read through this member alone: it answers only as part of a cluster with a leader. */
async function probe(m: Member, tls: EtcdTls): Promise<void> {
  // A new client each time: the etcd3 client's circuit breaker would fail calls for 5 s after three refusals.
  const client = new Etcd3({ hosts: [m.view.clientUrl], credentials: tlsCredentials(tls), grpcOptions: GRPC_OPTIONS });
  try {
    await client.get('cosi-etcd-harness/probe').options({ deadline: new Date(Date.now() + PROBE_DEADLINE_MS) }).string();
  } finally {
    client.close();
  }
}

async function waitHealthy(m: Member, tls: EtcdTls): Promise<void> {
  const started = Date.now();
  const ended = m.ended.then(() => 'ended' as const);
  let lastError: unknown;
  for (let attempt = 1; ; attempt++) {
    const p = probe(m, tls).then(() => 'ok' as const);
    p.catch(() => undefined);
    try {
      if ((await Promise.race([p, ended])) === 'ok') return;
      throw failure(m, 'exited while starting');
    } catch (err) {
      if (!m.view.running) throw failure(m, 'exited while starting');
      lastError = err;
    }
    if (Date.now() - started >= START_DEADLINE_MS) {
      throw failure(m, `did not answer a read within ${START_DEADLINE_MS / 1000} s (${attempt} attempts; last error: ${message(lastError)})`);
    }
    if ((await Promise.race([new Promise<'tick'>((r) => setTimeout(() => r('tick'), POLL_MS).unref()), ended])) === 'ended') {
      throw failure(m, 'exited while starting');
    }
  }
}

async function signalAndWait(m: Member, signal: NodeJS.Signals): Promise<void> {
  const proc = m.proc;
  if (proc === undefined || !m.view.running) return;
  proc.kill(signal);
  const escalate = signal === 'SIGKILL' ? undefined : setTimeout(() => proc.kill('SIGKILL'), STOP_GRACE_MS);
  try {
    await m.ended;
  } finally {
    clearTimeout(escalate);
  }
}

const DIR_PREFIX = 'cosi-etcd-';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Directories of processes that died without close() (SIGKILL, a crash): their members died with them (parent-death
 * signal), but tmpfs keeps the data until someone removes it. Each directory's name holds the pid that made it.
 */
async function sweepOrphans(base: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(base);
  } catch {
    return;
  }
  for (const name of names) {
    const owner = new RegExp(`^${DIR_PREFIX}(\\d+)-`).exec(name)?.[1];
    if (owner !== undefined && Number(owner) !== process.pid && !alive(Number(owner))) await rm(join(base, name), { recursive: true, force: true });
  }
}

async function defaultDir(): Promise<string> {
  for (const base of existsSync('/dev/shm') ? ['/dev/shm', tmpdir()] : [tmpdir()]) {
    try {
      await sweepOrphans(base);
      return await mkdtemp(join(base, `${DIR_PREFIX}${process.pid}-`));
    } catch {
      // not writable: try the next place
    }
  }
  return mkdtemp(join(tmpdir(), `${DIR_PREFIX}${process.pid}-`));
}

export async function startEtcdCluster(opts: EtcdClusterOptions): Promise<EtcdCluster> {
  if (opts.size !== 1 && opts.size !== 3) throw new Error(`an etcd test cluster has 1 or 3 members (got ${String(opts.size)})`);
  const pre = etcdPrerequisites();
  if (!pre.ok) throw new Error(pre.reason);
  let dir: string;
  if (opts.dir !== undefined) {
    dir = opts.dir;
    await mkdir(dir, { recursive: true });
  } else {
    dir = await defaultDir();
  }
  try {
    await chmod(dir, 0o700);
    const pkiDir = join(dir, 'pki');
    await mkdir(pkiDir, { mode: 0o700 });
    const ca = await generateCa({ commonName: 'cosi-pods etcd test CA', validDays: 30 });
    const caFile = join(pkiDir, 'ca.crt');
    await writeFile(caFile, ca.certPem);
    const clientPair = await issueClientCert(ca, { commonName: 'root', organizations: [], validDays: 30 });
    const clientFiles = await writePair(pkiDir, 'client', clientPair);
    const tls: EtcdTls = { caFile, ...clientFiles, caPem: ca.certPem, certPem: clientPair.certPem, keyPem: clientPair.keyPem };
    const names = MEMBER_NAMES.slice(0, opts.size);
    const certs = await Promise.all(names.map(async (name) => writePair(pkiDir, `member-${name}`, await issueMemberCert(ca, name))));

    // Free ports are only free until someone takes them: a member that lost its port to another process is retried.
    for (let attempt = 1; ; attempt++) {
      const ports = await freePorts(2 * opts.size);
      const layout: Layout = {
        dir,
        token: `cosi-test-${randomBytes(6).toString('hex')}`,
        caFile,
        tls,
        log: opts.log,
        members: names.map((name, i) => ({
          view: { name, clientUrl: `https://127.0.0.1:${ports[2 * i]}`, pid: undefined, running: false },
          peerUrl: `https://127.0.0.1:${ports[2 * i + 1]}`,
          dataDir: join(dir, `${name}-${attempt}.etcd`),
          certFile: certs[i]!.certFile,
          keyFile: certs[i]!.keyFile,
          proc: undefined,
          ended: Promise.resolve(),
          lines: [],
        })),
      };
      try {
        for (const m of layout.members) spawnMember(layout, m, 'new');
        await Promise.all(layout.members.map((m) => waitHealthy(m, tls)));
        return makeCluster(layout);
      } catch (err) {
        await Promise.all(layout.members.map((m) => signalAndWait(m, 'SIGKILL')));
        const portTaken = layout.members.some((m) => m.lines.some((l) => l.includes('address already in use')));
        if (!portTaken || attempt >= START_ATTEMPTS) throw err;
        opts.log?.(`a port was taken before etcd could bind it; starting again on new ports (attempt ${attempt + 1} of ${START_ATTEMPTS})`);
      }
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function makeCluster(layout: Layout): EtcdCluster {
  let closing: Promise<void> | undefined;
  const member = (i: number): Member => {
    const m = layout.members[i];
    if (!Number.isInteger(i) || m === undefined) throw new RangeError(`no etcd member ${i} (the cluster has ${layout.members.length})`);
    return m;
  };
  return {
    endpoints: layout.members.map((m) => m.view.clientUrl),
    client: layout.tls,
    members: layout.members.map((m) => m.view),
    stop: (i) => signalAndWait(member(i), 'SIGTERM'),
    kill: (i) => signalAndWait(member(i), 'SIGKILL'),
    async start(i) {
      const m = member(i);
      if (closing !== undefined) throw new Error('the etcd cluster is closed');
      if (m.view.running) throw new Error(`etcd member ${m.view.name} is already running (pid ${m.view.pid ?? '?'})`);
      spawnMember(layout, m, 'existing');
      try {
        await waitHealthy(m, layout.tls);
      } catch (err) {
        await signalAndWait(m, 'SIGKILL');
        throw err;
      }
    },
    close() {
      closing ??= (async () => {
        // The data goes away with the directory: no need for a graceful stop.
        await Promise.all(layout.members.map((m) => signalAndWait(m, 'SIGKILL')));
        await rm(layout.dir, { recursive: true, force: true });
      })();
      return closing;
    },
  };
}
