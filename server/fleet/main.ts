#!/usr/bin/env node
// cosi-fleet: every node's static pods behind one replicated COSI API on etcd (docs/cosi-fleet.md).
import { readFile, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { createLogger, parseLevel } from '../../shared/log.js';
import { duration, readProblem, routeLibraryLogs, serverFlags, stopOnSignals, UsageError, version } from '../cli-support.js';
import { TlsMaterial } from '../tls/material.js';
import { Fleet } from './fleet.js';

const USAGE = `Usage: cosi-fleet --pki DIR --nodes-file FILE --etcd-endpoints URLS [flags]

  --pki DIR                 folder with ca.crt (the CA of clients and of the nodes' serving certificates), server.crt
                            and server.key (serving), fleet.crt and fleet.key (the client certificate the fleet
                            dials nodes with: roles os:reader and os:impersonator; cosictl gen cert --roles
                            os:reader,os:impersonator)
  --follow-cert FILE        the client certificate for the nodes instead of DIR/fleet.crt
  --follow-key FILE         its key instead of DIR/fleet.key
  --listen ADDR             host:port of the fleet's COSI API (default 127.0.0.1:50001)
  --nodes-file FILE         the fleet's nodes: YAML nodes: [{name, address}] (cosid's --nodes-file format); published
                            to etcd when it changes, so every replica follows the same list
  --replica NAME            this replica's name, unique among the live replicas (default: the host name)
  --etcd-endpoints URLS     etcd client URLs, comma-separated (https://127.0.0.1:2379,...)
  --etcd-ca FILE            CA that signed etcd's serving certificates
  --etcd-cert FILE          client certificate for etcd (mutual TLS)
  --etcd-key FILE           its key
  --etcd-insecure           plaintext to etcd, allowed only on loopback (http://127.0.0.1:PORT); for tests
  --etcd-prefix PREFIX      key prefix of the fleet (default /cosi-fleet/); one fleet per prefix
  --lease-ttl DUR           a replica that stops renewing its lease this long loses its nodes (default 5s)
  --max-bootstraps N        nodes connecting, resuming or listing again at once, per replica (default 32)
  --node-rate N             changes per second a node may send before it is throttled, burst 10x (default 20)
  --unreachable-after DUR   a node whose watches reconnect this long is Unreachable (default 3s)
  --status-interval DUR     how often a FleetNode's lag is refreshed while it changes (default 15s)
  --metrics-listen ADDR     host:port to serve Prometheus metrics on (GET /metrics, plain HTTP; default: off)
  --audit                   one log line per call
  --log-level LEVEL         debug, info, warn or error (default info)
  --version                 print the version and exit
  -h, --help                print this help and exit

Exit codes: 0 stopped cleanly (SIGTERM or SIGINT), 1 cannot start or failed, 2 usage error.`;

function positive(flag: string, s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${flag} must be a whole number of 1 or more, not ${JSON.stringify(s)}`);
  return n;
}

async function main(): Promise<number> {
  const args = serverFlags('cosi-fleet', USAGE, {
    pki: { type: 'string' },
    'follow-cert': { type: 'string' },
    'follow-key': { type: 'string' },
    listen: { type: 'string', default: '127.0.0.1:50001' },
    'nodes-file': { type: 'string' },
    replica: { type: 'string', default: hostname() },
    'etcd-endpoints': { type: 'string' },
    'etcd-ca': { type: 'string' },
    'etcd-cert': { type: 'string' },
    'etcd-key': { type: 'string' },
    'etcd-insecure': { type: 'boolean', default: false },
    'etcd-prefix': { type: 'string', default: '/cosi-fleet/' },
    'lease-ttl': { type: 'string', default: '5s' },
    'max-bootstraps': { type: 'string', default: '32' },
    'node-rate': { type: 'string', default: '20' },
    'unreachable-after': { type: 'string', default: '3s' },
    'status-interval': { type: 'string', default: '15s' },
    'metrics-listen': { type: 'string' },
    audit: { type: 'boolean', default: false },
    'log-level': { type: 'string', default: 'info' },
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
  });
  if (typeof args === 'number') return args;
  const level = parseLevel(args['log-level']);
  if (level === undefined) throw new UsageError('unknown --log-level: use debug, info, warn or error');
  const pki = args.pki;
  const nodesFile = args['nodes-file'];
  if (pki === undefined || nodesFile === undefined) throw new UsageError('--pki and --nodes-file are required');
  const endpoints = (args['etcd-endpoints'] ?? '').split(',').map((e) => e.trim()).filter((e) => e !== '');
  if (endpoints.length === 0) throw new UsageError('--etcd-endpoints is required: the fleet keeps its state in etcd');
  const etcdFiles = [args['etcd-ca'], args['etcd-cert'], args['etcd-key']];
  const given = etcdFiles.filter((f) => f !== undefined).length;
  if (args['etcd-insecure'] === true && given > 0) throw new UsageError('--etcd-insecure and --etcd-ca/--etcd-cert/--etcd-key exclude each other');
  if (args['etcd-insecure'] !== true && given < 3) throw new UsageError('give --etcd-ca, --etcd-cert and --etcd-key (mutual TLS), or --etcd-insecure on loopback');
  if ((args['follow-cert'] === undefined) !== (args['follow-key'] === undefined)) throw new UsageError('--follow-cert and --follow-key go together');
  const replica = (args.replica ?? hostname()).trim();
  if (replica === '' || replica.includes('/')) throw new UsageError('--replica must be a name without "/"');
  const leaseTtlSec = Math.ceil(duration(args['lease-ttl'] ?? '5s') / 1000);
  if (leaseTtlSec < 2) throw new UsageError('--lease-ttl must be 2s or more (etcd grants leases in whole seconds)');
  const maxBootstraps = positive('max-bootstraps', args['max-bootstraps'] ?? '32');
  const nodeRate = positive('node-rate', args['node-rate'] ?? '20');
  const unreachableAfterMs = duration(args['unreachable-after'] ?? '3s');
  const statusIntervalMs = duration(args['status-interval'] ?? '15s');

  const log = createLogger({ level }).with({ replica });
  routeLibraryLogs(log);
  const read = async (file: string, hint = '') => {
    try {
      return await readFile(file, 'utf8');
    } catch (err) {
      throw new Error(`cannot read ${file}: ${readProblem(err)}${hint}`);
    }
  };
  const pkiHint = ` (create the PKI with: cosictl gen pki --out ${pki})`;
  const caFile = join(pki, 'ca.crt');
  const tls = await TlsMaterial.load({ caFile, certFile: join(pki, 'server.crt'), keyFile: join(pki, 'server.key') }, log).catch((err: unknown) => {
    throw new Error(`${pki}: ${err instanceof Error ? err.message : String(err)}${pkiHint}`);
  });
  tls.watch();
  const followCert = args['follow-cert'] ?? join(pki, 'fleet.crt');
  const followKey = args['follow-key'] ?? join(pki, 'fleet.key');
  if (!(await stat(followCert).then(() => true, () => false))) {
    throw new Error(`no client certificate for the nodes at ${followCert} (cosictl gen pki writes one; or issue one with: cosictl gen cert --ca-dir ${pki} --name fleet --roles os:reader,os:impersonator --out ${pki}; or give --follow-cert/--follow-key)`);
  }
  const follow = await TlsMaterial.load({ caFile, certFile: followCert, keyFile: followKey }, log).catch((err: unknown) => {
    throw new Error(`the fleet's client certificate ${followCert}: ${err instanceof Error ? err.message : String(err)}`);
  });
  follow.watch();
  const [ca, cert, key] = etcdFiles;
  const etcdTls = ca !== undefined && cert !== undefined && key !== undefined ? { caPem: await read(ca), certPem: await read(cert), keyPem: await read(key) } : undefined;

  const fleet = await Fleet.start({
    listen: args.listen ?? '127.0.0.1:50001',
    tls,
    follow,
    nodesFile,
    replica,
    etcd: { endpoints, ...(etcdTls !== undefined ? { tls: etcdTls } : {}), prefix: args['etcd-prefix'] ?? '/cosi-fleet/' },
    leaseTtlSec,
    maxBootstraps,
    nodeRate,
    unreachableAfterMs,
    statusIntervalMs,
    ...(args['metrics-listen'] !== undefined ? { metricsListen: args['metrics-listen'] } : {}),
    audit: args.audit === true,
    log,
    version: version(),
  });

  stopOnSignals(log, 'stopping: handing the nodes over and ending open streams', () => fleet.stop());
  if (process.send !== undefined) {
    process.on('message', (m: unknown) => {
      if (m !== null && typeof m === 'object' && (m as { op?: unknown }).op === 'stats') {
        process.send?.({ event: 'stats', followers: fleet.followers.stats(), memory: process.memoryUsage() });
      }
    });
    process.send({ event: 'serving', port: fleet.port, replica, metricsUrl: fleet.metricsUrl });
  }
  return -1;
}

main().then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`cosi-fleet: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
