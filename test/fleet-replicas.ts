// Test-only: cosi-fleet replicas as processes (the built bin, forked with an IPC channel), so that a test can kill
// one (SIGKILL), pause one (SIGSTOP/SIGCONT) and start it again under the same name.
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export const FLEET_BIN = join(process.cwd(), 'dist', 'server', 'fleet', 'main.js');

export interface ReplicaOptions {
  name: string;
  /** Folder with ca.crt, server.crt/key, fleet.crt/key (the simulator writes one). */
  pki: string;
  nodesFile: string;
  etcd: { endpoints: readonly string[]; caFile: string; certFile: string; keyFile: string };
  prefix: string;
  extra?: readonly string[];
}

export interface Replica {
  readonly name: string;
  readonly port: number;
  readonly metricsUrl: string;
  readonly proc: ChildProcess;
  /** Everything it wrote to stderr (its log). */
  readonly log: () => string;
  signal(sig: NodeJS.Signals): void;
  /** Resolves when the process has exited. */
  readonly exited: Promise<number | null>;
  /** SIGTERM, and the exit. */
  stop(): Promise<void>;
  /** A counter or gauge from its /metrics (0 when absent). */
  metric(name: string): Promise<number>;
}

export async function startReplica(o: ReplicaOptions): Promise<Replica> {
  const args = [
    '--pki', o.pki,
    '--nodes-file', o.nodesFile,
    '--replica', o.name,
    '--listen', '127.0.0.1:0',
    '--metrics-listen', '127.0.0.1:0',
    '--etcd-endpoints', o.etcd.endpoints.join(','),
    '--etcd-ca', o.etcd.caFile,
    '--etcd-cert', o.etcd.certFile,
    '--etcd-key', o.etcd.keyFile,
    '--etcd-prefix', o.prefix,
    '--lease-ttl', '2s',
    '--unreachable-after', '1s',
    '--status-interval', '1s',
    '--log-level', 'info',
    ...(o.extra ?? []),
  ];
  const proc = fork(FLEET_BIN, args, { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString('utf8');
    if (stderr.length > 4_000_000) stderr = stderr.slice(-2_000_000);
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const serving = await new Promise<{ port: number; metricsUrl: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`replica ${o.name} did not start within 30 s:\n${stderr.slice(-3000)}`)), 30_000);
    proc.on('message', (m: { event?: string; port?: number; metricsUrl?: string }) => {
      if (m.event !== 'serving') return;
      clearTimeout(timer);
      resolve({ port: m.port as number, metricsUrl: m.metricsUrl as string });
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`replica ${o.name} exited with ${String(code)} before serving:\n${stderr.slice(-3000)}`));
    });
  });
  return {
    name: o.name,
    port: serving.port,
    metricsUrl: serving.metricsUrl,
    proc,
    log: () => stderr,
    signal: (sig) => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
    },
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
    async metric(name) {
      const text = await (await fetch(serving.metricsUrl)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
      return line === undefined ? 0 : Number(line.split(' ').at(-1));
    },
  };
}
