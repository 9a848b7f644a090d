// What one fenced etcd transaction of the fleet's writer carries (docs/design/fleet.md §4), decided without etcd.
// Nodes are taken in the order given (the writer's round-robin), each with a prefix of its queue: per node one
// compare `create_revision(<P>owners/<node>) == token`, its ops, and one put of `<P>bm/<node>/<type>` per type whose
// ops carried a bookmark (the last one). etcd checks the compares, the success ops and the failure ops against
// --max-txn-ops (128 in etcd 3.4) each, and refuses a transaction that writes one key twice.
import type { ICompare, IRequestOp, ITxnRequest } from 'etcd3';
import { encodeBookmarkValue } from './bookmark-value.js';
import type { NodeOp } from './contracts.js';
import type { FleetKeys } from './keys.js';

export interface TxnLimits {
  /** Success ops of the transaction, bookmark puts included. */
  readonly maxOps: number;
  /** Nodes, so compares and failure-branch reads. */
  readonly maxCompares: number;
  /** Queued ops of one node (its bookmark puts not counted): one busy node does not fill a transaction alone. */
  readonly perNodeOps: number;
  /** Keys and values, roughly; a transaction's first op is taken whatever its size (it would wait forever). */
  readonly maxBytes: number;
}

/** Below etcd's 128 per list and its 1.5 MiB per request, with room for the request's own framing. */
export const TXN_LIMITS: TxnLimits = Object.freeze({ maxOps: 120, maxCompares: 64, perNodeOps: 16, maxBytes: 512 * 1024 });

/** A node with ops waiting, and the fence token they are written under. */
export interface NodeQueue {
  readonly node: string;
  readonly token: string;
  readonly ops: readonly NodeOp[];
}

export interface BookmarkPut {
  readonly key: string;
  readonly value: string;
}

export interface PlannedNode {
  readonly node: string;
  readonly token: string;
  readonly ownerKey: string;
  /** The head of the node's queue this transaction commits. */
  readonly ops: readonly NodeOp[];
  /** One per type the ops brought to a new bookmark, the last one's. */
  readonly bookmarks: readonly BookmarkPut[];
}

export interface TxnPlan {
  readonly nodes: readonly PlannedNode[];
  /** The success branch's length: ops plus bookmark puts. */
  readonly successOps: number;
  readonly bytes: number;
}

/** What etcd spends per operation beyond its key and value, roughly (the estimate only has to stay on the safe side). */
const OP_OVERHEAD = 16;

const byteLength = (s: string | null): number => (s === null ? 0 : Buffer.byteLength(s));

/**
 * Takes nodes in `queues`' order while they fit. A node's prefix ends before a key the transaction already writes,
 * at perNodeOps, or where a limit is reached. Planning stops at the first node that gets nothing because the
 * transaction is full, so that it leads the next plan: a writer that moves served nodes to the back serves all.
 */
export function planTxn(queues: readonly NodeQueue[], limits: TxnLimits, keys: FleetKeys): TxnPlan {
  const nodes: PlannedNode[] = [];
  const written = new Set<string>();
  let successOps = 0;
  let bytes = 0;
  for (const q of queues) {
    if (nodes.length >= limits.maxCompares) break;
    const ownerKey = keys.owner(q.node);
    // The compare, and the failure branch's read of the same key.
    const compareBytes = 2 * (Buffer.byteLength(ownerKey) + OP_OVERHEAD) + q.token.length;
    const bookmarks = new Map<string, BookmarkPut>();
    let nodeBytes = compareBytes;
    let nodeOps = 0;
    let take = 0;
    let full = false;
    for (; take < q.ops.length && take < limits.perNodeOps; take++) {
      const op = q.ops[take] as NodeOp;
      if (written.has(op.key)) break;
      let addOps = 1;
      let addBytes = Buffer.byteLength(op.key) + byteLength(op.value) + OP_OVERHEAD;
      let put: BookmarkPut | undefined;
      if (op.bookmark !== undefined) {
        const key = keys.bookmark(q.node, op.bookmark.type);
        put = { key, value: encodeBookmarkValue(q.token, op.bookmark.value) };
        const before = bookmarks.get(key);
        if (before === undefined) {
          addOps++;
          addBytes += Buffer.byteLength(key) + put.value.length + OP_OVERHEAD;
        } else {
          addBytes += put.value.length - before.value.length;
        }
      }
      const first = nodes.length === 0 && take === 0;
      if (successOps + nodeOps + addOps > limits.maxOps || (!first && bytes + nodeBytes + addBytes > limits.maxBytes)) {
        full = true;
        break;
      }
      written.add(op.key);
      if (put !== undefined) bookmarks.set(put.key, put);
      nodeOps += addOps;
      nodeBytes += addBytes;
    }
    if (take > 0) {
      nodes.push({ node: q.node, token: q.token, ownerKey, ops: q.ops.slice(0, take), bookmarks: [...bookmarks.values()] });
      successOps += nodeOps;
      bytes += nodeBytes;
    }
    if (full) break;
  }
  return { nodes, successOps, bytes };
}

function ownerCompare(n: PlannedNode): ICompare {
  return { key: Buffer.from(n.ownerKey), result: 'Equal', target: 'Create', create_revision: n.token };
}

/** The failure branch: each owner key as it is (keys only: its create_revision says whether the token still holds). */
function ownerReads(plan: TxnPlan): IRequestOp[] {
  return plan.nodes.map((n) => ({ request_range: { key: Buffer.from(n.ownerKey), keys_only: true } }));
}

/** The transaction that commits `plan`: all of it if every node is still ours, nothing otherwise. */
export function commitRequest(plan: TxnPlan): ITxnRequest {
  const success: IRequestOp[] = [];
  for (const n of plan.nodes) {
    for (const op of n.ops) {
      success.push(op.value === null ? { request_delete_range: { key: Buffer.from(op.key) } } : { request_put: { key: Buffer.from(op.key), value: Buffer.from(op.value) } });
    }
    for (const b of n.bookmarks) success.push({ request_put: { key: Buffer.from(b.key), value: Buffer.from(b.value) } });
  }
  return { compare: plan.nodes.map(ownerCompare), success, failure: ownerReads(plan) };
}

/**
 * After a commit whose answer was lost: the same compares, and a read of every key the commit writes, so the writer
 * learns whether it went through without writing again (a second put of the same value would be a second event for
 * every fleet watcher). Its success branch is as long as the commit's.
 */
export function checkRequest(plan: TxnPlan): ITxnRequest {
  const success: IRequestOp[] = [];
  for (const n of plan.nodes) {
    for (const op of n.ops) success.push({ request_range: { key: Buffer.from(op.key) } });
    for (const b of n.bookmarks) success.push({ request_range: { key: Buffer.from(b.key) } });
  }
  return { compare: plan.nodes.map(ownerCompare), success, failure: ownerReads(plan) };
}
