// The docs kept true: the README's test command is what CI runs, the set-up step does what the README says on a
// machine that lacks a package, every flag the binaries know is documented (and none that they do not), the links
// and the files the docs name exist.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = process.cwd();
const read = (path: string) => readFile(join(ROOT, path), 'utf8');
const temps: string[] = [];
afterAll(async () => {
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

/** The lines of the first fenced block under the `## <heading>` of a markdown text. */
function blockUnder(markdown: string, heading: string): string {
  const section = markdown.split(/^## /m).find((part) => part.startsWith(`${heading}\n`));
  if (section === undefined) throw new Error(`no "## ${heading}" section`);
  const match = /^```[a-z]*\n([\s\S]*?)^```/m.exec(section);
  if (match === null) throw new Error(`no code block under "## ${heading}"`);
  return (match[1] ?? '').trimEnd();
}

function run(command: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...opts.env } });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('the README and CI', () => {
  it('CI runs the README test command exactly as printed, with no set-up of its own', async () => {
    const readme = await read('README.md');
    const command = blockUnder(readme, 'Test');
    expect(command).toBe('npm ci && npm test');
    const printed = run(join(ROOT, '.ci', 'run'), ['--print']);
    expect(printed.code).toBe(0);
    expect(printed.stdout.trimEnd()).toBe(command);
    // Whatever the tests need is installed by the command itself, so CI must not do it beforehand.
    const ci = await read('.ci/run');
    // It runs that very line, and nothing installs beforehand.
    expect(ci.trimEnd().split('\n').at(-1)).toBe(command);
    expect(ci).not.toMatch(/apt-get|dpkg|npm install/);
  });

  it('the README test command installs what the tests need first (npm runs pretest before test)', async () => {
    const pkg = JSON.parse(await read('package.json')) as { scripts: Record<string, string> };
    expect(pkg.scripts.pretest).toBe('node scripts/test-setup.mjs');
  });

  it('every relative link of the README and the docs leads to a file, and every #anchor to a heading', async () => {
    const docs = ['README.md', 'SECURITY.md', ...(await readdir(join(ROOT, 'docs'), { recursive: true })).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
    const broken: string[] = [];
    for (const doc of docs) {
      const text = await read(doc);
      for (const [, target = ''] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target) || !/^[\w./-]*(#[\w-]+)?$/.test(target)) continue;
        const [path = '', anchor] = target.split('#');
        const file = path === '' ? join(ROOT, doc) : resolve(ROOT, dirname(doc), path);
        if (!existsSync(file)) {
          broken.push(`${doc}: ${target}`);
          continue;
        }
        if (anchor !== undefined && file.endsWith('.md')) {
          const headings = [...(await readFile(file, 'utf8')).matchAll(/^#+ (.*)$/gm)].map(([, h = '']) =>
            h.toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-'),
          );
          if (!headings.includes(anchor)) broken.push(`${doc}: ${target} (no such heading)`);
        }
      }
    }
    expect(broken).toEqual([]);
  });

  it('the README stays short enough to read in two minutes', async () => {
    const lines = (await read('README.md')).split('\n').length;
    expect(lines).toBeLessThan(120);
  });
});

/** The flags a --help output defines: those that start a line (after indentation) or appear in a usage line. */
function helpFlags(help: string): Set<string> {
  const flags = new Set<string>();
  for (const line of help.split('\n')) {
    const usage = /^\s*(Usage:|cosid |cosictl )/.test(line);
    if (usage) for (const [flag] of line.matchAll(/--[a-z][a-z0-9-]*/g)) flags.add(flag);
    const defined = /^\s*(?:-[a-z], )?(--[a-z][a-z0-9-]*)/.exec(line);
    if (defined?.[1] !== undefined) flags.add(defined[1]);
  }
  return flags;
}

function docFlags(markdown: string): Set<string> {
  return new Set([...markdown.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map(([flag]) => flag));
}

describe('flags: --help and the docs agree', () => {
  // Each command's own --help too: cosictl's top-level help lists the commands and the global flags only.
  for (const [binary, doc, commands] of [
    ['dist/server/main.js', 'docs/cosid.md', [[]]],
    ['dist/server/fleet/main.js', 'docs/cosi-fleet.md', [[]]],
    ['dist/client/cli/main.js', 'docs/cosictl.md', [[], ['get'], ['containers'], ['logs'], ['wait'], ['apply-config'], ['patch'], ['edit'], ['gen', 'pki'], ['gen', 'cert']]],
  ] as const) {
    it(`${doc} documents every flag of ${binary} --help (and its commands'), and no other`, async () => {
      let text = '';
      for (const command of commands) {
        const help = run(process.execPath, [binary, ...command, '--help']);
        expect(help.code, `${binary} ${command.join(' ')} --help`).toBe(0);
        text += help.stdout;
      }
      const known = helpFlags(text);
      expect(known.size).toBeGreaterThan(5);
      const documented = docFlags(await read(doc));
      expect([...known].filter((flag) => !documented.has(flag)).sort()).toEqual([]);
      expect([...documented].filter((flag) => !known.has(flag)).sort()).toEqual([]);
    });
  }
});

// `<!-- example: examples/X.ts -->` then a code block: the file itself, which test/examples.test.ts runs.
// UPDATE_DOCS=1 npx vitest run test/docs.test.ts copies the files into the docs.
describe('the examples the docs show are the files the tests run', () => {
  const EXAMPLE = /<!-- example: (examples\/[\w.-]+) -->\n```ts\n([\s\S]*?)```\n/g;

  it('docs/client-library.md shows examples/read-and-watch.ts, containers-and-logs.ts and informer.ts word for word', async () => {
    const doc = 'docs/client-library.md';
    const text = await read(doc);
    const shown = [...text.matchAll(EXAMPLE)];
    expect(shown.map(([, file]) => file)).toEqual(['examples/read-and-watch.ts', 'examples/containers-and-logs.ts', 'examples/informer.ts']);
    if (process.env['UPDATE_DOCS'] === '1') {
      let updated = text;
      for (const [whole, file = ''] of shown) updated = updated.replace(whole, `<!-- example: ${file} -->\n\`\`\`ts\n${await read(file)}\`\`\`\n`);
      await writeFile(join(ROOT, doc), updated);
      return;
    }
    for (const [, file = '', code] of shown) expect(code, `${doc} shows ${file} as it is (UPDATE_DOCS=1 to copy it)`).toBe(await read(file));
  });

  it('every example imports the library by its package name, as a user would', async () => {
    for (const file of await readdir(join(ROOT, 'examples'))) {
      if (!file.endsWith('.ts')) continue;
      const code = await read(`examples/${file}`);
      expect(code, file).not.toMatch(/from '\.\.\//);
    }
  });
});

describe('docs/architecture.md', () => {
  it('names only files and folders that exist', async () => {
    const text = await read('docs/architecture.md');
    const tracked = run('git', ['ls-files', '--cached', '--others', '--exclude-standard']).stdout.split('\n').filter(Boolean);
    const paths = [...text.matchAll(/`([\w./-]+)`/g)].map(([, p = '']) => p).filter((p) => !p.startsWith('/') && /\/|\.(ts|mjs|md|yaml)$/.test(p));
    expect(paths.length).toBeGreaterThan(30);
    const missing = paths.filter((p) =>
      p.includes('/')
        ? !existsSync(join(ROOT, p))
        : !tracked.some((file) => file === p || file.endsWith(`/${p}`)),
    );
    expect(missing).toEqual([]);
  });
});

// The set-up step, on this machine (which has the packages, or the run would not have got here) and on a throwaway
// dpkg database that lacks one of them: what it would install and what it says, as root and as another user.
describe('scripts/test-setup.mjs: the fresh-machine path', () => {
  const hasDpkg = run('dpkg-query', ['--version']).code === 0;
  const PACKAGES = ['containerd', 'runc', 'busybox-static', 'umoci', 'etcd-server'];

  async function dpkgDatabase(installed: string[]): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'cosi-dpkg-'));
    temps.push(dir);
    await chmod(dir, 0o755); // readable by the user without root below
    const stanza = (name: string) => `Package: ${name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n`;
    await writeFile(join(dir, 'status'), installed.map(stanza).join('\n'));
    await writeFile(join(dir, 'available'), '');
    return dir;
  }
  const setup = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    run(process.execPath, ['scripts/test-setup.mjs', ...args], { env: { COSI_TEST_CRI: '', COSI_TEST_ETCD: '', ...env } });

  it.skipIf(!hasDpkg)('is quiet and changes nothing when every package is there', async () => {
    const result = setup(['--admindir', await dpkgDatabase(PACKAGES)]);
    expect(result).toMatchObject({ code: 0, stdout: '', stderr: '' });
  });

  it.skipIf(!hasDpkg || process.getuid?.() !== 0)('as root, installs exactly the missing package and says why', async () => {
    const result = setup(['--dry-run', '--admindir', await dpkgDatabase(PACKAGES.filter((p) => p !== 'umoci'))]);
    expect(result.code).toBe(0);
    expect(result.stderr).toContain('test setup: installing Debian packages: umoci\n');
    expect(result.stderr).toContain('umoci for the real containerd tests');
    expect(result.stderr).toContain('would run: apt-get update -qq\n');
    expect(result.stderr).toContain('would run: apt-get install -y -qq umoci\n');
    expect(result.stderr).toContain('`COSI_TEST_CRI=off npm test` skips those tests instead');
  });

  it.skipIf(!hasDpkg)('without root, names the packages, the install command and the escape hatches, and fails', async () => {
    const db = await dpkgDatabase(['containerd', 'runc', 'busybox-static']);
    // As a user without root: `nobody` when the run is root's, else the run's own user.
    const asUser = process.getuid?.() === 0 ? ['runuser', ['-u', 'nobody', '--', process.execPath]] as const : [process.execPath, []] as const;
    const result = run(asUser[0], [...asUser[1], 'scripts/test-setup.mjs', '--admindir', db], { env: { COSI_TEST_CRI: '', COSI_TEST_ETCD: '' } });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('test setup: missing Debian packages: umoci etcd-server\n');
    expect(result.stderr).toContain('sudo apt-get update && sudo apt-get install -y -qq umoci etcd-server');
    expect(result.stderr).toContain('or skip those tests:   COSI_TEST_CRI=off COSI_TEST_ETCD=off npm test');
    expect(result.stderr).not.toContain('running: apt-get');
  });

  it.skipIf(!hasDpkg)('leaves out the packages of the tests a switch turns off', async () => {
    const db = await dpkgDatabase(['containerd', 'runc', 'busybox-static', 'umoci']);
    expect(setup(['--dry-run', '--admindir', db], { COSI_TEST_ETCD: 'off' })).toMatchObject({ code: 0, stderr: '' });
    const etcdOnly = setup(['--dry-run', '--admindir', db], { COSI_TEST_CRI: 'off' });
    expect(etcdOnly.stderr).toContain('would run: apt-get install -y -qq etcd-server\n');
  });
});
