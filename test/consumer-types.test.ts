// The published declarations compile in a user's strict project as it is set up today: no @types/node of its own,
// no `"types": ["node"]`, with the TypeScript users get (5.x, the repository's; 7.x, the devDependency
// `typescript7`) and each module resolution a Node or bundler project uses. The package is installed the way npm
// installs it (a folder in node_modules with its own dependencies reachable), by a link to this repository.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = process.cwd();
const COMPILERS = {
  '5.x': join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'),
  '7.x': join(ROOT, 'node_modules', 'typescript7', 'bin', 'tsc'),
} as const;

/** What a user writes: each of the README's entry points, typed the strict way. */
const CONSUMER = `
import { connect, createInformer, isCosiError, type CosiClient, type CosiResource, type WatchEvent } from 'cosi-pods';

export async function main(endpoint: string, caPem: string, certPem: string, keyPem: string): Promise<number> {
  const client: CosiClient = connect({ endpoint, caPem, certPem, keyPem });
  try {
    const pods: CosiResource[] = await client.list('staticpods', { timeoutMs: 5000 });
    for await (const e of client.watchIter('staticpodstatus', { bootstrap: true })) {
      const seen: WatchEvent = e;
      if (seen.type === 'bootstrapped') break;
    }
    await using informer = createInformer(client, 'staticpodstatus');
    informer.on('added', ({ node, resource }) => void \`\${node} \${resource.metadata.id}\`);
    await informer.synced({ timeoutMs: 5000 });
    let bytes = 0;
    for await (const chunk of client.logs('kubelet', { tailLines: 10 })) bytes += chunk.byteLength;
    return pods.length + informer.list().length + bytes;
  } catch (err) {
    if (isCosiError(err, 'unavailable')) return -1;
    throw err;
  } finally {
    await client[Symbol.asyncDispose]();
  }
}
`;

/** Strict, and nothing that brings Node's types in by itself: no @types here, no "types", no DOM. */
const STRICT = { strict: true, noEmit: true, target: 'ES2022', lib: ['ES2022'], noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true };
// Each resolution finds the declarations its own way; one of them also checks every declaration file the program
// reaches (skipLibCheck off: ours, rxjs's, Node's), which costs TypeScript 5 seconds, so the others skip that.
const RESOLUTIONS = {
  nodenext: { module: 'nodenext', moduleResolution: 'nodenext', skipLibCheck: false },
  node16: { module: 'node16', moduleResolution: 'node16', skipLibCheck: true },
  bundler: { module: 'esnext', moduleResolution: 'bundler', skipLibCheck: true },
} as const;

function tsc(compiler: string, project: string, cwd: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [compiler, '-p', project, '--pretty', 'false'], { cwd, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, out: `${stdout}${stderr}`.trim() });
    });
  });
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cosi-consumer-'));
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  await mkdir(join(dir, 'node_modules'));
  await symlink(ROOT, join(dir, 'node_modules', 'cosi-pods'), 'dir');
  await writeFile(join(dir, 'consumer.ts'), CONSUMER);
  for (const [name, resolution] of Object.entries(RESOLUTIONS)) {
    await writeFile(join(dir, `tsconfig.${name}.json`), JSON.stringify({ compilerOptions: { ...STRICT, ...resolution }, files: ['consumer.ts'] }, null, 2));
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('a strict TypeScript project that installs cosi-pods', () => {
  it('has the compilers it claims: the project\'s tsc is 5.x, typescript7 is 7.x', async () => {
    const version = async (path: string) => (JSON.parse(await readFile(join(path, 'package.json'), 'utf8')) as { version: string }).version;
    expect(await version(join(ROOT, 'node_modules', 'typescript'))).toMatch(/^5\./);
    expect(await version(join(ROOT, 'node_modules', 'typescript7'))).toMatch(/^7\./);
    // Both packages name their binary `tsc` and npm may link either as .bin/tsc: the build names its compiler.
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    for (const script of ['build', 'typecheck']) expect(pkg.scripts[script]).toMatch(/^node node_modules\/typescript\/bin\/tsc /);
  });

  it('compiles with TypeScript 5.x and 7.x under node16, nodenext and bundler resolution, with no setup of its own', async () => {
    const runs = Object.entries(COMPILERS).flatMap(([ts, compiler]) => Object.keys(RESOLUTIONS).map(async (resolution) => ({ ts, resolution, ...(await tsc(compiler, `tsconfig.${resolution}.json`, dir)) })));
    const results = await Promise.all(runs);
    expect(results.map(({ ts, resolution, code, out }) => ({ ts, resolution, code, out }))).toEqual(
      results.map(({ ts, resolution }) => ({ ts, resolution, code: 0, out: '' })),
    );
  });
});
