// cosictl get: one resource, a list, or a watch, from one or more nodes.
import { merge, type Subscription } from 'rxjs';
import { map } from 'rxjs/operators';
import { CosiError } from '../../shared/errors.js';
import { connectContext, type CosiClient } from '../client.js';
import { defaultCosiConfigPath, loadCosiConfig, selectContext } from '../cosiconfig.js';
import type { WatchEvent } from '../resource.js';
import { createPrinter, parseOutputFormat, type Printer } from './output.js';

export interface GetOptions {
  args: string[];
  cosiconfig: string | undefined;
  context: string | undefined;
  endpoints: string[];
  nodes: string[];
  namespace: string | undefined;
  output: string;
  jsonArray: boolean;
  watch: boolean;
}

interface Target {
  client: CosiClient;
  /** The NODE column: the name the user gave, else what the server reports, else the endpoint host. */
  label: () => string;
}

export async function runGet(o: GetOptions): Promise<number> {
  const [typeName, id, ...extra] = o.args;
  if (typeName === undefined) throw new Error('get needs a resource type, for example: cosictl get staticpods (list the types with: cosictl get rd)');
  if (extra.length > 0) throw new Error(`get takes a type and at most one ID; unexpected ${JSON.stringify(extra.join(' '))}`);
  const format = parseOutputFormat(o.output, o.jsonArray);
  if (o.jsonArray && format.kind !== 'json') throw new Error('--json-array only applies to -o json');

  const configPath = o.cosiconfig ?? defaultCosiConfigPath();
  const ctx = selectContext(await loadCosiConfig(configPath), o.context);
  const endpoints = o.endpoints.length > 0 ? o.endpoints : ctx.endpoints;
  const nodes = o.nodes.length > 0 ? o.nodes : ctx.nodes;
  // cosid has no proxy: a named node is dialled at its own address.
  const targets: Target[] =
    nodes.length > 0
      ? nodes.map((n) => ({ client: connectContext(ctx, n), label: () => n }))
      : endpoints.slice(0, 1).map((e) => {
          const client = connectContext(ctx, e);
          return { client, label: () => client.node ?? hostOf(e) };
        });
  const first = targets[0];
  if (first === undefined) throw new Error(`context ${JSON.stringify(ctx.name)} in ${configPath} has no endpoints; pass -e HOST:PORT`);

  try {
    const def = await first.client.resolveType(typeName);
    const namespace = o.namespace ?? def.defaultNamespace;
    const printer = createPrinter(format, def, o.watch, (s) => process.stdout.write(s));
    if (o.watch) return await watch(targets, def.type, namespace, id, printer);
    let failed = 0;
    for (const t of targets) {
      try {
        const items = id !== undefined ? [await t.client.get(def.type, id, { namespace })] : await t.client.list(def.type, { namespace });
        for (const resource of items) printer.add({ node: t.label(), resource });
      } catch (err) {
        if (targets.length === 1) throw err;
        failed++;
        process.stderr.write(`error: ${t.label()}: ${err instanceof Error ? err.message : String(err)}\n`);
      }
    }
    printer.flush();
    printer.close();
    return failed > 0 ? 1 : 0;
  } finally {
    if (!o.watch) for (const t of targets) t.client.close();
  }
}

function watch(targets: Target[], type: string, namespace: string, id: string | undefined, printer: Printer): Promise<number> {
  return new Promise((resolve) => {
    let pendingBootstrap = id === undefined ? targets.length : 0;
    if (pendingBootstrap === 0) printer.flush();
    let sub: Subscription | undefined;
    const finish = (code: number) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      sub?.unsubscribe();
      printer.close();
      for (const t of targets) t.client.close();
      resolve(code);
    };
    // Ctrl-C ends a watch cleanly.
    const onSignal = () => finish(0);
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const streams = targets.map((t) =>
      t.client.watch(type, { namespace, ...(id !== undefined ? { id } : { bootstrap: true }) }).pipe(map((event: WatchEvent) => ({ t, event }))),
    );
    sub = merge(...streams).subscribe({
      next: ({ t, event }) => {
        switch (event.type) {
          case 'bootstrapped':
            if (--pendingBootstrap === 0) printer.flush();
            return;
          case 'errored':
            process.stderr.write(`error: ${t.label()}: ${event.error ?? 'watch failed'}\n`);
            return;
          case 'noop':
            return;
          default:
            // A single-resource watch of a missing resource starts with a placeholder "destroyed" event.
            if (event.resource === undefined || event.resource.metadata.version === 0) return;
            printer.add({ node: t.label(), event: event.type, resource: event.resource });
        }
      },
      error: (err: unknown) => {
        process.stderr.write(`error: ${err instanceof CosiError || err instanceof Error ? err.message : String(err)}\n`);
        finish(1);
      },
      complete: () => finish(0),
    });
  });
}

function hostOf(endpoint: string): string {
  const m = /^\[([^\]]+)\](?::\d+)?$/.exec(endpoint) ?? /^([^:]+)(?::\d+)?$/.exec(endpoint);
  return m?.[1] ?? endpoint;
}
