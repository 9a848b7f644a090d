// Rendezvous assignment (server/fleet/assign.ts): every replica must compute the same owner whatever order it
// lists the replicas in, a replica that joins takes only its share and takes it only from the others, and the
// shares are about even.
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { desiredNodes, rendezvousOwner, rendezvousWeight } from '../server/fleet/assign.js';

const NODES = Array.from({ length: 1000 }, (_, i) => `node-${String(i).padStart(4, '0')}`);
const replicaName = fc.string({ minLength: 1, maxLength: 12 });
/** A list of distinct replica names, and the same names in another order. */
const replicaLists = fc
  .uniqueArray(replicaName, { minLength: 1, maxLength: 8 })
  .chain((rs) => fc.tuple(fc.constant(rs), fc.shuffledSubarray(rs, { minLength: rs.length, maxLength: rs.length })));

describe('rendezvous assignment', () => {
  it('gives a node the same owner for any order of the replica list', () => {
    fc.assert(
      fc.property(replicaLists, fc.string({ maxLength: 20 }), ([replicas, shuffled], node) => {
        const owner = rendezvousOwner(node, replicas);
        expect(replicas).toContain(owner);
        expect(rendezvousOwner(node, shuffled)).toBe(owner);
        expect(rendezvousOwner(node, [...replicas].reverse())).toBe(owner);
      }),
      { numRuns: 500 },
    );
  });

  it('moves at most about 1/(k+1) of the nodes when a (k+1)th replica joins, and only to it', () => {
    fc.assert(
      fc.property(fc.uniqueArray(replicaName, { minLength: 2, maxLength: 9 }), (names) => {
        const before = names.slice(0, -1);
        const joined = names[names.length - 1] as string;
        let moved = 0;
        for (const n of NODES) {
          const was = rendezvousOwner(n, before);
          const now = rendezvousOwner(n, names);
          if (now === was) continue;
          moved++;
          expect(now).toBe(joined);
        }
        // The expected share is 1/(k+1); 1.5 times it is over 4 standard deviations away for 1000 nodes and k <= 8.
        expect(moved).toBeLessThanOrEqual((1.5 * NODES.length) / names.length);
      }),
      { numRuns: 40 },
    );
  });

  it('gives each of 3 replicas 1000/3 nodes, within 10%', () => {
    const replicas = ['fleet-a', 'fleet-b', 'fleet-c'];
    const shares = replicas.map((r) => desiredNodes(r, NODES, replicas).size);
    expect(shares.reduce((a, b) => a + b, 0)).toBe(NODES.length);
    for (const s of shares) expect(Math.abs(s - NODES.length / 3)).toBeLessThanOrEqual(NODES.length / 3 / 10);
  });

  it('weighs by the first 8 bytes of sha256(replica NUL node), as every replica version must', () => {
    const digest = createHash('sha256').update(Buffer.from('fleet-a\u0000node-7', 'utf8')).digest('hex');
    expect(rendezvousWeight('fleet-a', 'node-7')).toBe(BigInt(`0x${digest.slice(0, 16)}`));
  });

  it('gives no owner without replicas, and claims nothing for a replica not in the set', () => {
    expect(rendezvousOwner('n', [])).toBeUndefined();
    expect(desiredNodes('gone', NODES, ['fleet-a', 'fleet-b']).size).toBe(0);
    expect(desiredNodes('fleet-a', NODES, ['fleet-a']).size).toBe(NODES.length);
  });
});
