#!/usr/bin/env node
// cosid: serves the COSI State API for this node's static pods over mutual TLS.
import { readFile, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { createLogger, parseLevel, type Logger } from '../shared/log.js';
import { CosiNode } from './node.js';
import { duration, readProblem, routeLibraryLogs, serverFlags, stopOnSignals, UsageError } from './cli-support.js';
import type { ResourceStore } from './store/store.js';
import { TlsMaterial } from './tls/material.js';

const USAGE = `Usage: cosid --pki DIR --config MACHINE.yaml [flags]

  --pki DIR                 folder with ca.crt (trusted client CA), server.crt and server.key
                            (create one with: cosictl gen pki --out DIR)
  --config FILE             Talos machine config (multi-document YAML), watched for changes (and reloaded on SIGHUP)
  --listen ADDR             host:port of the COSI API (default 127.0.0.1:50000)
  --node NAME               node name (default: the host name)
  --manifest-listen ADDR    loopback host:port of the static pod manifest server for the kubelet (default 127.0.0.1:0)
  --kubelet-url URL         the kubelet's pod list (default https://127.0.0.1:10250/pods/)
  --kubelet-ca FILE         CA that signed the kubelet's serving certificate
  --kubelet-cert FILE       client certificate for the kubelet (Talos: CN apiserver-kubelet-client, O system:masters)
  --kubelet-key FILE        its key; without --kubelet-cert/--kubelet-key status polling is off
  --kubelet-server-name N   name the kubelet's certificate must carry (default: the node name)
  --kubelet-interval DUR    poll interval, e.g. 15s or 500ms (default 15s)
  --cri-endpoint URL        the container runtime's CRI socket (default unix:///run/containerd/containerd.sock)
  --pod-logs-dir DIR        where the runtime writes the pods' logs (default /var/log/pods); no log outside it is served
  --kubelet-log FILE        the kubelet's own log, served as \`logs kubelet\` (default: not served)
  --store KIND              where resources live: memory (default; gone when cosid stops) or etcd
  --etcd-endpoints URLS     etcd client URLs, comma-separated (https://127.0.0.1:2379,...)
  --etcd-ca FILE            CA that signed etcd's serving certificates
  --etcd-cert FILE          client certificate for etcd (mutual TLS)
  --etcd-key FILE           its key
  --etcd-prefix PREFIX      key prefix of this node's resources (default /cosi/<node>/)
  --etcd-insecure           plaintext to etcd, allowed only on loopback (http://127.0.0.1:PORT); for tests
  --nodes-file FILE         node list for calls naming another node (metadata node, talosctl -n): YAML
                            nodes: [{name, address}], reloaded when it changes (a broken file keeps the last good list)
  --impersonator-cert FILE  client certificate with role os:impersonator that cosid dials other nodes' cosids with
                            when it proxies a call to them (default: DIR/impersonator.crt of --pki when it exists;
                            issue one with: cosictl gen cert --roles os:impersonator); without one cosid proxies nothing
  --impersonator-key FILE   its key (default: DIR/impersonator.key of --pki)
  --metrics-listen ADDR     host:port to serve Prometheus metrics on (GET /metrics, plain HTTP; default: off)
  --watch-compression MODE  gzip (default: the watch messages many watchers share go compressed once to clients that
                            accept gzip) or off (a client's CPU matters more than the bytes, e.g. on the same host)
  --audit                   one log line per call (peer subject, roles, method, kind or container id, outcome, duration)
  --log-level LEVEL         debug, info, warn or error (default info)
  --version                 print cosid's version and exit
  -h, --help                print this help and exit

Exit codes: 0 stopped cleanly (SIGTERM or SIGINT), 1 cannot start or failed, 2 usage error.`;

async function main(): Promise<number> {
  const args = serverFlags('cosid', USAGE, {
    pki: { type: 'string' },
    config: { type: 'string' },
    listen: { type: 'string', default: '127.0.0.1:50000' },
    node: { type: 'string', default: hostname() },
    'manifest-listen': { type: 'string', default: '127.0.0.1:0' },
    'kubelet-url': { type: 'string', default: 'https://127.0.0.1:10250/pods/' },
    'kubelet-ca': { type: 'string' },
    'kubelet-cert': { type: 'string' },
    'kubelet-key': { type: 'string' },
    'kubelet-server-name': { type: 'string' },
    'kubelet-interval': { type: 'string', default: '15s' },
    'cri-endpoint': { type: 'string', default: 'unix:///run/containerd/containerd.sock' },
    'pod-logs-dir': { type: 'string', default: '/var/log/pods' },
    'kubelet-log': { type: 'string' },
    store: { type: 'string', default: 'memory' },
    'metrics-listen': { type: 'string' },
    'nodes-file': { type: 'string' },
    'impersonator-cert': { type: 'string' },
    'impersonator-key': { type: 'string' },
    'watch-compression': { type: 'string', default: 'gzip' },
    'etcd-endpoints': { type: 'string' },
    'etcd-ca': { type: 'string' },
    'etcd-cert': { type: 'string' },
    'etcd-key': { type: 'string' },
    'etcd-prefix': { type: 'string' },
    'etcd-insecure': { type: 'boolean', default: false },
    'log-level': { type: 'string', default: 'info' },
    audit: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
  });
  if (typeof args === 'number') return args;
  const level = parseLevel(args['log-level']);
  if (args.pki === undefined || args.config === undefined || level === undefined) {
    process.stderr.write(`cosid: ${level === undefined ? 'unknown --log-level' : '--pki and --config are required'}\n${USAGE}\n`);
    return 2;
  }
  const compression = args['watch-compression'] ?? 'gzip';
  if (compression !== 'gzip' && compression !== 'off') {
    process.stderr.write(`cosid: unknown --watch-compression ${JSON.stringify(compression)}: use gzip or off\n`);
    return 2;
  }
  // Every other mistake in the flags, before any file is read.
  const plan = storePlan(args);
  const kc = args['kubelet-cert'];
  const kk = args['kubelet-key'];
  if ((kc === undefined) !== (kk === undefined)) throw new UsageError('--kubelet-cert and --kubelet-key go together');
  const kubeletIntervalMs = duration(args['kubelet-interval'] ?? '15s');
  const pki = args.pki;
  const log = createLogger({ level });
  routeLibraryLogs(log);
  const read = async (file: string, hint: string) => {
    try {
      return await readFile(file, 'utf8');
    } catch (err) {
      throw new Error(`cannot read ${file}: ${readProblem(err)}${hint}`);
    }
  };
  const pkiHint = ` (create the PKI with: cosictl gen pki --out ${pki})`;
  const tlsPaths = { caFile: join(pki, 'ca.crt'), certFile: join(pki, 'server.crt'), keyFile: join(pki, 'server.key') };
  for (const f of Object.values(tlsPaths)) await read(f, pkiHint);
  // Reloaded when the files change: rotate server.crt/server.key, or add a new CA to ca.crt, without a restart.
  const tls = await TlsMaterial.load(tlsPaths, log).catch((err: unknown) => {
    throw new Error(`${pki}: ${err instanceof Error ? err.message : String(err)}`);
  });
  tls.watch();
  const clusterCaPem = await read(tlsPaths.caFile, pkiHint);
  const impersonator = await impersonatorMaterial(pki, args['impersonator-cert'], args['impersonator-key'], tlsPaths.caFile, log);
  const nodeName = args.node ?? hostname();
  const configPath = args.config;
  // A machine config that cannot be read is refused before anything serves (an invalid one is the controller's:
  // it keeps the last good state and says why in MachineConfigStatus).
  await readFile(configPath, 'utf8').catch((err: unknown) => {
    const code = readProblem(err);
    const words: Record<string, string> = { ENOENT: 'no such file', EACCES: 'permission denied', EISDIR: 'a directory, not a file' };
    throw new Error(`cannot read the machine config ${configPath}: ${words[code] !== undefined ? `${words[code]} (${code})` : code}`);
  });
  const kubelet =
    kc !== undefined && kk !== undefined
      ? {
          url: args['kubelet-url'] ?? 'https://127.0.0.1:10250/pods/',
          caPem: args['kubelet-ca'] !== undefined ? await read(args['kubelet-ca'], '') : clusterCaPem,
          certPem: await read(kc, ''),
          keyPem: await read(kk, ''),
          serverName: args['kubelet-server-name'] ?? nodeName,
          intervalMs: kubeletIntervalMs,
        }
      : undefined;

  const store = await openStore(plan, nodeName, log, read);
  const node = await CosiNode.start({
    store,
    ...(args['metrics-listen'] !== undefined ? { metricsListen: args['metrics-listen'] } : {}),
    watchCompression: compression === 'gzip',
    ...(args['nodes-file'] !== undefined ? { nodesFile: args['nodes-file'] } : {}),
    ...(impersonator !== undefined ? { impersonator } : {}),
    listen: args.listen ?? '127.0.0.1:50000',
    tls,
    nodeName,
    log,
    configPath,
    manifestListen: args['manifest-listen'] ?? '127.0.0.1:0',
    kubelet,
    audit: args.audit === true,
    runtime: {
      criEndpoint: args['cri-endpoint'] ?? 'unix:///run/containerd/containerd.sock',
      podLogsDir: args['pod-logs-dir'] ?? '/var/log/pods',
      ...(args['kubelet-log'] !== undefined ? { kubeletLog: args['kubelet-log'] } : {}),
    },
  });

  process.on('SIGHUP', () => void node.config.reload('SIGHUP'));
  stopOnSignals(log, 'stopping: ending open streams', () => node.stop());
  // Started with an IPC channel (npm start): say when cosid serves.
  process.send?.({ event: 'serving', listen: args.listen, port: node.cosid.port, manifestUrl: node.manifests.url });
  return -1;
}

/**
 * The certificate cosid proxies calls to other nodes with: the files given, else impersonator.crt/.key in the PKI
 * folder when both are there, else none. Reloaded when they change; the CA that signs the nodes' serving
 * certificates is the cluster CA (ca.crt).
 */
async function impersonatorMaterial(pki: string, certFlag: string | undefined, keyFlag: string | undefined, caFile: string, log: Logger): Promise<TlsMaterial | undefined> {
  if ((certFlag === undefined) !== (keyFlag === undefined)) throw new UsageError('--impersonator-cert and --impersonator-key go together');
  let certFile = certFlag;
  let keyFile = keyFlag;
  if (certFile === undefined || keyFile === undefined) {
    const inPki = { cert: join(pki, 'impersonator.crt'), key: join(pki, 'impersonator.key') };
    const present = await Promise.all([inPki.cert, inPki.key].map((f) => stat(f).then(() => true, () => false)));
    if (!present.every(Boolean)) return undefined;
    certFile = inPki.cert;
    keyFile = inPki.key;
  }
  const material = await TlsMaterial.load({ caFile, certFile, keyFile }, log).catch((err: unknown) => {
    throw new Error(`the impersonator certificate ${certFile}: ${err instanceof Error ? err.message : String(err)}`);
  });
  material.watch();
  return material;
}

/** The store the flags name: memory, or etcd with its endpoints and credentials (checked before anything is read). */
type StorePlan =
  | { kind: 'memory' }
  | { kind: 'etcd'; endpoints: string[]; files: { ca: string; cert: string; key: string } | undefined; prefix: string | undefined };

function storePlan(args: { store?: string; 'etcd-endpoints'?: string; 'etcd-ca'?: string; 'etcd-cert'?: string; 'etcd-key'?: string; 'etcd-prefix'?: string; 'etcd-insecure'?: boolean }): StorePlan {
  const kind = args.store ?? 'memory';
  const etcdFlags = (['etcd-endpoints', 'etcd-ca', 'etcd-cert', 'etcd-key', 'etcd-prefix'] as const).filter((f) => args[f] !== undefined);
  if (kind === 'memory') {
    if (etcdFlags.length > 0 || args['etcd-insecure'] === true) throw new UsageError(`--${etcdFlags[0] ?? 'etcd-insecure'} needs --store etcd`);
    return { kind: 'memory' };
  }
  if (kind !== 'etcd') throw new UsageError(`unknown --store ${JSON.stringify(kind)}: use memory or etcd`);
  const endpoints = (args['etcd-endpoints'] ?? '').split(',').map((e) => e.trim()).filter((e) => e !== '');
  if (endpoints.length === 0) throw new UsageError('--store etcd needs --etcd-endpoints https://HOST:PORT[,...]');
  const { 'etcd-ca': ca, 'etcd-cert': cert, 'etcd-key': key } = args;
  const given = [ca, cert, key].filter((f) => f !== undefined).length;
  if (args['etcd-insecure'] === true) {
    if (given > 0) throw new UsageError('--etcd-insecure and --etcd-ca/--etcd-cert/--etcd-key exclude each other');
    return { kind: 'etcd', endpoints, files: undefined, prefix: args['etcd-prefix'] };
  }
  if (ca === undefined || cert === undefined || key === undefined) {
    throw new UsageError('--store etcd needs --etcd-ca, --etcd-cert and --etcd-key (mutual TLS), or --etcd-insecure on loopback');
  }
  return { kind: 'etcd', endpoints, files: { ca, cert, key }, prefix: args['etcd-prefix'] };
}

/** Opens the planned store: undefined for memory (cosid makes its own), or etcd (mTLS unless --etcd-insecure on loopback). */
async function openStore(plan: StorePlan, nodeName: string, log: Logger, read: (file: string, hint: string) => Promise<string>): Promise<ResourceStore | undefined> {
  if (plan.kind === 'memory') return undefined;
  const f = plan.files;
  const tls = f !== undefined ? { caPem: await read(f.ca, ''), certPem: await read(f.cert, ''), keyPem: await read(f.key, '') } : undefined;
  // Loaded only for this store: etcd3 and its gRPC stack take about a second to load on a busy machine, which a
  // cosid on the memory store should not pay at every start.
  const { EtcdStore } = await import('./store/etcd.js');
  return EtcdStore.connect({ endpoints: plan.endpoints, ...(tls !== undefined ? { tls } : {}), prefix: plan.prefix ?? `/cosi/${nodeName}/`, log });
}

main().then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`cosid: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
