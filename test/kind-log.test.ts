// KindLog (server/store/kind-log.ts), what a kind's watch cache holds, on its own:
// - older history fetched for a resume (the cache's backfill, prepend()) may hold up to the hard bound of changes
//   (131,072 by default), far more than a function call takes as arguments.
import { describe, expect, it } from 'vitest';
import type { Resource } from '../shared/resource.js';
import { historyLimits, KindLog } from '../server/store/kind-log.js';
import type { Change } from '../server/store/store.js';

const K = { namespace: 'ns', type: 'Things.test.dev' };

function resource(id: string, version: number): Resource {
  const at = new Date(0);
  return { metadata: { ...K, id, version, owner: 'o', phase: 'running', created: at, updated: at, labels: {}, annotations: {}, finalizers: [] }, spec: null };
}

// The same two states in every change: the log reads only revisions here, and the test stays fast.
const before = resource('a', 1);
const after = resource('a', 2);
function update(revision: number): Change {
  return { revision, type: 'updated', resource: after, old: before, committedAt: 0 };
}

describe('KindLog', () => {
  it('takes older history of more than 130,000 changes in front of what it holds (a resume from far back)', () => {
    const limits = historyLimits();
    expect(limits.maxSize).toBe(131_072);
    const older = 130_500;
    // The log began (a fresh cosid) at revision older + 1, and has seen two changes since.
    const log = new KindLog(K, limits, older + 1, [before]);
    log.commit(update(older + 2));
    log.commit(update(older + 3));
    const fetched = Array.from({ length: older + 1 }, (_, i) => update(i + 1));
    expect(log.prepend(0, fetched)).toBe(true);
    expect(log.oldestRevision).toBe(0);
    expect(log.size).toBe(older + 3);
    const all = log.readChanges(0, older + 10).changes.map((c) => c.revision);
    expect(all.length).toBe(older + 3);
    expect(all.every((r, i) => r === i + 1)).toBe(true);
    // And it keeps its place: a resume from the middle reads on from there.
    expect(log.readChanges(100_000, 2).changes.map((c) => c.revision)).toEqual([100_001, 100_002]);
  });
});
