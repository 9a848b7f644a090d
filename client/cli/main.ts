#!/usr/bin/env node
// cosictl: a talosctl-like command line for COSI resources.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { isCosiError } from '../../shared/errors.js';
import { parseDuration } from './duration.js';
import { installIPv6Check } from './ipv6-check.js';
import { hasHelp, helpFor, UsageError } from './usage.js';

installIPv6Check();

// `cosictl ... | head`: once the reader has gone, nothing more can be printed, and the command ends quietly with
// exit code 0 as Unix tools do (Node ignores SIGPIPE, so the closed pipe is an EPIPE error event on the stream,
// which would otherwise crash the process with a stack trace). Any other write error ends it with exit code 1.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  process.stderr.write(`error: writing the output: ${err.message}\n`);
  process.exit(1);
});
process.stderr.on('error', (err: NodeJS.ErrnoException) => process.exit(err.code === 'EPIPE' ? 0 : 1));

/** The flags each command takes, the global ones included; any other is refused rather than ignored. */
const GLOBAL_FLAGS = ['cosiconfig', 'context', 'endpoints', 'nodes', 'request-timeout', 'help'];
const COMMAND_FLAGS: Readonly<Record<string, readonly string[]>> = {
  get: [...GLOBAL_FLAGS, 'namespace', 'output', 'json-array', 'watch'],
  containers: [...GLOBAL_FLAGS, 'kubernetes', 'output'],
  logs: [...GLOBAL_FLAGS, 'kubernetes', 'follow', 'tail'],
  wait: [...GLOBAL_FLAGS, 'namespace', 'for', 'timeout'],
  'apply-config': [...GLOBAL_FLAGS, 'file', 'config-patch', 'mode', 'timeout', 'dry-run'],
  patch: [...GLOBAL_FLAGS, 'patch', 'patch-file', 'mode', 'timeout', 'dry-run'],
  edit: [...GLOBAL_FLAGS, 'mode', 'timeout', 'dry-run'],
  // gen talks to no node: only the flags it uses.
  'gen pki': ['help', 'out', 'san', 'endpoint', 'force'],
  'gen cert': ['help', 'cosiconfig', 'ca-dir', 'name', 'roles', 'ttl', 'out', 'endpoint'],
};

/** Refuses a flag the command would ignore (`containers -f`, `logs -o json`, `gen pki --name x`). */
function checkFlags(command: string, given: { name: string; rawName: string }[]): void {
  const allowed = COMMAND_FLAGS[command] ?? [];
  const foreign = given.find((g) => !allowed.includes(g.name));
  if (foreign !== undefined) throw new UsageError(`${foreign.rawName} does not apply to ${command}`, command);
}

/**
 * --request-timeout D, as kubectl's: the deadline of each call that produces an answer (a Go duration; 0: none).
 * Undefined when not given (the library's 30 s).
 */
function parseRequestTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseDuration(value);
  if (ms === undefined || ms < 0) throw new UsageError(`--request-timeout needs a duration such as 10s, 1m or 500ms (0: no deadline), not ${JSON.stringify(value)}`);
  return ms === 0 ? Infinity : ms;
}

/** --tail N: a line count for Talos's int32 tail_lines. */
function parseTail(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n <= 0x7fffffff)) throw new UsageError(`--tail needs a number of lines from 0 to 2147483647, not ${JSON.stringify(value)} (leave it out for the whole log)`, 'logs');
  return n;
}

const OPTIONS = {
  cosiconfig: { type: 'string' },
  context: { type: 'string' },
  endpoints: { type: 'string', short: 'e', multiple: true },
  nodes: { type: 'string', short: 'n', multiple: true },
  'request-timeout': { type: 'string' },
  namespace: { type: 'string' },
  output: { type: 'string', short: 'o', default: 'table' },
  'json-array': { type: 'boolean', default: false },
  watch: { type: 'boolean', short: 'w', default: false },
  out: { type: 'string' },
  san: { type: 'string', multiple: true },
  endpoint: { type: 'string' },
  force: { type: 'boolean', default: false },
  'ca-dir': { type: 'string' },
  name: { type: 'string' },
  roles: { type: 'string', multiple: true },
  ttl: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
  kubernetes: { type: 'boolean', short: 'k', default: false },
  follow: { type: 'boolean', short: 'f', default: false },
  tail: { type: 'string' },
  for: { type: 'string' },
  timeout: { type: 'string' },
  version: { type: 'boolean', default: false },
  mode: { type: 'string', short: 'm' },
  'dry-run': { type: 'boolean', default: false },
  patch: { type: 'string', short: 'p', multiple: true },
  'patch-file': { type: 'string' },
} as const;

/**
 * apply-config takes talosctl's -f FILE and -p PATCH (--config-patch): there -f is not logs' --follow. The option
 * table is the same shape for every command, so the values keep one type.
 */
const APPLY_OPTIONS = {
  ...OPTIONS,
  follow: { type: 'boolean', default: false },
  file: { type: 'string', short: 'f' },
  patch: { type: 'string', multiple: true },
  'config-patch': { type: 'string', short: 'p', multiple: true },
} as const;
const OTHER_OPTIONS = {
  ...OPTIONS,
  file: { type: 'string' },
  'config-patch': { type: 'string', multiple: true },
} as const;

/** The command named before any flag is known: flags that take a value are skipped with their value. */
function commandBefore(argv: readonly string[]): string | undefined {
  return parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: false }).positionals[0];
}

/** The names a command answers to: talosctl's `apply` for apply-config. */
const COMMAND_ALIASES: Readonly<Record<string, string>> = { apply: 'apply-config' };

/** The command the arguments name ("get", "gen pki"), read leniently: for the help an error points to. */
function commandOf(positionals: readonly string[]): string | undefined {
  const [given, sub] = positionals;
  const command = given !== undefined ? (COMMAND_ALIASES[given] ?? given) : undefined;
  if (command === 'gen' && (sub === 'pki' || sub === 'cert')) return `gen ${sub}`;
  return command !== undefined && hasHelp(command) ? command : undefined;
}

/** The package's version, read when asked (get must start fast). */
function version(): string {
  const pkg: unknown = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'));
  const v = typeof pkg === 'object' && pkg !== null && 'version' in pkg ? pkg.version : undefined;
  return typeof v === 'string' ? v : 'unknown';
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parse(argv);
  } catch (err) {
    if (!(err instanceof Error && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS'))) throw err;
    // Unknown flag, missing value: point to the help of the command it was given to.
    const loose = parseArgs({ args: argv, options: optionsFor(argv), allowPositionals: true, strict: false });
    // Node's words for an unknown flag go on to explain '--'; the first sentence says it.
    const message = err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? (/^Unknown option '[^']*'/.exec(err.message)?.[0] ?? err.message) : err.message;
    throw new UsageError(message, commandOf(loose.positionals));
  }
  const { values, positionals, tokens } = parsed;
  const [named, ...rest] = positionals;
  const command = named !== undefined ? (COMMAND_ALIASES[named] ?? named) : undefined;
  const given = tokens.flatMap((t) => (t.kind === 'option' ? [{ name: t.name, rawName: t.rawName }] : []));
  if (command === undefined) {
    if (values.help) {
      process.stdout.write(helpFor(undefined));
      return 0;
    }
    if (values.version) {
      process.stdout.write(`cosictl ${version()}\n`);
      return 0;
    }
    // No command: the help, as a usage error.
    process.stderr.write(helpFor(undefined));
    return 2;
  }
  if (command === 'help') {
    // cosictl help [<command> [<subcommand>]]
    const about = rest.length === 0 ? undefined : commandOf(rest);
    if (rest.length > 0 && (about === undefined || about.split(' ').length < rest.length)) throw new UsageError(`no help for ${JSON.stringify(rest.join(' '))}: the commands are get, apply-config, patch, edit, containers, logs, wait, gen`);
    process.stdout.write(helpFor(about));
    return 0;
  }
  const key = commandOf(positionals);
  if (key === undefined) throw new UsageError(`unknown command ${JSON.stringify(command)}: the commands are get, apply-config, patch, edit, containers, logs, wait, gen`);
  if (values.help) {
    process.stdout.write(helpFor(key));
    return 0;
  }
  if (key === 'gen') throw new UsageError(rest.length === 0 ? 'gen needs what to generate: gen pki or gen cert' : `unknown gen command ${JSON.stringify(rest[0])}: use gen pki or gen cert`, 'gen');
  checkFlags(key, given);
  try {
    return await run(command, rest, values);
  } catch (err) {
    // A usage error of a command's own code points to that command's help.
    throw err instanceof UsageError && err.command === undefined ? new UsageError(err.message, key) : err;
  }
}

function optionsFor(argv: readonly string[]): typeof OTHER_OPTIONS | typeof APPLY_OPTIONS {
  const command = commandBefore(argv);
  return command === 'apply-config' || command === 'apply' ? APPLY_OPTIONS : OTHER_OPTIONS;
}

/**
 * A patch given inline may start with a dash (an RFC 6902 patch as a YAML list: "- op: add ..."), which parseArgs
 * would take for a flag: the value after -p/--patch/--config-patch is joined to it (--patch=VALUE) first.
 */
function withPatchValues(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    const next = argv[i + 1];
    if (arg === '--') return [...out, ...argv.slice(i)];
    const long = arg === '-p' ? (commandBefore(argv) === 'apply-config' || commandBefore(argv) === 'apply' ? 'config-patch' : 'patch') : arg === '--patch' || arg === '--config-patch' ? arg.slice(2) : undefined;
    if (long !== undefined && next !== undefined) {
      out.push(`--${long}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

function parse(argv: string[]) {
  const args = withPatchValues(argv);
  return parseArgs({ args, options: optionsFor(args), allowPositionals: true, strict: true, tokens: true });
}
type Values = ReturnType<typeof parse>['values'];

async function run(command: string, rest: string[], values: Values): Promise<number> {
  const list = (v: string[] | undefined) => (v ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter((s) => s !== '');
  const targetOptions = {
    cosiconfig: values.cosiconfig,
    context: values.context,
    endpoints: list(values.endpoints),
    nodes: list(values.nodes),
    requestTimeoutMs: parseRequestTimeout(values['request-timeout']),
  };
  switch (command) {
    case 'get':
      // Each command's code (and the packages it needs: grpc-js, protobufjs...) loads when it runs: --help and
      // --version start as fast as Node does.
      return (await import('./get.js')).runGet({
        ...targetOptions,
        args: rest,
        namespace: values.namespace,
        output: values.output,
        jsonArray: values['json-array'],
        watch: values.watch,
      });
    case 'containers': {
      if (!values.kubernetes) throw new UsageError('cosid serves the Kubernetes containers only: use cosictl containers -k (--kubernetes)');
      if (rest.length > 0) throw new UsageError(`containers takes no arguments; unexpected ${JSON.stringify(rest.join(' '))}`);
      if (values.output !== 'table' && values.output !== 'wide') throw new UsageError(`containers prints a table: -o wide adds RESTARTS; -o ${JSON.stringify(values.output)} is not supported`);
      return (await import('./containers.js')).runContainers({ ...targetOptions, wide: values.output === 'wide' });
    }
    case 'logs': {
      const [id, ...extra] = rest;
      const containerIdHelp = 'cosictl logs -k <namespace>/<pod>:<container>[:<id>] (IDs as listed by cosictl containers -k)';
      if (id === undefined) throw new UsageError(`logs needs an ID: ${containerIdHelp}, or cosictl logs kubelet`);
      if (extra.length > 0) throw new UsageError(`logs takes one ID; unexpected ${JSON.stringify(extra.join(' '))}`);
      if (!values.kubernetes && id !== 'kubelet') {
        throw new UsageError(`without -k the only log is the kubelet's (cosictl logs kubelet), not ${JSON.stringify(id)}; for a container's log use -k: ${containerIdHelp}`);
      }
      if (values.kubernetes && id === 'kubelet') throw new UsageError("with -k the ID is a container's; the kubelet's log is cosictl logs kubelet (without -k)");
      return (await import('./logs.js')).runLogs({ ...targetOptions, id, follow: values.follow, tail: parseTail(values.tail) });
    }
    case 'wait': {
      const [type, id, ...extra] = rest;
      if (type === undefined) throw new UsageError("wait needs a resource type, for example: cosictl wait staticpodstatus --for condition=Ready");
      if (extra.length > 0) throw new UsageError(`wait takes a type and at most one ID; unexpected ${JSON.stringify(extra.join(' '))}`);
      const wait = await import('./wait.js');
      let condition;
      let timeoutMs;
      try {
        condition = wait.parseWaitFor(values.for);
        timeoutMs = wait.parseWaitTimeout(values.timeout);
      } catch (err) {
        throw err instanceof wait.WaitArgumentError ? new UsageError(err.message) : err;
      }
      if (condition.kind === 'create' && id === undefined) throw new UsageError('--for create waits for one resource: name it, for example: cosictl wait staticpodstatus default/web-node-1 --for create');
      return wait.runWait({ ...targetOptions, type, id, namespace: values.namespace, condition, timeoutMs });
    }
    case 'apply-config':
    case 'patch':
    case 'edit': {
      const apply = await import('./apply-config.js');
      const flags = { mode: apply.parseMode(values.mode), dryRun: values['dry-run'], tryTimeoutMs: apply.parseTryTimeout(values.timeout) };
      if (command === 'apply-config') {
        if (rest.length > 0) throw new UsageError(`apply-config takes no arguments; unexpected ${JSON.stringify(rest.join(' '))} (the config is -f FILE)`);
        return apply.runApplyConfig({ ...targetOptions, ...flags, file: values.file, patches: values['config-patch'] ?? [] });
      }
      if (command === 'patch') {
        const patches = [...(values.patch ?? []), ...(values['patch-file'] !== undefined ? [`@${values['patch-file']}`] : [])];
        return (await import('./patch.js')).runPatch({ ...targetOptions, ...flags, args: rest, patches });
      }
      return (await import('./edit.js')).runEdit({ ...targetOptions, ...flags, args: rest });
    }
    case 'gen':
      // X.509 generation is heavy: loaded by gen alone.
      return (await import('./gen.js')).runGen({
        args: rest,
        out: values.out,
        sans: list(values.san),
        endpoint: values.endpoint,
        force: values.force,
        caDir: values['ca-dir'],
        name: values.name,
        roles: list(values.roles),
        ttl: values.ttl,
        cosiconfig: values.cosiconfig,
      });
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

/**
 * Ends the process with `code` once what it printed is written out. The process does not wait for its event loop
 * to empty: a connection can outlive its client (grpc-js 1.14 keeps a TCP connection whose TLS handshake never
 * finishes open after the channel is closed, until the peer closes it), and a command must end with its answer or
 * its error whatever the server does.
 */
function exitWith(code: number): void {
  process.exitCode = code;
  let pending = 2;
  const flushed = () => {
    if (--pending === 0) process.exit(code);
  };
  // A write's callback runs once it and every write before it are handled (or the stream has failed).
  process.stdout.write('', flushed);
  process.stderr.write('', flushed);
}

main(process.argv.slice(2)).then(exitWith, (err: unknown) => {
  const msg = isCosiError(err) || err instanceof Error ? err.message : String(err);
  if (err instanceof UsageError) {
    // One line, and where to read how the command is used.
    process.stderr.write(`error: ${msg.split('\n')[0] ?? msg}\nrun 'cosictl ${err.command !== undefined ? `${err.command} ` : ''}--help' for usage\n`);
    exitWith(2);
    return;
  }
  process.stderr.write(`error: ${msg}\n`);
  exitWith(1);
});
