// The kubelet simulator's polls of the static pod URL may overlap (a scheduled poll and pollNow()): a poll that
// started earlier and answers later carries an older manifest, and must not replace the newer one already taken,
// neither in the pods it reports nor in what it last applied to its runtime.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { eventually, pod } from './harness.js';
import type { DesiredPod } from '../node-sim/kubelet/cri-runtime.js';
import { KubeletSimulator } from '../node-sim/kubelet/kubelet.js';
import { makeKubeletPki, NODE } from './pipeline-harness.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

describe('kubelet simulator polls that overlap', () => {
  it('never applies an older manifest after a newer one', async () => {
    const kpki = await makeKubeletPki();
    // Each request is answered with the manifest as it was when the request arrived; the first is held back.
    let body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('old')] });
    const requests: { res: ServerResponse; body: string }[] = [];
    let holdFirst = true;
    const manifest = createServer((_req: IncomingMessage, res: ServerResponse) => {
      if (holdFirst) {
        holdFirst = false;
        requests.push({ res, body });
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/yaml' }).end(body);
    });
    await new Promise<void>((r) => manifest.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise((r) => manifest.close(r)));
    cleanups.push(() => manifest.closeAllConnections());
    const applied: string[][] = [];
    const sim = await KubeletSimulator.start({
      nodeName: NODE,
      staticPodURL: `http://127.0.0.1:${(manifest.address() as AddressInfo).port}/`,
      tls: { certPem: kpki.serving.certPem, keyPem: kpki.serving.keyPem, clientCaPem: kpki.ca.certPem },
      holdPolling: true,
      runtime: {
        apply: async (desired: DesiredPod[]) => {
          applied.push(desired.map((d) => d.name));
        },
        stopAll: async () => {},
      },
    });
    cleanups.push(() => sim.stop());
    const names = () => sim.pods().map((p) => String((p['metadata'] as { name?: unknown }).name)).filter((n) => n !== `kube-proxy-${NODE}`);

    // A poll starts and its answer (the old manifest) is held; the manifest changes; a second poll takes the new one.
    const first = sim.pollNow();
    await eventually(() => expect(requests.length).toBe(1));
    body = YAML.stringify({ apiVersion: 'v1', kind: 'PodList', items: [pod('new')] });
    await sim.pollNow();
    expect(names()).toEqual([`new-${NODE}`]);
    // Only now does the first poll's answer arrive: older than what the simulator has.
    const held = requests[0];
    held?.res.writeHead(200, { 'Content-Type': 'application/yaml' }).end(held.body);
    await first;
    expect(names()).toEqual([`new-${NODE}`]);
    expect(applied.at(-1)).toEqual([`new-${NODE}`]);
  });
});
