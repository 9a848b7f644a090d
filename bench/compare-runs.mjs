// Before/after: runs `node bench/run.mjs` with BENCH_FANOUT=100 BENCH_FANOUT_MODE=cosid (scenarios 1, 2, 5 and 7 for
// every peer, then the memory cosid's fan-out at 100 watchers) in two built checkouts, interleaved A B A B ..., and
// reports each figure's median and range per checkout with the ratio B/A. Written for the issue 20 comparison
// (25a5541 vs bcefb99); from 2e1eafd on, BENCH_FANOUT runs the fan-out alone, so only its rows come back: for Get and
// List use compare-reads.mjs (or BENCH_READS=1), for the fan-out compare-fanout.mjs. The machine may be shared: before each run
// it waits (up to --max-wait s) for the 1-minute load average to fall below --quiet, and records `uptime` around it.
//   node bench/compare-runs.mjs --a /work/wt-base --b . [--pairs 3] [--quiet 3] [--max-wait 600] [--out DIR] [-- run.mjs args]
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { abTable, median } from './common.mjs';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const own = dash < 0 ? argv : argv.slice(0, dash);
const runArgs = dash < 0 ? [] : argv.slice(dash + 1);
const opt = (name, fallback) => {
  const i = own.indexOf(`--${name}`);
  return i < 0 ? fallback : own[i + 1];
};
const trees = { A: resolve(opt('a', '.')), B: resolve(opt('b', '.')) };
const pairs = Number(opt('pairs', 3));
const quiet = Number(opt('quiet', 3));
const maxWait = Number(opt('max-wait', 600));
const outDir = resolve(opt('out', 'bench/out/compare'));
mkdirSync(outDir, { recursive: true });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const uptime = () => execFileSync('uptime').toString().trim();

/** The figures of one run, from run.mjs's progress lines (stderr). */
function parse(log) {
  const f = {};
  const num = (re, names) => {
    const m = log.match(re);
    if (m) names.forEach((n, i) => n && (f[n] = Number(m[i + 1])));
  };
  for (const peer of ['cosid', 'cosid-etcd', 'etcd', 'ceiling']) {
    const p = peer.replace(/[-]/g, '\\-');
    num(new RegExp(`\\]\\s+${p}: p50 / p99 ([\\d.]+) / ([\\d.]+) ms sequential, p99 ([\\d.]+) ms and (\\d+) calls/s`), [`${peer} Get p50 ms`, `${peer} Get p99 ms`, `${peer} Get p99 at 64 in flight ms`, `${peer} Get calls/s at 64 in flight`]);
    num(new RegExp(`\\]\\s+${p}: (\\d+) ms \\(median of 5\\), ([\\d.]+) MB/s; the first List took (\\d+) ms`), [`${peer} List 10,000 ms`, undefined, `${peer} first List ms`]);
  }
  num(/memory per stored resource \(\d+ B of YAML\): cosid (\d+) B, (\d+) B once listed/, ['cosid memory per resource B', 'cosid memory per resource once listed B']);
  num(/Get p99 ([\d.]+) ms alone, ([\d.]+) ms while/, ['cosid Get p99 alone (flood scenario) ms', 'cosid Get p99 under List flood ms']);
  num(/\]\s+cosid: ([\d.]+)% delivered \(([\d.]+)% within 3 s\), p50 (\d+) ms, p99 (\d+) ms, ([\d.]+) server CPU s per million/, ['fan-out 100 delivered %', 'fan-out 100 within 3 s %', 'fan-out 100 p50 ms', 'fan-out 100 p99 ms', 'fan-out 100 server CPU s per million events']);
  num(/writer at most (\d+) ms behind/, ['fan-out 100 writer behind max ms']);
  num(/other processes ([\d.]+) of ([\d.]+) busy CPU s/, ['fan-out 100 other processes CPU s', 'fan-out 100 busy CPU s']);
  return f;
}

function runOnce(label, i) {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, ['bench/run.mjs', ...runArgs], { cwd: trees[label], env: { ...process.env, BENCH_FANOUT: '100', BENCH_FANOUT_MODE: 'cosid' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stdout.resume();
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => {
      writeFileSync(join(outDir, `${label}-${i}.log`), err);
      code === 0 ? res(err) : rej(new Error(`${label} run ${i} exited ${code}; see ${join(outDir, `${label}-${i}.log`)}`));
    });
  });
}

// --parse LOG: the figures of a log written before (to check the parser against run.mjs's lines).
if (opt('parse') !== undefined) {
  process.stdout.write(JSON.stringify(parse((await import('node:fs')).readFileSync(opt('parse'), 'utf8')), null, 2) + '\n');
  process.exit(0);
}

const runs = [];
for (let i = 1; i <= pairs; i++) {
  for (const label of ['A', 'B']) {
    const waitStart = Date.now();
    while (loadavg()[0] >= quiet && Date.now() - waitStart < maxWait * 1000) await sleep(5000);
    const before = uptime();
    const t0 = Date.now();
    const log = await runOnce(label, i);
    const run = { label, i, tree: trees[label], waitedS: Math.round((t0 - waitStart) / 1000), seconds: Math.round((Date.now() - t0) / 1000), uptimeBefore: before, uptimeAfter: uptime(), figures: parse(log) };
    runs.push(run);
    process.stderr.write(`${label}${i}: ${run.seconds} s after waiting ${run.waitedS} s; before: ${before}; after: ${run.uptimeAfter}\n`);
    writeFileSync(join(outDir, 'runs.json'), JSON.stringify({ trees, runArgs, runs }, null, 2));
  }
}

const names = [...new Set(runs.flatMap((r) => Object.keys(r.figures)))];
const of = (label, name) => runs.filter((r) => r.label === label).map((r) => r.figures[name]).filter((x) => x !== undefined);
const figures = { A: Object.fromEntries(names.map((n) => [n, of('A', n)])), B: Object.fromEntries(names.map((n) => [n, of('B', n)])) };
const lines = abTable(figures);
const summary = {};
for (const name of names) {
  const a = figures.A[name];
  const b = figures.B[name];
  if (a.length > 0 && b.length > 0) summary[name] = { A: a, B: b, ratio: median(b) / median(a) };
}
writeFileSync(join(outDir, 'runs.json'), JSON.stringify({ trees, runArgs, runs, summary }, null, 2));
process.stdout.write(`A = ${trees.A}\nB = ${trees.B}\n\n${lines.join('\n')}\n`);
