#!/usr/bin/env node
// `npm run soak -- --minutes N [--seed S] [--watchers W] [--fault-every-ms MS]`: the soak for the watch guarantees
// (test/soak/soak.ts): real etcd (3 members), real containerd with the kubelet simulator, cosid on etcd, a writer,
// many watchers, faults chosen by the seed; every watcher's history is checked. Prints a progress line every 10 s and
// a summary table at the end, writes bench/out/soak-<seed>.json, and exits 1 on any violation (printing the first
// ones with the seed, for replay with the same --seed). Ctrl-C ends the churn early; everything started is removed.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const USAGE = 'usage: npm run soak -- --minutes N [--seed S] [--watchers W] [--fault-every-ms MS]';

let values;
try {
  ({ values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '5' },
      seed: { type: 'string' },
      watchers: { type: 'string', default: '8' },
      'fault-every-ms': { type: 'string', default: '3000' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }));
} catch (err) {
  process.stderr.write(`soak: ${err.message}\n${USAGE}\n`);
  process.exit(2);
}
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const minutes = Number(values.minutes);
const seed = values.seed === undefined ? Math.floor(Math.random() * 1_000_000) : Number(values.seed);
const watchers = Number(values.watchers);
const faultEveryMs = Number(values['fault-every-ms']);
for (const [name, v] of [['--minutes', minutes], ['--seed', seed], ['--watchers', watchers], ['--fault-every-ms', faultEveryMs]]) {
  if (!Number.isFinite(v) || v <= 0 || (name !== '--minutes' && !Number.isInteger(v))) {
    process.stderr.write(`soak: ${name} must be a positive ${name === '--minutes' ? 'number' : 'integer'}\n${USAGE}\n`);
    process.exit(2);
  }
}

const { runSoak, summaryTable } = await import('../dist/test/soak/soak.js');
const stamp = () => new Date().toISOString().slice(11, 19);
const say = (line) => process.stderr.write(`[soak ${stamp()}] ${line}\n`);

const abort = new AbortController();
let interrupts = 0;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    interrupts++;
    if (interrupts === 1) {
      say(`${sig}: ending the churn, then stopping and removing everything started (again to exit at once)`);
      abort.abort();
    } else {
      // The children stop when their IPC channel closes; etcd members die with us (parent-death signal).
      process.exit(130);
    }
  });
}

say(`seed ${seed}, ${minutes} min (replay with: npm run soak -- --minutes ${minutes} --seed ${seed})`);
const outDir = join(root, 'bench', 'out');
mkdirSync(outDir, { recursive: true });
const childLog = join(outDir, `soak-${seed}.children.log`);
let report;
try {
  report = await runSoak({ seed, durationMs: Math.round(minutes * 60_000), watchers, faultEveryMs, log: say, signal: abort.signal, childLog });
} catch (err) {
  say(`the soak could not run: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(3);
}

const out = join(outDir, `soak-${seed}.json`);
writeFileSync(out, `${JSON.stringify({ ...report, minutes, finishedAt: new Date().toISOString() }, null, 2)}\n`);
process.stdout.write(`\n${summaryTable(report)}\n\nwritten to ${out} (cosid's and the kubelet simulator's output: ${childLog})\n`);
if (report.violations > 0) {
  process.stdout.write(`\nFIRST VIOLATIONS (seed ${seed}; replay: npm run soak -- --minutes ${minutes} --seed ${seed}):\n`);
  for (const v of report.firstViolations.slice(0, 5)) {
    process.stdout.write(`  seed ${v.seed} ${v.watcher} event #${v.index} at ${(v.atMs / 1000).toFixed(1)} s: ${v.rule}: ${v.detail} [${v.event}]\n`);
  }
  process.exit(1);
}
process.exit(report.aborted ? 130 : 0);
