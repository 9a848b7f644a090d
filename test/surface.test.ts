// The published surface of the client library: the names the package entry exports at run time, and the
// declarations (.d.ts) of the entry and of every declaration file they reach. Nothing of the wire (no `Wire*` type,
// no grpc-js, no protobufjs) may appear, and the whole is held to a checked-in snapshot, so that a change to the
// surface fails here until it is made on purpose:
//
//   UPDATE_SURFACE=1 npx vitest run test/surface.test.ts     # rewrites test/surface/client-api.d.ts.txt
//
// The declarations are emitted afresh from the sources with the project's tsconfig (in memory, exactly what
// `npm run build` writes to dist/), so the test never reads a stale dist/.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import * as entry from '../client/index.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const SNAPSHOT = join(ROOT, 'test', 'surface', 'client-api.d.ts.txt');
const ENTRY = 'client/index';
/** Packages the declarations may import: rxjs is the Observable of CosiClient.watch. */
const ALLOWED_PACKAGES = ['rxjs'];

/** Every .d.ts the project emits, by path relative to the root (client/index.d.ts, shared/errors.d.ts, ...). */
function emitDeclarations(): Map<string, string> {
  const configPath = join(ROOT, 'tsconfig.json');
  const parsed = ts.getParsedCommandLineOfConfigFile(configPath, {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n')); } });
  if (parsed === undefined) throw new Error('cannot read tsconfig.json');
  const outDir = join(ROOT, '.surface-out');
  const program = ts.createProgram({
    rootNames: [join(ROOT, `${ENTRY}.ts`)],
    options: { ...parsed.options, outDir, declaration: true, emitDeclarationOnly: true, noEmit: false, sourceMap: false, declarationMap: false },
  });
  const files = new Map<string, string>();
  const result = program.emit(undefined, (fileName, text) => files.set(relative(outDir, fileName), text));
  const problems = ts.getPreEmitDiagnostics(program).concat(result.diagnostics);
  if (problems.length > 0) throw new Error(ts.formatDiagnostics(problems, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => ROOT, getNewLine: () => '\n' }));
  return files;
}

/** The entry's declaration file and every project declaration file it reaches, in a stable order; and the packages. */
function reachable(files: Map<string, string>): { paths: string[]; packages: Set<string> } {
  const seen = new Set<string>();
  const packages = new Set<string>();
  const visit = (path: string) => {
    if (seen.has(path)) return;
    const text = files.get(path);
    if (text === undefined) throw new Error(`${path} is referenced but was not emitted`);
    seen.add(path);
    for (const m of text.matchAll(/(?:from\s+|import\(\s*)['"]([^'"]+)['"]/g)) {
      const spec = m[1] ?? '';
      if (spec.startsWith('.')) visit(normalize(join(dirname(path), spec.replace(/\.js$/, '.d.ts'))));
      else packages.add(spec);
    }
  };
  visit(`${ENTRY}.d.ts`);
  return { paths: [...seen].sort(), packages };
}

describe('the public surface of the client library', () => {
  const files = emitDeclarations();
  const { paths, packages } = reachable(files);

  it('is the package entry: package.json exports "." as dist/client/index.js, with its declarations', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { exports: unknown; types: unknown };
    expect(pkg.exports).toEqual({ '.': { types: `./dist/${ENTRY}.d.ts`, default: `./dist/${ENTRY}.js` } });
    expect(pkg.types).toBe(`./dist/${ENTRY}.d.ts`);
  });

  it('brings the Node types its declarations use along: a kept reference, and @types/node among the dependencies', () => {
    // test/consumer-types.test.ts compiles a user's project that has no Node types of its own.
    expect(files.get(`${ENTRY}.d.ts`)).toMatch(/^\/\/\/ <reference types="node" preserve="true" \/>\n/);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    expect(pkg.dependencies['@types/node']).toBeDefined();
  });

  it('stays within the client and shared folders and imports no package but rxjs', () => {
    for (const p of paths) expect(p, p).toMatch(/^(client|shared)\//);
    expect([...packages].sort()).toEqual(ALLOWED_PACKAGES);
  });

  it('names no wire type, grpc-js or protobufjs', () => {
    for (const p of paths) {
      const text = files.get(p) ?? '';
      expect(text.match(/\bWire[A-Z]\w*/g) ?? [], p).toEqual([]);
      expect(text, p).not.toMatch(/@grpc\/|protobufjs/);
    }
  });

  it('matches the snapshot: names exported at run time and the declarations (UPDATE_SURFACE=1 to accept a change)', () => {
    // The module dist/client/index.js is built from.
    const names = Object.keys(entry).sort();
    const surface = [
      '// The published surface of the cosi-pods client library, checked by test/surface.test.ts.',
      '// Rewrite on purpose with: UPDATE_SURFACE=1 npx vitest run test/surface.test.ts',
      `// Run-time exports of dist/${ENTRY}.js: ${names.join(', ')}`,
      ...paths.flatMap((p) => [`// ==== dist/${p}`, (files.get(p) ?? '').trimEnd()]),
      '',
    ].join('\n');
    if (process.env['UPDATE_SURFACE'] === '1') {
      writeFileSync(SNAPSHOT, surface);
      return;
    }
    let expected: string;
    try {
      expected = readFileSync(SNAPSHOT, 'utf8');
    } catch {
      throw new Error(`no snapshot at ${relative(ROOT, SNAPSHOT)}: create it with UPDATE_SURFACE=1 npx vitest run test/surface.test.ts`);
    }
    expect(surface, 'the public surface changed: if on purpose, rerun with UPDATE_SURFACE=1 and commit test/surface/client-api.d.ts.txt').toBe(expected);
  });
});
