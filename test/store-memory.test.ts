// The memory store: the store contract (test/store-contract.ts), then what only the memory backend promises: one
// revision per change for the whole store, listeners told synchronously, frozen reads, and its history retention.
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../server/store/memory.js';
import { isCosiError } from '../shared/errors.js';
import type { Kind } from '../shared/resource.js';
import { errorKind, runStoreContract } from './store-contract.js';

/** The contract's store keeps this many changes per kind, and no older ones (no age window). */
const HISTORY_SIZE = 64;

runStoreContract('memory', async () => {
  const store = new MemoryStore({ historySize: HISTORY_SIZE, historyAgeMs: 0 });
  return {
    store,
    // One change more than history holds, of a resource of its own, which is gone again after: the kind's state is
    // as it was, and the oldest change history keeps is one of these.
    async forgetHistory(kind: Kind) {
      const p = { ...kind, id: 'forget-history' };
      await store.create({ ...p, spec: 0 }, 'test.ForgetHistory');
      for (let i = 1; i < HISTORY_SIZE; i++) await store.update({ ...p, spec: i }, 'test.ForgetHistory');
      await store.destroy(p, 'test.ForgetHistory');
    },
    close: () => store.close(),
  };
});

const K = { namespace: 'ns', type: 'Things.test.dev' };

describe('memory store', () => {
  it('takes its times from the injected clock: created kept, updated moves', async () => {
    let t = 1_000;
    const s = new MemoryStore({ now: () => (t += 1000) });
    const a = await s.create({ ...K, id: 'a', spec: { n: 1 } }, 'me');
    expect(a.metadata).toMatchObject({ version: 1, owner: 'me', phase: 'running' });
    expect(a.metadata.created.getTime()).toBe(2_000);
    const b = await s.update({ ...K, id: 'a', spec: { n: 2 } }, 'me');
    expect(b.metadata.version).toBe(2);
    expect(b.metadata.created).toEqual(a.metadata.created);
    expect(b.metadata.updated.getTime()).toBe(3_000);
  });

  it('numbers changes one by one across kinds, and an update that changes nothing is no revision', async () => {
    const s = new MemoryStore();
    const other = { namespace: 'other', type: K.type };
    await s.create({ ...K, id: 'a', spec: { n: 1 }, labels: { x: '1' } }, 'me');
    await s.create({ ...other, id: 'a', spec: 1 }, 'me');
    expect(s.revision).toBe(2);
    expect((await s.update({ ...K, id: 'a', spec: { n: 1 } }, 'me')).metadata.version).toBe(1);
    expect(s.revision).toBe(2);
    await s.update({ ...K, id: 'a', spec: { n: 2 } }, 'me');
    expect(s.revision).toBe(3);
    expect(s.log(K).readChanges(0, 10).changes.map((c) => c.revision)).toEqual([1, 3]);
    expect(s.log(other).readChanges(0, 10).changes.map((c) => c.revision)).toEqual([2]);
    // A refused write is no revision either.
    expect(await errorKind(s.create({ ...K, id: 'a', spec: null }, 'me'))).toBe('already-exists');
    expect(s.revision).toBe(3);
  });

  it('gives readers frozen values: what one reader does to a read changes no other read', async () => {
    const s = new MemoryStore();
    await s.create({ ...K, id: 'a', spec: { list: [1, 2] } }, 'me');
    const read = (await s.get({ ...K, id: 'a' })).spec as { list: number[] };
    expect(() => read.list.push(4)).toThrow(TypeError);
    expect((await s.get({ ...K, id: 'a' })).spec).toEqual({ list: [1, 2] });
    const md = (await s.get({ ...K, id: 'a' })).metadata;
    expect(() => (md.labels as Record<string, string>)['x'] = '1').toThrow(TypeError);
    expect((await s.get({ ...K, id: 'a' })).metadata.labels).toEqual({});
  });

  it('reads changes in revision order, per kind, and says "too old" once history moved on', async () => {
    const s = new MemoryStore({ historySize: 3, historyAgeMs: 0 });
    for (let i = 0; i < 5; i++) await s.create({ ...K, id: `r${i}`, spec: i }, 'me');
    const log = s.log(K);
    expect(s.revision).toBe(5);
    expect(log.revision).toBe(5);
    expect(log.oldestRevision).toBe(2);
    expect(log.readChanges(2, 10).changes.map((c) => c.revision)).toEqual([3, 4, 5]);
    expect(log.readChanges(3, 1).changes.map((c) => c.revision)).toEqual([4]);
    let kind = '';
    try {
      log.readChanges(1, 10);
    } catch (err) {
      kind = isCosiError(err) ? err.kind : 'untyped';
    }
    expect(kind).toBe('too-old');
    expect(await errorKind(() => s.feed.reach(K, 1))).toBe('too-old');
    expect(await errorKind(() => s.feed.listAt(K, 1))).toBe('too-old');
    // Another kind's history is its own: nothing of it was forgotten.
    const other = { namespace: 'other', type: K.type };
    await s.create({ ...other, id: 'x', spec: 1 }, 'me');
    expect(s.log(other).oldestRevision).toBe(0);
    expect(s.log(other).readChanges(0, 10).changes.map((c) => c.revision)).toEqual([6]);
  });

  it('tells trim listeners about each change history forgets, oldest first', async () => {
    const s = new MemoryStore({ historySize: 2, historyAgeMs: 0 });
    const trimmed: number[] = [];
    s.log(K).subscribe({ trimmed: (c) => trimmed.push(c.revision) });
    for (let i = 0; i < 5; i++) await s.create({ ...K, id: `r${i}`, spec: i }, 'me');
    expect(trimmed).toEqual([1, 2, 3]);
  });

  it('tells listeners about each commit synchronously, before the write settles', async () => {
    const s = new MemoryStore();
    const seen: string[] = [];
    const off = (await s.feed.history(K)).subscribe({ committed: (c) => seen.push(`${c.type}:${c.resource.metadata.id}@${c.revision}`) });
    const created = s.create({ ...K, id: 'a', spec: 1 }, 'me');
    expect(seen).toEqual(['created:a@1']);
    await created;
    await s.update({ ...K, id: 'a', spec: 2 }, 'me');
    await s.destroy({ ...K, id: 'a' }, 'me');
    off();
    await s.create({ ...K, id: 'b', spec: 1 }, 'me');
    expect(seen).toEqual(['created:a@1', 'updated:a@2', 'destroyed:a@3']);
  });

  it('holds a kind seen for the first time as complete from the start', async () => {
    const s = new MemoryStore();
    await s.create({ ...K, id: 'a', spec: 1 }, 'me');
    const h = await s.feed.history({ namespace: 'fresh', type: K.type });
    expect({ revision: h.revision, oldest: h.oldestRevision, list: h.list() }).toEqual({ revision: 0, oldest: 0, list: [] });
    expect(h.readChanges(0, 10)).toEqual({ changes: [], through: 0 });
  });
});

describe('memory store history retention', () => {
  it('keeps at least the size and at least the age, but never more than the maximum', async () => {
    let now = 0;
    const s = new MemoryStore({ historySize: 2, historyAgeMs: 1000, historyMaxSize: 5, now: () => now });
    const log = s.log(K);
    for (let i = 0; i < 4; i++) await s.create({ ...K, id: `young${i}`, spec: i }, 'me');
    expect(log.oldestRevision).toBe(0); // all younger than 1 s: kept beyond the size
    for (let i = 0; i < 4; i++) await s.create({ ...K, id: `more${i}`, spec: i }, 'me');
    expect(s.revision - log.oldestRevision).toBe(5); // the hard maximum
    now = 5000;
    await s.create({ ...K, id: 'late', spec: 1 }, 'me');
    expect(s.revision - log.oldestRevision).toBe(2); // old ones beyond the size are gone
  });
});
