// `npm run fuzz -- [--duration 60s] [--seed N] [--concurrency 4]`: a longer fuzz run against in-process cosids
// (fresh PKI in a temporary folder, loopback only): the State API and machine.MachineService against one whose
// container runtime socket is missing, and machine.MachineService alone against one on a private, real containerd
// running pods whose log files lead outside the pod logs directory (test/fuzz/machine-fixture.ts; skipped, saying
// why, where containerd cannot run). Exits 1 if any request got an undocumented answer, or any Logs answer carried
// the canary those containers print.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generatePki } from '../dist/client/gen-pki.js';
import { Cosid } from '../dist/server/cosid.js';
import { CriClient } from '../dist/node-sim/kubelet/cri-client.js';
import { criPrerequisites, startContainerd } from '../dist/node-sim/containerd.js';
import { runFuzz } from '../dist/test/fuzz/fuzzer.js';
import { FUZZ_NAMESPACE, makeMachineFixture, startHostilePods } from '../dist/test/fuzz/machine-fixture.js';

const { values } = parseArgs({ options: { duration: { type: 'string', default: '60s' }, seed: { type: 'string' }, concurrency: { type: 'string', default: '4' } } });
const m = /^(\d+)(ms|s|m)?$/.exec(values.duration ?? '60s');
if (m === null) throw new Error(`invalid --duration ${values.duration}: use e.g. 30s, 10m`);
const durationMs = Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000);
const seed = values.seed !== undefined ? Number(values.seed) : Date.now() % 1_000_000;
const concurrency = Number(values.concurrency);

const dir = await mkdtemp(join(tmpdir(), 'cosi-fuzz-'));
await generatePki(dir, {});
const read = (n) => readFile(join(dir, n), 'utf8');
const tls = { caPem: await read('ca.crt'), certPem: await read('server.crt'), keyPem: await read('server.key') };
const fixture = await makeMachineFixture();
const runtime = { podLogsDir: fixture.podLogsDir, kubeletLog: fixture.kubeletLog };
const cosid = await Cosid.start({ listen: '127.0.0.1:0', tls, nodeName: 'fuzz', runtime: { ...runtime, criEndpoint: fixture.missingCri } });
for (let i = 0; i < 50; i++) {
  cosid.store.create({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id: `default/p${i}`, spec: { phase: 'Running' }, labels: { n: String(i) } }, 'fuzz');
}

// The confinement run needs a real containerd (root, containerd, runc, busybox-static, umoci).
let containerd;
let hostile;
let confined;
let cleanupFailed = false;
let api;
let confinement;
const pre = criPrerequisites();
try {
  if (!pre.ok) {
    process.stderr.write(`the confinement run is SKIPPED: ${pre.reason}\n`);
  } else {
    // Short: the socket path must fit in a unix socket address.
    containerd = await startContainerd({ dir: await mkdtemp('/tmp/cosi-ctrd-'), log: (line) => process.stderr.write(`  ${line}\n`) });
    hostile = await startHostilePods(containerd, fixture);
    confined = await Cosid.start({ listen: '127.0.0.1:0', tls, nodeName: 'fuzz-confined', runtime: { ...runtime, criEndpoint: containerd.endpoint } });
  }
  process.stderr.write(`fuzzing cosid on 127.0.0.1:${cosid.port}${confined !== undefined ? ` and 127.0.0.1:${confined.port}` : ''} for ${values.duration} (seed ${seed})\n`);
  const started = Date.now();
  const client = { caPem: await read('ca.crt'), certPem: await read('admin.crt'), keyPem: await read('admin.key') };
  const progress = (name) => (r) =>
    process.stderr.write(`  ${Math.round((Date.now() - started) / 1000)}s ${name}: ${r.calls} calls, ${r.findings.length} findings, rss ${Math.round(process.memoryUsage().rss / 1048576)} MiB\n`);
  [api, confinement] = await Promise.all([
    runFuzz(
      { endpoint: `127.0.0.1:${cosid.port}`, ...client },
      { durationMs, seed, concurrency, machine: { canary: fixture.canary, ids: ['default/nginx-fuzz:nginx'] }, onProgress: progress('api') },
    ),
    confined === undefined
      ? undefined
      : runFuzz(
          { endpoint: `127.0.0.1:${confined.port}`, ...client },
          {
            durationMs,
            seed: seed + 1,
            concurrency: Math.max(1, Math.floor(concurrency / 2)),
            state: false,
            machine: { canary: fixture.canary, ids: [...hostile.ids.readable, ...hostile.ids.escaping, ...hostile.ids.broken] },
            onProgress: progress('confinement'),
          },
        ),
  ]);
} finally {
  await cosid.stop();
  await confined?.stop();
  if (containerd !== undefined) {
    // Every hostile pod removed (checked with a fresh client), then containerd stopped and its directory removed.
    try {
      await hostile?.close();
      const check = new CriClient(containerd.endpoint);
      const left = (await check.listPodSandboxes()).filter((s) => s.metadata.namespace === FUZZ_NAMESPACE);
      check.close();
      if (left.length > 0) throw new Error(`sandboxes left: ${left.map((s) => s.metadata.name).join(', ')}`);
    } catch (err) {
      cleanupFailed = true;
      process.stderr.write(`cleanup of the hostile pods failed: ${err instanceof Error ? err.message : String(err)}\n`);
    }
    await containerd.stop();
  }
  await fixture.close();
  await rm(dir, { recursive: true, force: true });
}
const summary = (r) => ({ calls: r.calls, byCode: r.byCode, byMethod: r.byMethod, logsWithData: r.logsWithData, findings: r.findings.slice(0, 20) });
process.stdout.write(
  JSON.stringify({ seed, durationMs, api: summary(api), confinement: confinement === undefined ? `skipped: ${pre.ok ? 'no containerd' : pre.reason}` : summary(confinement) }, null, 2) + '\n',
);
process.exit(api.findings.length + (confinement?.findings.length ?? 0) > 0 || cleanupFailed ? 1 : 0);
