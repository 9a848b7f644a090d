// planTxn (server/fleet/txn-plan.ts), the fleet writer's choice of what one fenced transaction carries, without
// etcd: whatever the queues, every list of the transaction stays within the limits (etcd 3.4 refuses more than 128
// operations per list and a key written twice), each node's part is a prefix of its queue with its last bookmark
// per type, and a writer that moves served nodes to the back serves every node.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeBookmarkValue, encodeBookmarkValue } from '../server/fleet/bookmark-value.js';
import type { NodeOp } from '../server/fleet/contracts.js';
import { FleetKeys } from '../server/fleet/keys.js';
import { commitRequest, planTxn, TXN_LIMITS, type NodeQueue, type TxnLimits, type TxnPlan } from '../server/fleet/txn-plan.js';

const keys = new FleetKeys('/f/');
const TYPES = ['StaticPods.k8s', 'StaticPodStatuses.k8s', 'MachineConfigStatuses.config'];

/** A node's queue: keys from a small set, so that some repeat; some values large, so that bytes count. */
const queueOf = (node: string, token: string): fc.Arbitrary<NodeQueue> =>
  fc
    .array(
      fc.record({
        k: fc.nat(5),
        value: fc.oneof({ weight: 1, arbitrary: fc.constant(null) }, { weight: 4, arbitrary: fc.string({ maxLength: 40 }) }, { weight: 1, arbitrary: fc.nat(60_000).map((n) => 'x'.repeat(n)) }),
        bookmark: fc.option(fc.record({ type: fc.constantFrom(...TYPES), value: fc.uint8Array({ maxLength: 24 }) }), { nil: undefined }),
      }),
      { maxLength: 40 },
    )
    .map((ops) => ({
      node,
      token,
      ops: ops.map((o): NodeOp => ({ key: `/f/r/k8s/${TYPES[o.k % 3]}/${node}/id${o.k}`, value: o.value, ...(o.bookmark !== undefined ? { bookmark: o.bookmark } : {}) })),
    }));

const queuesArb = fc.integer({ min: 1, max: 120 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => queueOf(`node${i}`, String(100 + i)))));

const limitsArb: fc.Arbitrary<TxnLimits> = fc.oneof(
  fc.constant(TXN_LIMITS),
  fc.record({ maxOps: fc.integer({ min: 2, max: 120 }), maxCompares: fc.integer({ min: 1, max: 64 }), perNodeOps: fc.integer({ min: 1, max: 16 }), maxBytes: fc.integer({ min: 100, max: 512 * 1024 }) }),
);

function bytesOf(plan: TxnPlan): number {
  const req = commitRequest(plan);
  let n = 0;
  for (const op of req.success ?? []) n += (op.request_put?.key?.length ?? op.request_delete_range?.key?.length ?? 0) + (op.request_put?.value?.length ?? 0);
  return n;
}

describe('planTxn', () => {
  it('keeps every list of the transaction within the limits, and below etcd 3.4 refusing more than 128', () => {
    fc.assert(
      fc.property(queuesArb, limitsArb, (queues, limits) => {
        const plan = planTxn(queues, limits, keys);
        const req = commitRequest(plan);
        expect(req.compare?.length).toBe(plan.nodes.length);
        expect(req.failure?.length).toBe(plan.nodes.length);
        expect(req.success?.length).toBe(plan.successOps);
        expect(plan.successOps).toBeLessThanOrEqual(Math.min(limits.maxOps, 128));
        expect(plan.nodes.length).toBeLessThanOrEqual(Math.min(limits.maxCompares, 128));
        for (const n of plan.nodes) expect(n.ops.length).toBeLessThanOrEqual(limits.perNodeOps);
        // The estimate is on the safe side of what is sent, and over the limit only for one op alone.
        expect(plan.bytes).toBeGreaterThanOrEqual(bytesOf(plan));
        const ops = plan.nodes.reduce((s, n) => s + n.ops.length, 0);
        if (ops > 1) expect(plan.bytes).toBeLessThanOrEqual(limits.maxBytes);
      }),
      { numRuns: 300 },
    );
  });

  it("takes a prefix of each node's queue, nodes in the given order, with no key written twice", () => {
    fc.assert(
      fc.property(queuesArb, limitsArb, (queues, limits) => {
        const plan = planTxn(queues, limits, keys);
        let from = 0;
        const seen = new Set<string>();
        for (const n of plan.nodes) {
          const at = queues.findIndex((q, i) => i >= from && q.node === n.node);
          expect(at).toBeGreaterThanOrEqual(from);
          from = at + 1;
          const q = queues[at] as NodeQueue;
          expect(n.ops.length).toBeGreaterThan(0);
          n.ops.forEach((op, i) => expect(op).toBe(q.ops[i]));
          expect(n.ownerKey).toBe(keys.owner(n.node));
          expect(n.token).toBe(q.token);
          for (const op of n.ops) {
            expect(seen.has(op.key)).toBe(false);
            seen.add(op.key);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it("puts each touched type's last bookmark, under the node's token, once", () => {
    fc.assert(
      fc.property(queuesArb, limitsArb, (queues, limits) => {
        for (const n of planTxn(queues, limits, keys).nodes) {
          const last = new Map<string, Uint8Array>();
          for (const op of n.ops) if (op.bookmark !== undefined) last.set(op.bookmark.type, op.bookmark.value);
          expect(n.bookmarks.map((b) => b.key).sort()).toEqual([...last.keys()].map((t) => keys.bookmark(n.node, t)).sort());
          for (const [type, value] of last) {
            const put = n.bookmarks.find((b) => b.key === keys.bookmark(n.node, type));
            expect(decodeBookmarkValue(put?.value ?? '')).toEqual({ token: n.token, bookmark: new Uint8Array(value) });
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('serves the first node always, and skips no node for lack of room (it leads the next plan)', () => {
    fc.assert(
      fc.property(queuesArb, limitsArb, (queues, limits) => {
        const plan = planTxn(queues, limits, keys);
        const nonEmpty = queues.filter((q) => q.ops.length > 0);
        if (nonEmpty.length > 0) expect(plan.nodes[0]?.node).toBe(nonEmpty[0]?.node);
        // Between two taken nodes, only empty queues; a node ends early only at a repeated key or perNodeOps.
        const taken = plan.nodes.map((n) => queues.findIndex((q) => q.node === n.node));
        for (let i = 1; i < taken.length; i++) {
          for (let j = (taken[i - 1] as number) + 1; j < (taken[i] as number); j++) expect(queues[j]?.ops.length).toBe(0);
          const prev = plan.nodes[i - 1];
          const q = queues[taken[i - 1] as number] as NodeQueue;
          if (prev !== undefined && prev.ops.length < q.ops.length && prev.ops.length < limits.perNodeOps) {
            const next = q.ops[prev.ops.length] as NodeOp;
            expect(prev.ops.some((op) => op.key === next.key)).toBe(true);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('drains every queue in order when served nodes go to the back (round-robin)', () => {
    fc.assert(
      fc.property(queuesArb, limitsArb, (initial, limits) => {
        let order = initial.map((q) => ({ ...q, ops: [...q.ops] }));
        const committed = new Map<string, NodeOp[]>();
        const total = initial.reduce((s, q) => s + q.ops.length, 0);
        let rounds = 0;
        for (order = order.filter((q) => q.ops.length > 0); order.length > 0; rounds++) {
          expect(rounds).toBeLessThan(total);
          const plan = planTxn(order, limits, keys);
          const served = new Set(plan.nodes.map((n) => n.node));
          for (const n of plan.nodes) {
            const q = order.find((x) => x.node === n.node) as NodeQueue & { ops: NodeOp[] };
            committed.set(n.node, [...(committed.get(n.node) ?? []), ...q.ops.splice(0, n.ops.length)]);
          }
          order = [...order.filter((q) => !served.has(q.node)), ...order.filter((q) => served.has(q.node))].filter((q) => q.ops.length > 0);
        }
        for (const q of initial) expect(committed.get(q.node) ?? []).toEqual(q.ops);
      }),
      { numRuns: 100 },
    );
  });
});

describe('stored bookmark value', () => {
  it('decodes what it encodes, and nothing else', () => {
    fc.assert(
      fc.property(fc.string(), fc.uint8Array({ maxLength: 64 }), (token, b) => {
        const text = encodeBookmarkValue(token, b);
        expect(decodeBookmarkValue(text)).toEqual({ token, bookmark: new Uint8Array(b) });
        expect(decodeBookmarkValue(Buffer.from(text))).toEqual({ token, bookmark: new Uint8Array(b) });
      }),
    );
    expect(JSON.parse(encodeBookmarkValue('42', new Uint8Array([1, 2, 3])))).toEqual({ w: '42', b: 'AQID' });
    for (const bad of ['', 'null', '{"w":1,"b":""}', '{"w":"1"}', '{"w":"1","b":"not base64!"}', 'cosi-mirror/1 x']) expect(decodeBookmarkValue(bad)).toBeUndefined();
  });
});
