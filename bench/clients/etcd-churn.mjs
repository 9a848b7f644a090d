// The fleet bench's etcd peer (bench/fleet.mjs): the same changes as the fleet commits, put straight into etcd, one
// put per change at the given rate, over nodes x pods keys of the fleet's layout, with one etcd watch per mirrored
// kind (as one fleet replica holds). Reports what was written and seen, and the put-to-event delay.
import { Etcd3 } from 'etcd3';
import { serveRpc, sleep, summarize } from '../common.mjs';

const cfg = JSON.parse(process.env.BENCH_ETCD_CHURN);
const etcd = new Etcd3({ hosts: cfg.endpoint });
const KINDS = ['k8s/StaticPods.kubernetes.talos.dev/', 'k8s/StaticPodStatuses.kubernetes.talos.dev/', 'config/MachineConfigStatuses.cosi-pods.dev/'];
const STATUS = KINDS[1];
let seen = 0;
const delays = [];
const watchers = [];

async function watchKinds() {
  for (const kind of KINDS) {
    const w = await etcd.watch().prefix(`${cfg.prefix}${kind}`).create();
    w.on('put', (kv) => {
      seen++;
      const at = Number(kv.value.subarray(0, 13).toString());
      if (Number.isFinite(at)) delays.push(Date.now() - at);
    });
    watchers.push(w);
  }
}

/** `rate` puts per second for `seconds`, each a value of `bytes` that starts with its write time in ms. */
async function churn({ rate, seconds }) {
  seen = 0;
  delays.length = 0;
  const pad = 'x'.repeat(Math.max(0, cfg.valueBytes - 13));
  const keys = cfg.nodes * cfg.pods;
  let written = 0;
  const began = Date.now();
  const inFlight = new Set();
  while (Date.now() - began < seconds * 1000) {
    const due = Math.floor(((Date.now() - began) / 1000) * rate);
    for (; written < due; written++) {
      const i = Math.floor(Math.random() * keys);
      const key = `${cfg.prefix}${STATUS}sim-${Math.floor(i / cfg.pods)}/kube-system/app-${i % cfg.pods}`;
      const p = etcd.put(key).value(`${Date.now()}${pad}`).exec().finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    await sleep(20);
  }
  await Promise.all(inFlight);
  const deadline = Date.now() + 10_000;
  while (seen < written && Date.now() < deadline) await sleep(50);
  return { written, seen, delay: summarize(delays), seconds: (Date.now() - began) / 1000 };
}

await watchKinds();
serveRpc({
  churn,
  stop: async () => {
    for (const w of watchers) await w.cancel();
    etcd.close();
    setImmediate(() => process.exit(0));
  },
});
process.send({ ready: true });
