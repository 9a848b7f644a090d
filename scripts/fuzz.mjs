// `npm run fuzz -- [--duration 60s] [--seed N] [--concurrency 4]`: a longer fuzz run against in-process cosids
// (fresh PKI in a temporary folder, loopback only): the State API and machine.MachineService against one whose
// container runtime socket is missing, and machine.MachineService alone against one whose (fake) runtime reports log
// files that point outside the pod logs directory. Exits 1 if any request got an undocumented answer, or any Logs
// answer carried the canary planted outside the pod logs directory.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generatePki } from '../dist/client/gen-pki.js';
import { Cosid } from '../dist/server/cosid.js';
import { runFuzz } from '../dist/test/fuzz/fuzzer.js';
import { makeMachineFixture } from '../dist/test/fuzz/machine-fixture.js';

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
const fixture = await makeMachineFixture({ fakeCri: true });
const runtime = { podLogsDir: fixture.podLogsDir, kubeletLog: fixture.kubeletLog };
const cosid = await Cosid.start({ listen: '127.0.0.1:0', tls, nodeName: 'fuzz', runtime: { ...runtime, criEndpoint: fixture.missingCri } });
const confined = await Cosid.start({ listen: '127.0.0.1:0', tls, nodeName: 'fuzz-confined', runtime: { ...runtime, criEndpoint: fixture.fakeCri } });
for (let i = 0; i < 50; i++) {
  cosid.store.create({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id: `default/p${i}`, spec: { phase: 'Running' }, labels: { n: String(i) } }, 'fuzz');
}
process.stderr.write(`fuzzing cosid on 127.0.0.1:${cosid.port} and 127.0.0.1:${confined.port} for ${values.duration} (seed ${seed})\n`);
const started = Date.now();
const client = { caPem: await read('ca.crt'), certPem: await read('admin.crt'), keyPem: await read('admin.key') };
const progress = (name) => (r) =>
  process.stderr.write(`  ${Math.round((Date.now() - started) / 1000)}s ${name}: ${r.calls} calls, ${r.findings.length} findings, rss ${Math.round(process.memoryUsage().rss / 1048576)} MiB\n`);
const [api, confinement] = await Promise.all([
  runFuzz(
    { endpoint: `127.0.0.1:${cosid.port}`, ...client },
    { durationMs, seed, concurrency, machine: { canary: fixture.canary, ids: ['default/nginx-fuzz:nginx'] }, onProgress: progress('api') },
  ),
  runFuzz(
    { endpoint: `127.0.0.1:${confined.port}`, ...client },
    {
      durationMs,
      seed: seed + 1,
      concurrency: Math.max(1, Math.floor(concurrency / 2)),
      state: false,
      machine: { canary: fixture.canary, ids: [...fixture.ids.readable, ...fixture.ids.escaping, ...fixture.ids.broken] },
      onProgress: progress('confinement'),
    },
  ),
]);
await cosid.stop();
await confined.stop();
await fixture.close();
await rm(dir, { recursive: true, force: true });
const summary = (r) => ({ calls: r.calls, byCode: r.byCode, byMethod: r.byMethod, logsWithData: r.logsWithData, findings: r.findings.slice(0, 20) });
process.stdout.write(JSON.stringify({ seed, durationMs, api: summary(api), confinement: summary(confinement) }, null, 2) + '\n');
process.exit(api.findings.length + confinement.findings.length > 0 ? 1 : 0);
