#!/usr/bin/env node
// Build step, after tsc: bundles cosictl (client/cli/main.ts and all it imports, its packages included) into
// dist/client/cli/main.js, in place of tsc's output of that file, with the code that only some commands load (gen's
// X.509, apply-config's patches, wait, logs...) in chunks of dist/client/cli/bundle/ that load when asked.
// Why: loading grpc-js, protobufjs and yaml from their hundreds of files took most of a `cosictl get`
// (issue 22). The library (package entry dist/client/index.js) stays as tsc writes it, unbundled.
//
//   node scripts/bundle-cli.mjs
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// Chunk names change with their content: last build's must not pile up.
rmSync(join(root, 'dist/client/cli/bundle'), { recursive: true, force: true });

await build({
  absWorkingDir: root,
  entryPoints: { main: 'client/cli/main.ts' },
  outdir: 'dist/client/cli',
  chunkNames: 'bundle/[name]-[hash]',
  bundle: true,
  // ES modules so that a command's own code stays in a chunk of its own, loaded by its dynamic import.
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  // Less for V8 to scan at every start (about 2% of a `get`'s instructions); names are kept, for stack traces.
  minifyWhitespace: true,
  minifySyntax: true,
  // grpc-js loads proto-loader (and protobufjs's .proto parser with it) only for the channelz and ORCA services of a
  // server: left out of the bundle, still found in node_modules should it ever be asked for.
  external: ['@grpc/proto-loader'],
  // The packages written as CommonJS call require(), which an ES module has not: it is given one.
  banner: { js: "import { createRequire as __cosictlRequire } from 'node:module';\nconst require = __cosictlRequire(import.meta.url);" },
  logLevel: 'warning',
});
