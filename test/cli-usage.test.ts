// cosictl's help, version and usage errors as a user meets them: the compiled binary, its exit code and output.
// Usage errors are exit code 2 with one line and a pointer to the command's help; help is the command's own.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, type CliRun } from './harness.js';


/** HOME and COSICONFIG point at no config: a usage error must be told before any config is read. */
function cosictl(args: readonly string[]): Promise<CliRun> {
  return runCli(args, { env: { HOME: '/nonexistent', COSICONFIG: '' } });
}

describe('cosictl --version', () => {
  it('prints cosictl and the version of package.json, exit code 0', async () => {
    const pkg = JSON.parse(readFileSync(join(process.cwd(), 'package.json'), 'utf8')) as { version: string };
    expect(await cosictl(['--version'])).toEqual({ code: 0, stdout: `cosictl ${pkg.version}\n`, stderr: '' });
  });
});

describe('cosictl help', () => {
  // Each command's help: its own usage line, and every flag it takes explained on a line of its own.
  it.each([
    [['get', '--help'], 'cosictl [global flags] get <type> [<id>]', ['--namespace NS', '-o, --output FMT', '--json-array', '-w, --watch']],
    [['get', '-h'], 'cosictl [global flags] get <type> [<id>]', ['--namespace NS']],
    [['help', 'get'], 'cosictl [global flags] get <type> [<id>]', ['--namespace NS']],
    [['containers', '--help'], 'cosictl [global flags] containers -k [-o wide]', ['-k, --kubernetes', '-o wide']],
    [['logs', '--help'], 'cosictl [global flags] logs -k <id> [-f] [--tail N]', ['-k, --kubernetes', '-f, --follow', '--tail N']],
    [['wait', '--help'], 'cosictl [global flags] wait <type> [<id>] --for', ['--for condition=Ready', '--for delete', "--for jsonpath='{.spec.phase}'=Running", '--timeout D', '--namespace NS']],
    [['gen', '--help'], 'cosictl gen pki --out DIR', ['pki ', 'cert ']],
    [['gen', 'pki', '--help'], 'cosictl gen pki --out DIR [--san HOST]... [--endpoint HOST:PORT] [--force]', ['--out DIR', '--san HOST', '--endpoint H:P', '--force', '-h, --help']],
    [['gen', 'cert', '--help'], 'cosictl gen cert --ca-dir DIR --name NAME', ['--ca-dir DIR', '--name NAME', '--roles ROLE,...', '--ttl D', '--out DIR', '--endpoint H:P', '--cosiconfig FILE']],
    [['help', 'gen', 'cert'], 'cosictl gen cert --ca-dir DIR --name NAME', ['--ca-dir DIR']],
  ] as const)('%j prints that command\'s help, exit code 0', async (args, usage, flags) => {
    const r = await cosictl(args);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^cosictl [a-z ]+: /);
    expect(r.stdout).toContain(`Usage:\n  ${usage}`);
    for (const flag of flags) expect(r.stdout).toMatch(new RegExp(`\\n  ${flag.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s+\\S`));
  });

  it('--help prints the global help, naming every command and the exit codes', async () => {
    const r = await cosictl(['--help']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    for (const command of ['get', 'containers', 'logs', 'wait', 'gen']) expect(r.stdout).toMatch(new RegExp(`\\n  ${command} +\\S`));
    expect(r.stdout).toContain('Exit codes: 0 success, 1 failure (the error is on stderr), 2 usage error.');
    expect(r.stdout).toContain("Run 'cosictl <command> --help'");
  });

  it('without a command, prints the global help on stderr, exit code 2', async () => {
    const r = await cosictl([]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('Usage:\n  cosictl [global flags] <command> [flags]');
  });
});

describe('cosictl usage errors', () => {
  it.each([
    [['get'], 'get needs a resource type, for example: cosictl get staticpods (list the types with: cosictl get rd)', 'get'],
    [['get', 'sp', '-o', 'xml'], 'unknown output format "xml": use table, yaml, json or jsonpath=EXPR', 'get'],
    [['get', 'sp', '--json-array'], '--json-array only applies to -o json', 'get'],
    [['get', 'sp', 'a', 'b'], 'get takes a type and at most one ID; unexpected "b"', 'get'],
    [['get', 'sp', '--bogus'], "Unknown option '--bogus'", 'get'],
    [['get', 'sp', '--tail', '3'], '--tail does not apply to get', 'get'],
    [['get', 'sp', '-o'], "Option '-o, --output <value>' argument missing", 'get'],
    [['gen'], 'gen needs what to generate: gen pki or gen cert', 'gen'],
    [['gen', 'keys'], 'unknown gen command "keys": use gen pki or gen cert', 'gen'],
    [['gen', 'pki'], 'gen pki needs --out DIR (the folder to write ca.crt, server.crt, admin.crt, ... and cosiconfig into)', 'gen pki'],
    [['gen', 'pki', '--out', '/nonexistent/pki', '--name', 'x'], '--name does not apply to gen pki', 'gen pki'],
    [['gen', 'pki', '--out', '/nonexistent/pki', 'extra'], 'gen pki takes no arguments; unexpected "extra"', 'gen pki'],
    [['gen', 'cert', '--name', 'ops'], 'gen cert needs --ca-dir DIR (the folder with ca.crt and ca.key)', 'gen cert'],
    [['gen', 'cert', '--ca-dir', '/nonexistent'], 'gen cert needs --name NAME (lower-case letters, digits and -): the certificate CN, file names and context name', 'gen cert'],
    [['gen', 'cert', '--ca-dir', '/nonexistent', '--name', 'ops', '--roles', 'root'], 'unknown role root: use os:admin, os:operator, os:reader, os:impersonator', 'gen cert'],
    [['gen', 'cert', '--ca-dir', '/nonexistent', '--name', 'ops', '--ttl', 'forever'], 'invalid --ttl "forever": use for example 30d, 12h or 90m', 'gen cert'],
    [['gen', 'cert', '--ca-dir', '/nonexistent', '--name', 'ops', '-n', 'a'], '-n does not apply to gen cert', 'gen cert'],
    [['logs'], 'logs needs an ID: cosictl logs -k <namespace>/<pod>:<container>[:<id>] (IDs as listed by cosictl containers -k), or cosictl logs kubelet', 'logs'],
    [['logs', 'kubelet', '--tail', 'x'], '--tail needs a number of lines from 0 to 2147483647, not "x" (leave it out for the whole log)', 'logs'],
    [['containers'], 'cosid serves the Kubernetes containers only: use cosictl containers -k (--kubernetes)', 'containers'],
    [['wait', 'sp'], 'wait needs a condition: --for create, --for delete, --for condition=NAME[=VALUE] or --for jsonpath=\'{.EXPR}\'=VALUE', 'wait'],
    [['frob'], 'unknown command "frob": the commands are get, apply-config, patch, edit, containers, logs, wait, gen', undefined],
    [['--bogus'], "Unknown option '--bogus'", undefined],
    [['help', 'frob'], 'no help for "frob": the commands are get, apply-config, patch, edit, containers, logs, wait, gen', undefined],
    [['get', '--version'], '--version does not apply to get', 'get'],
  ] as const)('%j: exit code 2, one line and the help to read', async (args, message, command) => {
    const r = await cosictl(args);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`error: ${message}\nrun 'cosictl ${command !== undefined ? `${command} ` : ''}--help' for usage\n`);
    expect(r.code).toBe(2);
  });

  it('a failure that is not a usage error is exit code 1 without the pointer to the help', async () => {
    const r = await cosictl(['get', 'sp']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: no client config at \/nonexistent\/\.cosi\/config: .*\n$/);
  });
});
