// The store contract, run against every backend (today: memory).
import { describe, expect, it } from 'vitest';
import { isCosiError } from '../shared/errors.js';
import { MemoryStore } from '../server/store/memory.js';
import type { ResourceStore } from '../server/store/store.js';

const K = { namespace: 'ns', type: 'Things.test.dev' };
const backends: [string, (historySize: number) => ResourceStore][] = [['memory', (historySize) => new MemoryStore({ historySize, historyAgeMs: 0 })]];

describe.each(backends)('%s store', (_name, make) => {
  it('creates at version 1, bumps the version per change and keeps created', () => {
    let t = 1_000;
    const s = new MemoryStore({ now: () => (t += 1000) });
    const a = s.create({ ...K, id: 'a', spec: { n: 1 } }, 'me');
    expect(a.metadata).toMatchObject({ version: 1, owner: 'me', phase: 'running' });
    const b = s.update({ ...K, id: 'a', spec: { n: 2 } }, 'me');
    expect(b.metadata.version).toBe(2);
    expect(b.metadata.created).toEqual(a.metadata.created);
    expect(b.metadata.updated.getTime()).toBeGreaterThan(a.metadata.updated.getTime());
  });

  it('does not bump the version for an update that changes nothing', () => {
    const s = make(100);
    s.create({ ...K, id: 'a', spec: { n: 1 }, labels: { x: '1' } }, 'me');
    const rev = s.revision;
    expect(s.update({ ...K, id: 'a', spec: { n: 1 } }, 'me').metadata.version).toBe(1);
    expect(s.revision).toBe(rev);
    // The same content with its keys in another order is the same spec.
    s.update({ ...K, id: 'a', spec: { n: 2, deep: { p: 1, q: [1, { r: 2, s: 3 }] } } }, 'me');
    const version = s.get({ ...K, id: 'a' }).metadata.version;
    expect(s.update({ ...K, id: 'a', spec: { deep: { q: [1, { s: 3, r: 2 }], p: 1 }, n: 2 } }, 'me').metadata.version).toBe(version);
  });

  it('refuses duplicates, missing resources and foreign owners with typed errors', () => {
    const s = make(100);
    s.create({ ...K, id: 'a', spec: null }, 'me');
    const kinds = [
      () => s.create({ ...K, id: 'a', spec: null }, 'me'),
      () => s.update({ ...K, id: 'b', spec: null }, 'me'),
      () => s.update({ ...K, id: 'a', spec: 1 }, 'you'),
      () => s.destroy({ ...K, id: 'a' }, 'you'),
      () => s.get({ ...K, id: 'zz' }),
    ].map((f) => {
      try {
        f();
        return 'no error';
      } catch (err) {
        return isCosiError(err) ? err.kind : 'untyped';
      }
    });
    expect(kinds).toEqual(['already-exists', 'not-found', 'owner-conflict', 'owner-conflict', 'not-found']);
  });

  it('refuses a spec nested deeper than the API can encode, and commits nothing', () => {
    const s = make(100);
    const nest = (levels: number) => {
      let v: { [key: string]: unknown } = {};
      for (let i = 1; i < levels; i++) v = { a: v };
      return v as { [key: string]: never };
    };
    s.create({ ...K, id: 'ok', spec: nest(32) }, 'me');
    const rev = s.revision;
    const kinds = [() => s.create({ ...K, id: 'deep', spec: nest(33) }, 'me'), () => s.update({ ...K, id: 'ok', spec: [nest(32)] }, 'me')].map((f) => {
      try {
        f();
        return 'no error';
      } catch (err) {
        return isCosiError(err) ? `${err.kind}: ${err.message}` : 'untyped';
      }
    });
    expect(kinds).toEqual([expect.stringMatching(/^invalid-argument: .*deep.*nested deeper than 32 levels/), expect.stringMatching(/^invalid-argument: .*ok.*nested deeper than 32 levels/)]);
    expect(s.revision).toBe(rev);
  });

  it('keeps stored resources immune to the caller mutating its input', () => {
    const s = make(100);
    const spec = { list: [1, 2] };
    s.create({ ...K, id: 'a', spec }, 'me');
    spec.list.push(3);
    expect(s.get({ ...K, id: 'a' }).spec).toEqual({ list: [1, 2] });
    // ...and to readers mutating what they read: every read gives the same frozen value.
    const read = s.get({ ...K, id: 'a' }).spec as { list: number[] };
    expect(() => read.list.push(4)).toThrow(TypeError);
    expect(s.get({ ...K, id: 'a' }).spec).toEqual({ list: [1, 2] });
  });

  it('lists sorted by ID and rebuilds past states from history', () => {
    const s = make(100);
    s.create({ ...K, id: 'b', spec: 1 }, 'me');
    s.create({ ...K, id: 'a', spec: 1 }, 'me');
    const r = s.revision;
    s.update({ ...K, id: 'a', spec: 2 }, 'me');
    s.destroy({ ...K, id: 'b' }, 'me');
    s.create({ ...K, id: 'c', spec: 1 }, 'me');
    s.create({ namespace: 'other', type: K.type, id: 'x', spec: 1 }, 'me');
    expect(s.list(K).map((x) => `${x.metadata.id}@${x.metadata.version}`)).toEqual(['a@2', 'c@1']);
    expect(s.listAt(K, r).map((x) => `${x.metadata.id}@${x.metadata.version}`)).toEqual(['a@1', 'b@1']);
  });

  it('reads changes in revision order, per kind, and says "too old" once history moved on', () => {
    const s = make(3);
    for (let i = 0; i < 5; i++) s.create({ ...K, id: `r${i}`, spec: i }, 'me');
    expect(s.revision).toBe(5);
    expect(s.oldestRevision).toBe(2);
    expect(s.readChanges(2, 10, K).changes.map((c) => c.revision)).toEqual([3, 4, 5]);
    expect(s.readChanges(3, 1, K).changes.map((c) => c.revision)).toEqual([4]);
    let kind = '';
    try {
      s.readChanges(1, 10, K);
    } catch (err) {
      kind = isCosiError(err) ? err.kind : 'untyped';
    }
    expect(kind).toBe('too-old');
  });

  it('tells trim listeners about each change history forgets, oldest first', () => {
    const s = make(2);
    const trimmed: number[] = [];
    s.onTrim((c) => trimmed.push(c.revision));
    for (let i = 0; i < 5; i++) s.create({ ...K, id: `r${i}`, spec: i }, 'me');
    expect(trimmed).toEqual([1, 2, 3]);
  });

  it('tells listeners about each commit synchronously', () => {
    const s = make(100);
    const seen: string[] = [];
    const off = s.onCommit((c) => seen.push(`${c.type}:${c.resource.metadata.id}@${c.revision}`));
    s.create({ ...K, id: 'a', spec: 1 }, 'me');
    s.update({ ...K, id: 'a', spec: 2 }, 'me');
    s.destroy({ ...K, id: 'a' }, 'me');
    off();
    s.create({ ...K, id: 'b', spec: 1 }, 'me');
    expect(seen).toEqual(['created:a@1', 'updated:a@2', 'destroyed:a@3']);
  });
});

describe('memory store history retention', () => {
  it('keeps at least the size and at least the age, but never more than the maximum', () => {
    let now = 0;
    const s = new MemoryStore({ historySize: 2, historyAgeMs: 1000, historyMaxSize: 5, now: () => now });
    for (let i = 0; i < 4; i++) s.create({ ...K, id: `young${i}`, spec: i }, 'me');
    expect(s.oldestRevision).toBe(0); // all younger than 1 s: kept beyond the size
    for (let i = 0; i < 4; i++) s.create({ ...K, id: `more${i}`, spec: i }, 'me');
    expect(s.revision - s.oldestRevision).toBe(5); // the hard maximum
    now = 5000;
    s.create({ ...K, id: 'late', spec: 1 }, 'me');
    expect(s.revision - s.oldestRevision).toBe(2); // old ones beyond the size are gone
  });
});
