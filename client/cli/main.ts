#!/usr/bin/env node
// cosictl: a talosctl-like command line for COSI resources.
import { parseArgs } from 'node:util';
import { isCosiError } from '../../shared/errors.js';
import { runGet } from './get.js';

// grpc-js passes the endpoint as TLS SNI even when it is an IP address, and Node warns (DEP0123) on every dial:
// noise for a CLI user. Other warnings still show.
process.removeAllListeners('warning');
process.on('warning', (w: Error & { code?: string }) => {
  if (w.code !== 'DEP0123') process.stderr.write(`${w.name}: ${w.message}\n`);
});

// `cosictl ... | head`: once the reader has gone, nothing more can be printed, and the command ends quietly with
// exit code 0 as Unix tools do (Node ignores SIGPIPE, so the closed pipe is an EPIPE error event on the stream,
// which would otherwise crash the process with a stack trace). Any other write error ends it with exit code 1.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  process.stderr.write(`error: writing the output: ${err.message}\n`);
  process.exit(1);
});
process.stderr.on('error', (err: NodeJS.ErrnoException) => process.exit(err.code === 'EPIPE' ? 0 : 1));

export const USAGE = `Usage:
  cosictl [global flags] get <type> [<id>] [--namespace NS] [-o table|yaml|json|jsonpath=EXPR] [--json-array] [-w]
  cosictl [global flags] containers -k [-o wide]
  cosictl [global flags] logs -k <id> [-f] [--tail N]
  cosictl [global flags] logs kubelet [-f] [--tail N]
  cosictl [global flags] wait <type> [<id>] --for condition=NAME[=VALUE]|delete|jsonpath='{EXPR}'[=VALUE]
        [--timeout 30s] [--namespace NS]
  cosictl gen pki --out DIR [--san HOST]... [--endpoint HOST:PORT] [--force]
  cosictl gen cert --ca-dir DIR --name NAME [--roles os:reader,...] [--ttl 365d] [--out DIR] [--endpoint HOST:PORT]
        issues a client certificate from an existing CA and adds it as context NAME to the client config

Global flags:
  --cosiconfig FILE   client config (default: $COSICONFIG, else ~/.cosi/config)
  --context NAME      context of the client config to use (default: its current context)
  -e, --endpoints A,B endpoints to dial (default: the context's endpoints)
  -n, --nodes A,B     nodes to ask (default: the context's nodes, else the endpoint); fills the NODE column

get:
  <type>              a type name or any alias, case-insensitive ("staticpods", "sp", "rd", ...)
  --namespace NS      namespace (default: the type's default namespace)
  -o, --output FMT    table (default), yaml, json or jsonpath=EXPR (kubectl syntax, e.g. '{.spec.metadata.name}')
  --json-array        with -o json: print one JSON array instead of a sequence of objects
  -w, --watch         print the current resources, then every change ('+' created, '-' destroyed)

containers:
  -k, --kubernetes    the Kubernetes pods' sandboxes and containers from the node's container runtime (required:
                      cosid serves no other containers); each container is listed under its sandbox
  -o wide             add a RESTARTS column

logs:
  -k, --kubernetes    <id> is a container ID as containers -k lists it (<namespace>/<pod>:<container>:<id>), or
                      <namespace>/<pod>:<container> for its latest instance; without -k the only ID is kubelet
  -f, --follow        keep printing new lines until Ctrl-C
  --tail N            start N lines from the end (default: the whole log)

wait:
  <type> [<id>]       the resource, or without <id> every resource of the type that exists once each node has
                      listed them; on every node (-n). Prints "<type>/<id> condition met" for each as it meets it
  --for condition=Ready       its spec's condition (.conditions, else .status.conditions) has status True
                              (condition=Ready=False for another value; names and values case-insensitive)
  --for delete                until it is gone (at once if it does not exist)
  --for jsonpath='{.spec.phase}'=Running   the JSONPath (on what get -o jsonpath sees) gives VALUE
  --timeout D         give up after D (30s, 2m, 1h; default 30s; 0: check once; negative: a week): exit code 1,
                      naming what is not met
`;

/** The flags containers, logs and wait take, the global ones included; any other is refused rather than ignored. */
const GLOBAL_FLAGS = ['cosiconfig', 'context', 'endpoints', 'nodes', 'help'];
const COMMAND_FLAGS: Record<string, string[]> = {
  containers: [...GLOBAL_FLAGS, 'kubernetes', 'output'],
  logs: [...GLOBAL_FLAGS, 'kubernetes', 'follow', 'tail'],
  wait: [...GLOBAL_FLAGS, 'namespace', 'for', 'timeout'],
};

/** Refuses a flag the command would ignore (`containers -f`, `logs -o json`). */
function checkFlags(command: string, given: { name: string; rawName: string }[]): void {
  const allowed = COMMAND_FLAGS[command] ?? [];
  const foreign = given.find((g) => !allowed.includes(g.name));
  if (foreign !== undefined) throw new UsageError(`${foreign.rawName} does not apply to ${command}`);
}

/** --tail N: a line count for Talos's int32 tail_lines. */
function parseTail(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n <= 0x7fffffff)) throw new UsageError(`--tail needs a number of lines from 0 to 2147483647, not ${JSON.stringify(value)} (leave it out for the whole log)`);
  return n;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    options: {
      cosiconfig: { type: 'string' },
      context: { type: 'string' },
      endpoints: { type: 'string', short: 'e', multiple: true },
      nodes: { type: 'string', short: 'n', multiple: true },
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
    },
    allowPositionals: true,
    strict: true,
    tokens: true,
  });
  const [command, ...rest] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined && !values.help ? 2 : 0;
  }
  const list = (v: string[] | undefined) => (v ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter((s) => s !== '');
  const targetOptions = { cosiconfig: values.cosiconfig, context: values.context, endpoints: list(values.endpoints), nodes: list(values.nodes) };
  const given = tokens.flatMap((t) => (t.kind === 'option' ? [{ name: t.name, rawName: t.rawName }] : []));
  switch (command) {
    case 'get':
      return runGet({
        args: rest,
        cosiconfig: values.cosiconfig,
        context: values.context,
        endpoints: list(values.endpoints),
        nodes: list(values.nodes),
        namespace: values.namespace,
        output: values.output,
        jsonArray: values['json-array'],
        watch: values.watch,
      });
    case 'containers': {
      checkFlags(command, given);
      if (!values.kubernetes) throw new UsageError('cosid serves the Kubernetes containers only: use cosictl containers -k (--kubernetes)');
      if (rest.length > 0) throw new UsageError(`containers takes no arguments; unexpected ${JSON.stringify(rest.join(' '))}`);
      if (values.output !== 'table' && values.output !== 'wide') throw new UsageError(`containers prints a table: -o wide adds RESTARTS; -o ${JSON.stringify(values.output)} is not supported`);
      return (await import('./containers.js')).runContainers({ ...targetOptions, wide: values.output === 'wide' });
    }
    case 'logs': {
      checkFlags(command, given);
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
      checkFlags(command, given);
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
      return wait.runWait({ ...targetOptions, type, id, namespace: values.namespace, condition, timeoutMs });
    }
    case 'gen':
      // Loaded only when needed: X.509 generation is heavy and `get` must start fast.
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

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const usage = err instanceof UsageError || (err instanceof Error && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS'));
    const msg = isCosiError(err) || err instanceof Error ? err.message : String(err);
    process.stderr.write(`error: ${msg}\n${usage ? "run 'cosictl --help' for usage\n" : ''}`);
    process.exitCode = usage ? 2 : 1;
  },
);
