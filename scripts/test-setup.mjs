#!/usr/bin/env node
// `npm test`'s first step (the `pretest` script): makes sure the Debian packages the real-runtime and etcd tests use
// are installed, so that the README's test command is all the set-up a fresh machine needs. As root it installs what
// is missing with apt-get, saying what and why; without root it names the packages, the command that installs them
// and the switches that skip those tests instead, and fails. Quiet when nothing is missing.
//
//   node scripts/test-setup.mjs [--dry-run] [--admindir DIR]
//     --dry-run       print what would be installed and the commands, change nothing
//     --admindir DIR  read installed packages from this dpkg database instead of the system's (tests use a
//                     throwaway one)
//
// COSI_TEST_CRI=off and COSI_TEST_ETCD=off leave out the packages of the tests they skip.
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

/** Which tests need which packages (test/cri/global-setup.ts and test/etcd/global-setup.ts check for them). */
const PACKAGE_GROUPS = [
  {
    packages: ['containerd', 'runc', 'busybox-static', 'umoci'],
    neededBy: 'the real containerd tests (test/cri/)',
    skip: 'COSI_TEST_CRI=off',
  },
  { packages: ['etcd-server'], neededBy: 'the real etcd tests (test/etcd/)', skip: 'COSI_TEST_ETCD=off' },
];

function prefix(line) {
  return `test setup: ${line}`;
}

/** The packages of `names` that dpkg does not list as installed (all of them when there is no dpkg). */
function missingPackages(names, admindir) {
  const args = [...(admindir ? [`--admindir=${admindir}`] : []), '-W', '-f=${Package} ${db:Status-Status}\\n', ...names];
  const result = spawnSync('dpkg-query', args, { encoding: 'utf8' });
  if (result.error) return { missing: names, noDpkg: true };
  // 1 means some are not installed; 2 is dpkg-query's own failure (an unreadable database, say).
  if (result.status !== 0 && result.status !== 1) throw new Error(`dpkg-query failed: ${result.stderr.trim()}`);
  const installed = new Set(
    result.stdout
      .split('\n')
      .map((line) => line.trim().split(' '))
      .filter(([, status]) => status === 'installed')
      .map(([name]) => name),
  );
  return { missing: names.filter((name) => !installed.has(name)), noDpkg: false };
}

function main() {
  const { values } = parseArgs({
    options: { 'dry-run': { type: 'boolean', default: false }, admindir: { type: 'string' } },
    strict: true,
  });
  const groups = PACKAGE_GROUPS.filter((group) => process.env[group.skip.split('=')[0]] !== 'off');
  if (groups.length === 0) return 0;
  const wanted = groups.flatMap((group) => group.packages);
  const { missing, noDpkg } = missingPackages(wanted, values.admindir);
  if (missing.length === 0) return 0;

  const short = groups.filter((group) => group.packages.some((name) => missing.includes(name)));
  const why = short.map((group) => `${group.packages.filter((name) => missing.includes(name)).join(' ')} for ${group.neededBy}`);
  const skips = short.map((group) => group.skip).join(' ');
  const install = ['apt-get', 'install', '-y', '-qq', ...missing];
  if (noDpkg) {
    process.stderr.write(
      [
        prefix('this is not a Debian-like system (no dpkg-query); the tests need:'),
        ...why.map((line) => `  ${line}`),
        `  install their equivalents, or skip those tests: ${skips} npm test`,
        '',
      ].join('\n'),
    );
    return 1;
  }
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot) {
    process.stderr.write(
      [
        prefix(`missing Debian packages: ${missing.join(' ')}`),
        ...why.map((line) => `  ${line}`),
        `  install them as root:  sudo apt-get update && sudo ${install.join(' ')}`,
        `  or skip those tests:   ${skips} npm test`,
        '',
      ].join('\n'),
    );
    return 1;
  }
  process.stderr.write(
    [
      prefix(`installing Debian packages: ${missing.join(' ')}`),
      ...why.map((line) => `  ${line}`),
      `  (\`${skips} npm test\` skips those tests instead)`,
      '',
    ].join('\n'),
  );
  const commands = [['apt-get', 'update', '-qq'], install];
  for (const command of commands) {
    process.stderr.write(prefix(`${values['dry-run'] ? 'would run' : 'running'}: ${command.join(' ')}\n`));
    if (values['dry-run']) continue;
    const result = spawnSync(command[0], command.slice(1), {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    if (result.status !== 0) {
      process.stderr.write(prefix(`${command.join(' ')} failed (${result.error?.message ?? `exit code ${result.status}`})\n`));
      return 1;
    }
  }
  if (values['dry-run']) return 0;
  const { missing: still } = missingPackages(wanted, values.admindir);
  if (still.length > 0) {
    process.stderr.write(prefix(`still missing after apt-get: ${still.join(' ')}\n`));
    return 1;
  }
  process.stderr.write(prefix(`installed ${missing.join(' ')}\n`));
  return 0;
}

try {
  process.exitCode = main();
} catch (err) {
  process.stderr.write(prefix(`${err instanceof Error ? err.message : String(err)}\n`));
  process.exitCode = 1;
}
