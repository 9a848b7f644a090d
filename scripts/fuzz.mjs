// `npm run fuzz -- [--duration 60s] [--seed N] [--concurrency 4]`: a longer fuzz run against an in-process cosid
// (fresh PKI in a temporary folder, loopback only). Exits 1 if any request got an undocumented answer.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generatePki } from '../dist/client/gen-pki.js';
import { Cosid } from '../dist/server/cosid.js';
import { runFuzz } from '../dist/test/fuzz/fuzzer.js';

const { values } = parseArgs({ options: { duration: { type: 'string', default: '60s' }, seed: { type: 'string' }, concurrency: { type: 'string', default: '4' } } });
const m = /^(\d+)(ms|s|m)?$/.exec(values.duration ?? '60s');
if (m === null) throw new Error(`invalid --duration ${values.duration}: use e.g. 30s, 10m`);
const durationMs = Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000);
const seed = values.seed !== undefined ? Number(values.seed) : Date.now() % 1_000_000;

const dir = await mkdtemp(join(tmpdir(), 'cosi-fuzz-'));
await generatePki(dir, {});
const read = (n) => readFile(join(dir, n), 'utf8');
const cosid = await Cosid.start({ listen: '127.0.0.1:0', tls: { caPem: await read('ca.crt'), certPem: await read('server.crt'), keyPem: await read('server.key') }, nodeName: 'fuzz' });
for (let i = 0; i < 50; i++) {
  cosid.store.create({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id: `default/p${i}`, spec: { phase: 'Running' }, labels: { n: String(i) } }, 'fuzz');
}
process.stderr.write(`fuzzing cosid on 127.0.0.1:${cosid.port} for ${values.duration} (seed ${seed})\n`);
const started = Date.now();
const report = await runFuzz(
  { endpoint: `127.0.0.1:${cosid.port}`, caPem: await read('ca.crt'), certPem: await read('admin.crt'), keyPem: await read('admin.key') },
  {
    durationMs,
    seed,
    concurrency: Number(values.concurrency),
    onProgress: (r) => process.stderr.write(`  ${Math.round((Date.now() - started) / 1000)}s: ${r.calls} calls, ${r.findings.length} findings, rss ${Math.round(process.memoryUsage().rss / 1048576)} MiB\n`),
  },
);
await cosid.stop();
await rm(dir, { recursive: true, force: true });
process.stdout.write(JSON.stringify({ seed, durationMs, calls: report.calls, byCode: report.byCode, findings: report.findings.slice(0, 20) }, null, 2) + '\n');
process.exit(report.findings.length > 0 ? 1 : 0);
