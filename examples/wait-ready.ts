// An example service that embeds the client library: it waits until every static pod on a list of nodes is Ready,
// printing a line each time a node's count changes, then exits 0 (1 on timeout or failure, 2 on a usage error).
//
//   npm run build && node dist/examples/wait-ready.js --cosiconfig .state/pki/cosiconfig -n 127.0.0.1 --timeout 5m
//
// How a StaticPod and its status relate: a StaticPod holds the Pod cosid serves to the kubelet (ID
// `<namespace>-<name>`, or a KubeStaticPodConfig's name: the ID is not the pod's name, so the Pod itself is read);
// the kubelet runs it as the mirror pod `<name>-<node name>`, and cosid's poller stores that pod's status as the
// StaticPodStatus `<namespace>/<name>-<node name>`. The node name is the kubelet's, which cosid is started with and
// reports on every answer (`client.node`). A pod is ready when its status has the Ready condition True and is not
// stale (a stale status is the last one seen while the kubelet cannot be read: it proves nothing now). An invalid
// StaticPod is never served to the kubelet, so it never becomes ready: it is shown as invalid, and the wait goes on
// in case the machine config is fixed.
import { parseArgs } from 'node:util';
import { connectContext, createInformer, defaultCosiConfigPath, isCosiError, loadCosiConfig, selectContext, type CosiResource, type Informer, type Json, type NodeTarget } from 'cosi-pods';

const USAGE = `Usage: wait-ready [--cosiconfig FILE] [--context NAME] [-n NODE,...] [--timeout 5m]
  Waits until every static pod on every node is Ready. Nodes default to the context's nodes, else its endpoint;
  a node named without a port is dialled at the port of the context's endpoint.
  Exit code 0: all ready; 1: timed out (or a node refused us); 2: usage.
`;

const STATIC_POD = 'StaticPods.kubernetes.talos.dev';
const STATIC_POD_STATUS = 'StaticPodStatuses.kubernetes.talos.dev';
const INVALID_LABEL = 'cosi-pods.dev/invalid';

class UsageError extends Error {}


type JsonObject = { [key: string]: Json };
const asObject = (v: Json | undefined): JsonObject => (v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) ? v : {});

/** "5m", "90s", "1h30m", "500ms" in milliseconds. */
function parseDuration(value: string): number {
  const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  if (!/^(\d+(ms|s|m|h))+$/.test(value)) throw new UsageError(`--timeout ${JSON.stringify(value)}: use a duration such as 90s, 5m or 1h30m`);
  let ms = 0;
  for (const m of value.matchAll(/(\d+)(ms|s|m|h)/g)) ms += Number(m[1]) * (units[m[2] ?? ''] ?? 0);
  return ms;
}

/**
 * Where a node is dialled: as named when it names a port, else at the port of the context's first endpoint (a
 * cosid on another port than 50000), as cosictl -n does.
 */
function nodeAddress(node: string, endpoints: readonly string[]): string {
  const withPort = [/^\[[^\]]+\]:(\d+)$/, /^[^:]+:(\d+)$/];
  if (withPort.some((re) => re.test(node))) return node;
  const port = withPort.map((re) => re.exec(endpoints[0] ?? '')?.[1]).find((p) => p !== undefined);
  if (port === undefined) return node;
  return node.includes(':') && !node.startsWith('[') ? `[${node}]:${port}` : `${node}:${port}`;
}

/** What one node has to show: its StaticPods, each with the status ID it should have and whether it is ready. */
interface PodReadiness {
  /** The StaticPodStatus ID (or the StaticPod's ID when it cannot have one). */
  name: string;
  ready: boolean;
  /** Why it cannot be ready yet, beyond "not Ready". */
  note?: string;
}

function readiness(pods: Informer, statuses: Informer, node: string, kubeletNode: string): PodReadiness[] {
  return pods.list(node).map(({ resource: sp }) => {
    const pod = asObject(sp.spec);
    const md = asObject(pod['metadata']);
    const name = typeof md['name'] === 'string' ? md['name'] : '';
    const namespace = typeof md['namespace'] === 'string' && md['namespace'] !== '' ? md['namespace'] : 'default';
    if (sp.metadata.labels[INVALID_LABEL] === 'true' || name === '') return { name: sp.metadata.id, ready: false, note: 'invalid: not served to the kubelet' };
    const id = `${namespace}/${name}-${kubeletNode}`;
    const status = statuses.get(id, node);
    if (status === undefined) return { name: id, ready: false, note: 'no status yet' };
    if (status.metadata.labels['cosi-pods.dev/stale'] === 'true') return { name: id, ready: false, note: 'stale: the kubelet cannot be read' };
    return { name: id, ready: condition(status, 'Ready') === 'True' };
  });
}

function condition(status: CosiResource, type: string): string | undefined {
  const conditions = asObject(status.spec)['conditions'];
  const found = Array.isArray(conditions) ? conditions.map(asObject).find((c) => c['type'] === type) : undefined;
  return typeof found?.['status'] === 'string' ? found['status'] : undefined;
}

function summary(node: string, pods: PodReadiness[]): string {
  const waiting = pods.filter((p) => !p.ready).map((p) => (p.note !== undefined ? `${p.name} (${p.note})` : p.name));
  const shown = waiting.length > 5 ? [...waiting.slice(0, 5), `and ${waiting.length - 5} more`] : waiting;
  return `${node}: ${pods.length - waiting.length}/${pods.length} ready${waiting.length > 0 ? ` (waiting for ${shown.join(', ')})` : ''}`;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      cosiconfig: { type: 'string' },
      context: { type: 'string' },
      nodes: { type: 'string', short: 'n', multiple: true },
      timeout: { type: 'string', default: '5m' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected ${JSON.stringify(positionals.join(' '))}`);
  const timeoutMs = parseDuration(values.timeout);
  const ctx = selectContext(await loadCosiConfig(values.cosiconfig ?? defaultCosiConfigPath()), values.context);
  const given = (values.nodes ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter((s) => s !== '');
  const nodes = given.length > 0 ? given : ctx.nodes.length > 0 ? ctx.nodes : ctx.endpoints.slice(0, 1);
  if (nodes.length === 0) throw new UsageError(`context ${JSON.stringify(ctx.name)} has no nodes or endpoints: pass -n`);

  // One connection per node, dialled at its own address (cosid has no proxy), as cosictl -n does: a node named
  // without a port is dialled at the port of the context's endpoint.
  const addressOf = new Map(nodes.map((node) => [node, nodeAddress(node, ctx.endpoints)]));
  const targets: NodeTarget[] = nodes.map((node) => ({ node, client: connectContext(ctx, addressOf.get(node)) }));
  const clientOf = new Map(targets.map((t) => [t.node, t.client]));
  return new Promise<number>((resolve) => {
    const lines = new Map<string, string>();
    const told = new Map<string, string>();
    let finished = false;
    const finish = (code: number, message?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (message !== undefined) (code === 0 ? process.stdout : process.stderr).write(message);
      void Promise.all([pods.stop(), statuses.stop()]).then(() => {
        for (const t of targets) t.client.close();
        resolve(code);
      });
    };
    /** Recomputes a node's line once both of its lists are in; prints it when it changed; ends when all are ready. */
    const update = (node: string) => {
      if (finished || !pods.hasSynced(node) || !statuses.hasSynced(node)) return;
      // cosid reports its node name (the kubelet's) on every answer; another server may not: then the -n host.
      const kubeletNode = clientOf.get(node)?.node ?? node.replace(/:\d+$/, '');
      const line = summary(node, readiness(pods, statuses, node, kubeletNode));
      if (lines.get(node) !== line) process.stdout.write(`${line}\n`);
      lines.set(node, line);
      const all = [...lines.values()];
      if (all.length === nodes.length && all.every((l) => !l.includes('(waiting for'))) {
        const count = nodes.reduce((n, t) => n + pods.list(t).length, 0);
        finish(0, `all ${count} static pod${count === 1 ? '' : 's'} ready on ${nodes.length} node${nodes.length === 1 ? '' : 's'}\n`);
      }
    };
    const handlers = {
      synced: ({ node }: { node: string }) => update(node),
      added: ({ node }: { node: string }) => update(node),
      updated: ({ node }: { node: string }) => update(node),
      deleted: ({ node }: { node: string }) => update(node),
      state: ({ node, state, detail }: { node: string; state: string; detail?: string }) => {
        // Once per reason, not once per retry; the wait goes on (a node may be starting) until the timeout.
        if (state === 'reconnecting' && told.get(node) !== detail) {
          process.stderr.write(`${node}: not answering at ${addressOf.get(node) ?? node} (${detail ?? 'unknown reason'}); retrying until the timeout (${values.timeout})\n`);
        }
        if (state === 'reconnecting') told.set(node, detail ?? '');
        if (state === 'streaming') told.delete(node);
      },
      error: ({ node, error }: { node: string; error: Error }) => {
        process.stderr.write(`error: ${node}: ${error.message}\n`);
        finish(1);
      },
    };
    const pods = createInformer(targets, STATIC_POD, { handlers });
    const statuses = createInformer(targets, STATIC_POD_STATUS, { handlers });
    const timer = setTimeout(() => {
      const pending = nodes.map((n) => lines.get(n) ?? `${n}: not listed yet${told.has(n) ? ` (not answering at ${addressOf.get(n) ?? n}: ${told.get(n) ?? ''})` : ''}`).filter((l) => !/: (\d+)\/\1 ready$/.test(l));
      finish(1, `error: timed out after ${values.timeout}:\n${pending.map((l) => `  ${l}\n`).join('')}`);
    }, timeoutMs);
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const usage = err instanceof UsageError || (err instanceof Error && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS'));
    process.stderr.write(`error: ${isCosiError(err) || err instanceof Error ? err.message : String(err)}\n${usage ? USAGE : ''}`);
    process.exitCode = usage ? 2 : 1;
  },
);
