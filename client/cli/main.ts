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

export const USAGE = `Usage:
  cosictl [global flags] get <type> [<id>] [--namespace NS] [-o table|yaml|json|jsonpath=EXPR] [--json-array] [-w]
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
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
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
    },
    allowPositionals: true,
    strict: true,
  });
  const [command, ...rest] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined && !values.help ? 2 : 0;
  }
  const list = (v: string[] | undefined) => (v ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter((s) => s !== '');
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
