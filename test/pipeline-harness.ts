// A whole node in-process: cosid with its pipeline, a kubelet simulator on HTTPS, a machine config file on disk.
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { connect, type CosiClient } from '../client/index.js';
import { CosiNode } from '../server/node.js';
import { generateCa, issueClientCert, issueServerCert, type KeyPairPem } from '../shared/pki.js';
import type { Json } from '../shared/wire.js';
import { makePki, type TestPki } from './harness.js';
import { freePort } from './ports.js';

export { freePort };
import { KubeletSimulator } from '../node-sim/kubelet/kubelet.js';
import { CriPodRuntime } from '../node-sim/kubelet/cri-runtime.js';
import type { CriTestEnv } from './cri/global-setup.js';

export const NODE = 'node-1';

export interface KubeletPki {
  ca: KeyPairPem;
  serving: KeyPairPem;
  client: KeyPairPem;
}

export async function makeKubeletPki(): Promise<KubeletPki> {
  const ca = await generateCa({ commonName: 'kubernetes' });
  return {
    ca,
    serving: await issueServerCert(ca, { commonName: NODE, sans: [NODE, '127.0.0.1'] }),
    client: await issueClientCert(ca, { commonName: 'apiserver-kubelet-client', organizations: ['system:masters'] }),
  };
}

export function machineConfig(pods: Json[], extra: { type?: string; docs?: Json[] } = {}): string {
  const main = YAML.stringify({ version: 'v1alpha1', machine: { type: extra.type ?? 'worker', pods } });
  return [main, ...(extra.docs ?? []).map((d) => YAML.stringify(d))].join('---\n');
}

export interface TestNode {
  node: CosiNode;
  sim: KubeletSimulator;
  pki: TestPki;
  kpki: KubeletPki;
  configPath: string;
  client: CosiClient;
  writeConfig(text: string): Promise<void>;
  /** With a real runtime: the pods run there, their logs under podLogsDir. */
  runtime?: CriPodRuntime;
  podLogsDir: string;
  close(): Promise<void>;
}

export interface RuntimeSetup {
  cri: CriTestEnv;
  /** Served by cosid as `logs kubelet`. */
  kubeletLog?: string;
}

export async function startNode(
  initialConfig: string,
  opts: { stepMs?: number; httpCheckMs?: number; intervalMs?: number; serverName?: string; runtime?: RuntimeSetup; metrics?: boolean } = {},
): Promise<TestNode> {
  const dir = await mkdtemp(join(tmpdir(), 'cosi-node-'));
  const podLogsDir = join(dir, 'pods');
  const configPath = join(dir, 'machine.yaml');
  await writeFile(configPath, initialConfig);
  const pki = await makePki();
  const kpki = await makeKubeletPki();
  const kubeletPort = await freePort();
  const node = await CosiNode.start({
    listen: '127.0.0.1:0',
    tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
    nodeName: NODE,
    shutdownGraceMs: 1000,
    configPath,
    ...(opts.metrics === true ? { metricsListen: '127.0.0.1:0' } : {}),
    kubelet: {
      url: `https://127.0.0.1:${kubeletPort}/pods/`,
      caPem: kpki.ca.certPem,
      certPem: kpki.client.certPem,
      keyPem: kpki.client.keyPem,
      serverName: opts.serverName ?? NODE,
      intervalMs: opts.intervalMs ?? 200,
      minBackoffMs: 50,
      timeoutMs: 1000,
      maxBodyBytes: 1 << 20,
    },
    runtime: {
      criEndpoint: opts.runtime?.cri.endpoint ?? `unix://${join(dir, 'no-runtime.sock')}`,
      podLogsDir,
      ...(opts.runtime?.kubeletLog !== undefined ? { kubeletLog: opts.runtime.kubeletLog } : {}),
    },
  });
  const runtime =
    opts.runtime === undefined
      ? undefined
      : new CriPodRuntime({ endpoint: opts.runtime.cri.endpoint, podLogsDir, cgroupParent: opts.runtime.cri.cgroupParent, restartBackoffMs: 300 });
  const sim = await KubeletSimulator.start({
    nodeName: NODE,
    staticPodURL: node.manifests.url,
    tls: { certPem: kpki.serving.certPem, keyPem: kpki.serving.keyPem, clientCaPem: kpki.ca.certPem },
    listen: `127.0.0.1:${kubeletPort}`,
    stepMs: opts.stepMs ?? 100,
    httpCheckFrequencyMs: opts.httpCheckMs ?? 100,
    ...(runtime !== undefined ? { runtime, runtimeSyncMs: 200 } : {}),
  });
  const client = connect({ endpoint: `127.0.0.1:${node.cosid.port}`, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
  return {
    node,
    sim,
    pki,
    kpki,
    configPath,
    client,
    // As editors save (a new file renamed over the old): cosid never reads a half-written config, which on a loaded
    // machine it can (truncated, then written), and a test would count that as a rejected load.
    writeConfig: async (text) => {
      await writeFile(`${configPath}.new`, text);
      await rename(`${configPath}.new`, configPath);
    },
    ...(runtime !== undefined ? { runtime } : {}),
    podLogsDir,
    async close() {
      client.close();
      await sim.stop();
      await node.stop();
      await rm(dir, { recursive: true, force: true });
      await rm(pki.dir, { recursive: true, force: true });
    },
  };
}
