// cosictl get: one resource, a list, or a watch, from one or more nodes.
import type { Subscription } from 'rxjs';
import { connectContext } from '../client.js';
import { defaultCosiConfigPath, loadCosiConfig, selectContext } from '../cosiconfig.js';
import { getNodes, listNodes, watchNodes, type NodeResult, type NodeTarget } from '../nodes.js';
import type { CosiClient } from '../client.js';
import type { CosiResource, WatchEventType } from '../resource.js';
import { FLEET_NAMESPACE, FLEET_NODE_TYPE, fleetNameOf, FleetNodeStates, nodeStateWarning } from './fleet-view.js';
import { createPrinter, parseOutputFormat, type Printer, type Row } from './output.js';
import { UsageError } from './usage.js';

export interface GetOptions extends TargetOptions {
  args: string[];
  namespace: string | undefined;
  output: string;
  jsonArray: boolean;
  watch: boolean;
}

export async function runGet(o: GetOptions): Promise<number> {
  const [typeName, id, ...extra] = o.args;
  if (typeName === undefined) throw new UsageError('get needs a resource type, for example: cosictl get staticpods (list the types with: cosictl get rd)');
  if (extra.length > 0) throw new UsageError(`get takes a type and at most one ID; unexpected ${JSON.stringify(extra.join(' '))}`);
  let format;
  try {
    format = parseOutputFormat(o.output, o.jsonArray);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  if (o.jsonArray && format.kind !== 'json') throw new UsageError('--json-array only applies to -o json');

  const { targets, labelOf } = await openTargets(o);
  const view = new FleetAware(targets, labelOf);

  try {
    const def = await resolveOnAny(targets, typeName);
    const namespace = o.namespace ?? def.defaultNamespace;
    const printer = createPrinter(format, def, o.watch, (s) => process.stdout.write(s), { stale: () => view.staleColumn() });
    if (o.watch) return await watch(targets, def.type, namespace, id, printer, view, format.kind === 'table');
    const results: NodeResult<CosiResource[]>[] =
      id !== undefined
        ? (await getNodes(targets, def.type, id, { namespace })).map((r) => (r.error === undefined ? { node: r.node, value: [r.value] } : r))
        : await listNodes(targets, def.type, { namespace });
    let failed = 0;
    for (const r of results) {
      view.warnNodeState(r.node);
      if (r.error !== undefined) {
        if (targets.length === 1) throw r.error;
        failed++;
        process.stderr.write(`error: node ${r.node}: ${r.error.message}\n`);
        continue;
      }
      for (const resource of r.value) printer.add(view.row(r.node, resource));
    }
    if (format.kind === 'table') await view.listStates();
    printer.flush();
    printer.close();
    return failed > 0 ? 1 : 0;
  } finally {
    if (!o.watch) for (const t of targets) t.client.close();
  }
}

/**
 * What a fleet endpoint changes in get's output (docs/design/fleet.md §5). Through the fleet view (the server sent
 * `cosi-fleet`), a row's NODE is its node label and its ID drops `<node>/`; the table adds STALE from the fleet's
 * FleetNodes. Through a fleet to a named node, a node the fleet does not follow live gets one warning.
 */
class FleetAware {
  private readonly byNode: Map<string, NodeTarget>;
  private readonly warned = new Set<string>();
  /** The FleetNodes, once asked for (a List, or a Watch kept current). */
  private states: FleetNodeStates | undefined;
  /** The Watch of FleetNodes alongside get -w: its subscription, and whether it has bootstrapped or given up. */
  private statesWatch: Subscription | undefined;
  private statesSettled = false;

  constructor(
    targets: readonly NodeTarget[],
    private readonly labelOf: (node: string) => string,
  ) {
    this.byNode = new Map(targets.map((t) => [t.node, t]));
  }

  /** The fleet view's client, when this target is one (its answers carried `cosi-fleet`). */
  private fleetOf(node: string): CosiClient | undefined {
    const client = this.byNode.get(node)?.client;
    return client?.fleet !== undefined ? client : undefined;
  }

  row(node: string, resource: CosiResource, event?: WatchEventType): Row {
    const at = event !== undefined ? { event } : {};
    if (this.fleetOf(node) === undefined) return { node: this.labelOf(node), resource, ...at };
    const named = fleetNameOf(resource);
    return { node: named.node, id: named.id, resource, ...at };
  }

  /** Once per node: the fleet answered for it without following it live (response header `cosi-fleet-node-state`). */
  warnNodeState(node: string): void {
    const state = this.byNode.get(node)?.client.fleetNodeState;
    if (state === undefined || this.warned.has(node)) return;
    this.warned.add(node);
    process.stderr.write(nodeStateWarning(this.labelOf(node), state));
  }

  /** The STALE cell of each row, when there is a STALE column: through the fleet view, once its FleetNodes are read. */
  staleColumn(): ((row: Row) => string) | undefined {
    const states = this.states;
    return states === undefined ? undefined : (row) => (row.node === '' ? '' : states.staleOf(row.node));
  }

  /** get: one List of FleetNodes, when some answer came from the fleet view. A failure costs the column only. */
  async listStates(): Promise<void> {
    const client = this.fleetClient();
    if (client === undefined) return;
    try {
      const states = new FleetNodeStates();
      for (const r of await client.list(FLEET_NODE_TYPE, { namespace: FLEET_NAMESPACE })) states.set(r);
      this.states = states;
    } catch (err) {
      warnNoStates(err);
    }
  }

  /**
   * get -w: a Watch of FleetNodes, started once the fleet view has answered, so rows printed later show the state of
   * their moment. `ready` is called when it has bootstrapped or has failed (then rows go on without STALE).
   */
  watchStates(ready: () => void): void {
    const client = this.fleetClient();
    if (client === undefined || this.statesWatch !== undefined) return;
    const states = new FleetNodeStates();
    const settle = () => {
      if (this.statesSettled) return;
      this.statesSettled = true;
      ready();
    };
    this.statesWatch = client.watch(FLEET_NODE_TYPE, { namespace: FLEET_NAMESPACE, bootstrap: true }).subscribe({
      next: (e) => {
        if (e.type === 'bootstrapped') {
          this.states = states;
          return settle();
        }
        if (e.resource === undefined) return;
        if (e.type === 'destroyed') states.delete(e.resource);
        else if (e.type === 'created' || e.type === 'updated') states.set(e.resource);
      },
      error: (err: unknown) => {
        // Rows already printed with STALE keep the column, with the states last seen.
        warnNoStates(err);
        settle();
      },
    });
  }

  /** Whether rows must wait for the FleetNodes (their watch is open and has not bootstrapped). */
  get statesPending(): boolean {
    return this.statesWatch !== undefined && !this.statesSettled;
  }

  close(): void {
    this.statesWatch?.unsubscribe();
  }

  private fleetClient(): CosiClient | undefined {
    for (const node of this.byNode.keys()) {
      const client = this.fleetOf(node);
      if (client !== undefined) return client;
    }
    return undefined;
  }
}

function warnNoStates(err: unknown): void {
  process.stderr.write(`warning: cannot read the fleet's FleetNodes (${err instanceof Error ? err.message : String(err)}); rows shown without STALE\n`);
}

/** Where to connect: the global flags every command that talks to cosid shares. */
export interface TargetOptions {
  cosiconfig: string | undefined;
  context: string | undefined;
  endpoints: string[];
  nodes: string[];
  /**
   * --request-timeout: the deadline of each call that produces an answer (the client's defaultTimeoutMs; watches
   * and logs have none). Undefined: the library's 30 s; Infinity: none.
   */
  requestTimeoutMs?: number | undefined;
}

/**
 * The nodes to ask, each with its client, and the name printed for each (the NODE column). As talosctl: the first
 * endpoint (-e, else the context's) is dialled, once; each node named with -n (else the context's nodes) is asked
 * through it (gRPC metadata `node`, which the endpoint routes), one call per node. Without nodes the endpoint itself
 * answers, and the NODE column shows the name it reports. The caller closes every target's client.
 */
export async function openTargets(o: TargetOptions): Promise<{ targets: NodeTarget[]; labelOf: (node: string) => string }> {
  const configPath = o.cosiconfig ?? defaultCosiConfigPath();
  const ctx = selectContext(await loadCosiConfig(configPath), o.context);
  const endpoints = o.endpoints.length > 0 ? o.endpoints : ctx.endpoints;
  const nodes = o.nodes.length > 0 ? o.nodes : ctx.nodes;
  const named = nodes.length > 0;
  const twice = nodes.find((n, i) => nodes.indexOf(n) !== i);
  if (twice !== undefined) throw new UsageError(o.nodes.length > 0 ? `-n names ${twice} twice` : `context ${JSON.stringify(ctx.name)} in ${configPath} names the node ${twice} twice`);
  const endpoint = endpoints[0];
  if (endpoint === undefined) throw new Error(`context ${JSON.stringify(ctx.name)} in ${configPath} has no endpoints; pass -e HOST:PORT`);
  const options = o.requestTimeoutMs !== undefined ? { defaultTimeoutMs: o.requestTimeoutMs } : {};
  let targets: NodeTarget[];
  if (!named) {
    targets = [{ node: endpoint, client: connectContext(ctx, endpoint, options) }];
  } else {
    // One connection: the first node's client owns it (closing it ends the others' calls too), the rest share it.
    const [first, ...rest] = nodes as [string, ...string[]];
    const owner = connectContext(ctx, endpoint, { ...options, node: first });
    targets = [{ node: first, client: owner }, ...rest.map((n) => ({ node: n, client: owner.withNode(n) }))];
  }
  const label = (t: NodeTarget) => (named ? t.node : (t.client.node ?? hostOf(t.node)));
  const byNode = new Map(targets.map((t) => [t.node, t]));
  const labelOf = (node: string) => {
    const t = byNode.get(node);
    return t === undefined ? node : label(t);
  };
  return { targets, labelOf };
}

/** Resolves the type through the first node that answers. */
async function resolveOnAny(targets: NodeTarget[], typeName: string) {
  let last: unknown;
  for (const t of targets) {
    try {
      return await t.client.resolveType(typeName);
    } catch (err) {
      last = err;
      // "not registered" and "ambiguous" are answers, not outages.
      if (err instanceof Error && 'kind' in err && (err.kind === 'not-registered' || err.kind === 'ambiguous')) throw err;
      if (targets.length > 1) process.stderr.write(`error: node ${t.node}: ${err instanceof Error ? err.message : String(err)}\n`);
    }
  }
  throw last;
}

function watch(targets: NodeTarget[], type: string, namespace: string, id: string | undefined, printer: Printer, view: FleetAware, table: boolean): Promise<number> {
  return new Promise((resolve) => {
    // Rows are held until every node has answered (bootstrapped, or for one resource its first event) or has been
    // reported as not answering, and the fleet's FleetNodes with them: the header then knows its columns.
    const pending = new Set(targets.map((t) => t.node));
    const tryFlush = () => {
      if (pending.size === 0 && !view.statesPending) printer.flush();
    };
    const settle = (node: string) => {
      if (pending.delete(node)) tryFlush();
    };
    // The fleet view has answered: its FleetNodes are watched alongside, for the STALE column.
    const fleetAnswered = () => {
      if (table) view.watchStates(tryFlush);
    };
    fleetAnswered();
    const everStreamed = new Set<string>();
    let failures = 0;
    let sub: Subscription | undefined;
    const finish = (code: number) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      sub?.unsubscribe();
      view.close();
      printer.close();
      for (const t of targets) t.client.close();
      resolve(code);
    };
    // Ctrl-C ends a watch cleanly.
    const onSignal = () => finish(0);
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    sub = watchNodes(targets, type, { namespace, ...(id !== undefined ? { id } : { bootstrap: true }) }).subscribe({
      next: (m) => {
        if (m.kind === 'failed') {
          failures++;
          process.stderr.write(`error: node ${m.node}: ${m.error.message}\n`);
          settle(m.node);
          return;
        }
        if (m.kind === 'state') {
          if (m.state === 'reconnecting') {
            process.stderr.write(`node ${m.node}: connection lost (${m.detail ?? 'unknown reason'}); retrying\n`);
            settle(m.node);
          } else if (m.state === 'resyncing') {
            process.stderr.write(`node ${m.node}: the server cannot resume this watch (${m.detail ?? ''}); listing again\n`);
          } else if (m.state === 'streaming') {
            if (everStreamed.has(m.node)) process.stderr.write(`node ${m.node}: watching again\n`);
            everStreamed.add(m.node);
            view.warnNodeState(m.node);
            fleetAnswered();
            // One resource: the watch is open, the header can go (its row follows).
            if (id !== undefined) settle(m.node);
          }
          return;
        }
        const event = m.event;
        view.warnNodeState(m.node);
        fleetAnswered();
        if (event.type === 'bootstrapped') return settle(m.node);
        if (event.type === 'noop' || event.type === 'errored') return;
        // A single-resource watch starts with the resource, or with a placeholder "destroyed" event when it is missing.
        if (id !== undefined) settle(m.node);
        if (event.resource === undefined || event.resource.metadata.version === 0) return;
        printer.add(view.row(m.node, event.resource as CosiResource, event.type));
      },
      complete: () => finish(failures > 0 ? 1 : 0),
    });
  });
}

function hostOf(endpoint: string): string {
  const m = /^\[([^\]]+)\](?::\d+)?$/.exec(endpoint) ?? /^([^:]+)(?::\d+)?$/.exec(endpoint);
  return m?.[1] ?? endpoint;
}
