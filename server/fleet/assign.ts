// Which replica should own a node: rendezvous (highest random weight) hashing over the live replicas. Every
// replica computes the same answer from the same replica set and node list, so nothing elects an assigner and
// nothing writes an assignment; a replica that comes or goes moves only the nodes it wins or held (about 1/k of
// them), and a replica that restarts under the same name wins back the same nodes. docs/design/fleet.md §3.
import { createHash } from 'node:crypto';

/** The weight of `replica` for `node`: the first 8 bytes of sha256(replica "\0" node), as an unsigned 64-bit number. */
export function rendezvousWeight(replica: string, node: string): bigint {
  return createHash('sha256').update(replica).update('\0').update(node).digest().readBigUInt64BE(0);
}

/**
 * The replica that wins `node`: the highest weight; equal weights go to the smaller name, so the answer does not
 * depend on the list's order. Undefined when there is no replica.
 */
export function rendezvousOwner(node: string, replicas: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestWeight = -1n;
  for (const r of replicas) {
    const w = rendezvousWeight(r, node);
    if (w > bestWeight || (w === bestWeight && best !== undefined && r < best)) {
      best = r;
      bestWeight = w;
    }
  }
  return best;
}

/** The nodes `self` should own among `nodes` while `replicas` are live (none when `self` is not among them). */
export function desiredNodes(self: string, nodes: Iterable<string>, replicas: readonly string[]): Set<string> {
  const desired = new Set<string>();
  if (!replicas.includes(self)) return desired;
  for (const n of nodes) if (rendezvousOwner(n, replicas) === self) desired.add(n);
  return desired;
}
