// What the ApplyConfiguration tests share: a node (cosid with its machine config file, no kubelet) and a raw
// machine.MachineService/ApplyConfiguration call over real mTLS, as any Talos client makes it.
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type CosiClient } from '../client/index.js';
import { CosiNode } from '../server/node.js';
import { createLogger } from '../shared/log.js';
import type { KeyPairPem } from '../shared/pki.js';
import { ApplyMode, CONFIG_VERSION_METADATA_KEY, machineWire, type WireApplyConfiguration } from '../shared/wire.js';
import { makePki, type TestPki } from './harness.js';

export interface ApplyCall {
  text: string;
  mode: ApplyMode;
  dryRun?: boolean;
  tryTimeoutMs?: number;
  version?: number;
}

export type ApplyAnswer = { ok: true; message: WireApplyConfiguration } | { ok: false; error: grpc.ServiceError; kind: string };

/** One ApplyConfiguration call with the given certificate, on a connection of its own; errors come back as values. */
export async function applyConfig(endpoint: string, pki: TestPki, cert: KeyPairPem, call: ApplyCall): Promise<ApplyAnswer> {
  const client = applyClient(endpoint, pki, cert);
  try {
    return await client.apply(call);
  } finally {
    client.close();
  }
}

/** A connection for many ApplyConfiguration calls. */
export function applyClient(endpoint: string, pki: TestPki, cert: KeyPairPem): { apply(call: ApplyCall): Promise<ApplyAnswer>; close(): void } {
  const client = new grpc.Client(endpoint, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(cert.keyPem), Buffer.from(cert.certPem)));
  return {
    apply(call) {
      const md = new grpc.Metadata();
      if (call.version !== undefined) md.set(CONFIG_VERSION_METADATA_KEY, String(call.version));
      const timeout = call.tryTimeoutMs === undefined ? null : { seconds: Math.floor(call.tryTimeoutMs / 1000), nanos: (call.tryTimeoutMs % 1000) * 1e6 };
      const body = { data: Buffer.from(call.text), mode: call.mode, dryRun: call.dryRun === true, tryModeTimeout: timeout };
      return new Promise((resolve) => {
        client.makeUnaryRequest(
          '/machine.MachineService/ApplyConfiguration',
          (v: typeof body) => Buffer.from(machineWire.applyConfigurationRequest.encode(v)),
          (b: Buffer) => machineWire.applyConfigurationResponse.decode(b),
          body,
          md,
          (err, res) => {
            if (err !== null) resolve({ ok: false, error: err, kind: String(err.metadata?.get('cosi-error-kind')[0] ?? '') });
            else {
              const [message] = res?.messages ?? [];
              if (message === undefined) throw new Error('no message in the answer');
              resolve({ ok: true, message });
            }
          },
        );
      });
    },
    close: () => client.close(),
  };
}

export function expectOk(a: ApplyAnswer): WireApplyConfiguration {
  if (!a.ok) throw new Error(`apply failed: ${a.error.code} ${a.error.details}`);
  return a.message;
}

export function expectError(a: ApplyAnswer): { code: number; details: string; kind: string } {
  if (a.ok) throw new Error(`apply succeeded: ${a.message.modeDetails}`);
  return { code: a.error.code, details: a.error.details, kind: a.kind };
}

export interface ConfigNode {
  node: CosiNode;
  pki: TestPki;
  dir: string;
  configPath: string;
  endpoint: string;
  client: CosiClient;
  /** The JSON log lines cosid wrote. */
  logs: Record<string, unknown>[];
  apply(call: ApplyCall, cert?: KeyPairPem): Promise<ApplyAnswer>;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  /** Stops cosid (the folder stays, for a restart). */
  stop(): Promise<void>;
  close(): Promise<void>;
}

/** A cosid with its config pipeline (no kubelet) on a config file in a fresh folder; metrics and the audit on. */
export async function startConfigNode(initialConfig: string, opts: { pki?: TestPki; dir?: string } = {}): Promise<ConfigNode> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'cosi-apply-')));
  const configPath = join(dir, 'machine.yaml');
  if (opts.dir === undefined) await writeFile(configPath, initialConfig);
  const pki = opts.pki ?? (await makePki());
  const logs: Record<string, unknown>[] = [];
  const node = await CosiNode.start({
    listen: '127.0.0.1:0',
    tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
    nodeName: 'apply-node',
    shutdownGraceMs: 500,
    configPath,
    metricsListen: '127.0.0.1:0',
    audit: true,
    log: createLogger({ level: 'debug', write: (l) => logs.push(JSON.parse(l) as Record<string, unknown>) }),
    runtime: { criEndpoint: `unix://${join(dir, 'no-runtime.sock')}`, podLogsDir: join(dir, 'pods') },
  });
  const endpoint = `127.0.0.1:${node.cosid.port}`;
  const client = connect({ endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    client.close();
    await node.stop();
  };
  return {
    node,
    pki,
    dir,
    configPath,
    endpoint,
    client,
    logs,
    apply: (call, cert = pki.admin) => applyConfig(endpoint, pki, cert, call),
    async metric(name, labels = {}) {
      const text = await (await fetch(String(node.cosid.metricsUrl))).text();
      const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
      for (const line of text.split('\n')) {
        const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
        if (m?.[1] !== name) continue;
        const have = (m[2] ?? '').split(',').filter((s) => s !== '');
        if (want.every((w) => have.includes(w))) return Number(m[3]);
      }
      return 0;
    },
    stop,
    async close() {
      await stop();
      await rm(dir, { recursive: true, force: true });
      if (opts.pki === undefined) await rm(pki.dir, { recursive: true, force: true });
    },
  };
}
