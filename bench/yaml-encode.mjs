// Per-resource yaml_spec encode time: cosid's toYaml (the `yaml` package, server/watch/frames.ts) against the js-yaml
// dump it replaced (options as before the switch: noRefs, lineWidth -1). Both run in this one process, in alternating
// rounds, so load from other processes falls on both alike. js-yaml is no longer a dependency: JSYAML names a copy
// (e.g. the node_modules/js-yaml of a checkout before the switch). Usage (after npm run build):
// YAML_ALSO=label=/path/to/a/module/exporting/toYaml.js[,...] times other builds' toYaml in the same rounds.
//   JSYAML=/path/to/node_modules/js-yaml/index.js node bench/yaml-encode.mjs [--rounds 15] [--per-round 1000]
import { parse } from 'yaml';
import { toYaml } from '../dist/server/watch/frames.js';
import { podStatusPayload, summarize } from './common.mjs';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
};
const rounds = arg('rounds', 15);
const perRound = arg('per-round', 1000);
const jsyaml = (await import(process.env.JSYAML ?? 'js-yaml')).default;
const encoders = {
  yaml: toYaml,
  'js-yaml': (spec) => jsyaml.dump(spec, { noRefs: true, lineWidth: -1 }),
};
for (const entry of (process.env.YAML_ALSO ?? '').split(',').filter(Boolean)) {
  const [label, path] = entry.split('=');
  encoders[label] = (await import(path)).toYaml;
}

const results = {};
for (const bytes of [2048, 4096]) {
  // As the bench's writer does: 100 resources built once, each write a shallow copy with a new seq.
  const bases = Array.from({ length: 100 }, (_, i) => podStatusPayload(i, bytes));
  let seq = 0;
  const next = () => ({ ...bases[seq % 100], seq: ++seq });
  // Both texts must read back as the same spec, or the comparison is of different work.
  for (const [name, encode] of Object.entries(encoders)) {
    const spec = next();
    if (JSON.stringify(parse(encode(spec))) !== JSON.stringify(spec)) throw new Error(`${name}: the text does not read back as the spec`);
  }
  const sizes = Object.fromEntries(Object.entries(encoders).map(([name, encode]) => [name, encode(bases[0]).length]));
  const usPerEncode = Object.fromEntries(Object.keys(encoders).map((name) => [name, []]));
  for (let r = -3; r < rounds; r++) {
    // Alternate which goes first; the first 3 rounds warm the JIT and are dropped.
    const order = r % 2 === 0 ? Object.keys(encoders) : Object.keys(encoders).reverse();
    for (const name of order) {
      const encode = encoders[name];
      let sink = 0;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < perRound; i++) sink += encode(next()).length;
      const us = Number(process.hrtime.bigint() - t0) / 1e3 / perRound;
      if (sink === 0) throw new Error('nothing encoded');
      if (r >= 0) usPerEncode[name].push(us);
    }
  }
  results[bytes] = Object.fromEntries(Object.entries(usPerEncode).map(([name, s]) => {
    const { p50 } = summarize(s);
    return [name, { jsonBytes: bytes, yamlBytes: sizes[name], medianUs: p50, minUs: Math.min(...s), maxUs: Math.max(...s) }];
  }));
}
process.stdout.write(JSON.stringify({ node: process.version, jsyaml: process.env.JSYAML ?? 'js-yaml', rounds, perRound, results }, null, 2) + '\n');
