// cosictl containers -k: the Kubernetes pods' sandboxes and containers, straight from each node's container runtime,
// as talosctl prints them.
import { CosiError } from '../../shared/errors.js';
import type { ContainerInfo } from '../machine.js';
import type { NodeResult } from '../nodes.js';
import { openTargets, type TargetOptions } from './get.js';
import { alignRows } from './output.js';

export interface ContainersOptions extends TargetOptions {
  /** `-o wide`: a RESTARTS column after talosctl's. */
  wide: boolean;
}

/** The containerd namespace of Kubernetes' containers: what talosctl prints in the NAMESPACE column for -k. */
const K8S_NAMESPACE = 'k8s.io';

export async function runContainers(o: ContainersOptions): Promise<number> {
  const { targets, labelOf } = await openTargets(o);
  try {
    const results = await Promise.all(
      targets.map(async (t): Promise<NodeResult<readonly ContainerInfo[]>> => {
        try {
          return { node: t.node, value: await t.client.containers() };
        } catch (err) {
          return { node: t.node, error: err instanceof CosiError ? err : new CosiError('internal', err instanceof Error ? err.message : String(err)) };
        }
      }),
    );
    let failed = 0;
    const answered: { node: string; containers: readonly ContainerInfo[] }[] = [];
    for (const r of results) {
      if (r.error === undefined) {
        answered.push({ node: labelOf(r.node), containers: r.value });
        continue;
      }
      if (targets.length === 1) throw r.error;
      failed++;
      process.stderr.write(`error: node ${r.node}: ${r.error.message}\n`);
    }
    if (answered.length > 0) process.stdout.write(containersTable(answered, o.wide));
    return failed > 0 ? 1 : 0;
  } finally {
    for (const t of targets) t.client.close();
  }
}

/**
 * talosctl's table: `NODE NAMESPACE ID IMAGE PID STATUS`, a sandbox as `<ns>/<pod>` and each container below it as
 * `└─ <ns>/<pod>:<container>:<short id>`, in the server's order (each sandbox followed by its containers). The PID
 * is printed as a number, 0 for what is not running, as talosctl does. `wide` adds RESTARTS (blank for a sandbox).
 */
export function containersTable(nodes: readonly { node: string; containers: readonly ContainerInfo[] }[], wide = false): string {
  const rows = [['NODE', 'NAMESPACE', 'ID', 'IMAGE', 'PID', 'STATUS', ...(wide ? ['RESTARTS'] : [])]];
  for (const { node, containers } of nodes) {
    for (const c of containers) {
      const sandbox = c.id === c.podId;
      rows.push([node, K8S_NAMESPACE, sandbox ? c.id : `└─ ${c.id}`, c.image, String(c.pid), c.status, ...(wide ? [sandbox ? '' : String(c.restartCount)] : [])]);
    }
  }
  return alignRows(rows).map((l) => l + '\n').join('');
}
