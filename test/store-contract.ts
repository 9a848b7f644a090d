// The store contract (server/store/store.ts), run against every backend: test/store-memory.test.ts runs it on a
// MemoryStore, the etcd tests on etcd. Only the contract is used here, never a backend's internals. Each test writes
// its own kind, so the tests can share one backend; the feed is read after caughtUp(store, kind) (test/caught-up.ts),
// once it holds every change committed before the call (an etcd feed is fed asynchronously by a watch).
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { caughtUp } from './caught-up.js';
import { compileSelector } from '../server/store/query.js';
import { upsert } from '../server/store/upsert.js';
import { MAX_SPEC_DEPTH, type Change, type ResourceStore } from '../server/store/store.js';
import { isCosiError } from '../shared/errors.js';
import type { Kind, Resource } from '../shared/resource.js';
import { LabelOp, type Json, type WireLabelTerm } from '../shared/wire.js';

export interface StoreUnderTest {
  readonly store: ResourceStore; // may change after forgetHistory() (a restart of the backend's client)
  /** Makes every change of `kind` committed so far unreachable for resumes: memory writes past its history size; etcd compacts and reopens the store. */
  forgetHistory(kind: Kind): Promise<void>;
  close(): Promise<void>;
}

/**
 * The kind of the error a call rejects with ('no error' when it resolves, 'untyped: ...' for a non-CosiError). Given
 * the call itself rather than its promise, it also tells a call that throws instead of returning a promise that
 * rejects ('thrown synchronously: <kind>'), which no caller of an async contract expects.
 */
export async function errorKind(call: Promise<unknown> | (() => Promise<unknown>)): Promise<string> {
  const kindOf = (err: unknown) => (isCosiError(err) ? err.kind : `untyped: ${String(err)}`);
  let p: Promise<unknown>;
  try {
    p = typeof call === 'function' ? call() : call;
  } catch (err) {
    return `thrown synchronously: ${kindOf(err)}`;
  }
  try {
    await p;
    return 'no error';
  } catch (err) {
    return kindOf(err);
  }
}

/** A spec nested `levels` deep (an empty object is one level). */
function nest(levels: number): Json {
  let v: Json = {};
  for (let i = 1; i < levels; i++) v = { a: v };
  return v;
}

const at = (r: Resource) => `${r.metadata.id}@${r.metadata.version}`;
/** A change as one line: its type, and the resource's ID and version. */
const line = (c: Change) => `${c.type} ${at(c.resource)}`;
const term = (key: string, op: LabelOp, value: string[] = [], invert = false): WireLabelTerm => ({ key, op, value, invert });

export function runStoreContract(name: string, open: () => Promise<StoreUnderTest>): void {
  describe(`${name} store: the contract`, () => {
    let sut: StoreUnderTest;
    beforeAll(async () => {
      sut = await open();
    });
    afterAll(async () => {
      await sut?.close();
    });

    // A kind of its own for each test; the namespace is this run's, should a backend outlive it.
    const run = randomBytes(4).toString('hex');
    let kinds = 0;
    const newKind = (): Kind => ({ namespace: `contract-${run}`, type: `Things${++kinds}.test.dev` });
    const store = () => sut.store;
    /** The revision the kind's history holds everything up to: the changes after it are the ones made after this call. */
    const mark = async (k: Kind) => (await caughtUp(store(), k)).revision;
    /** The kind's changes after `after`, as the feed holds them once it has everything committed so far. */
    const changesAfter = async (k: Kind, after: number): Promise<readonly Change[]> => (await caughtUp(store(), k)).readChanges(after, 10_000).changes;

    it('creates at version 1, adds one per change, keeps created and moves updated', async () => {
      const k = newKind();
      const a = await store().create({ ...k, id: 'a', spec: { n: 1 }, labels: { l: '1' }, annotations: { note: 'x' } }, 'me');
      expect(a.metadata).toMatchObject({ ...k, id: 'a', version: 1, owner: 'me', phase: 'running', labels: { l: '1' }, annotations: { note: 'x' }, finalizers: [] });
      expect(a.spec).toEqual({ n: 1 });
      expect(a.metadata.updated).toEqual(a.metadata.created);
      // Let the clock pass the create's millisecond, so that "updated moves" shows.
      const t = a.metadata.updated.getTime();
      while (Date.now() <= t) {
        // spins at most a millisecond
      }
      const b = await store().update({ ...k, id: 'a', spec: { n: 2 } }, 'me');
      expect(b.metadata.version).toBe(2);
      expect(b.metadata.created).toEqual(a.metadata.created);
      expect(b.metadata.updated.getTime()).toBeGreaterThan(a.metadata.updated.getTime());
      // Labels and annotations the update leaves out are kept; each change of them is a change.
      expect(b.metadata).toMatchObject({ labels: { l: '1' }, annotations: { note: 'x' }, owner: 'me', phase: 'running' });
      expect((await store().update({ ...k, id: 'a', spec: { n: 2 }, labels: { l: '2' } }, 'me')).metadata.version).toBe(3);
      expect((await store().update({ ...k, id: 'a', spec: { n: 2 }, annotations: {} }, 'me')).metadata.version).toBe(4);
      const got = await store().get({ ...k, id: 'a' });
      expect(got.metadata).toMatchObject({ version: 4, labels: { l: '2' }, annotations: {}, created: a.metadata.created });
      expect(got.spec).toEqual({ n: 2 });
    });

    it('keeps the version and commits no change for an update that changes nothing', async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'a', spec: { n: 1 }, labels: { x: '1' } }, 'me');
      // Labels left out are kept: the same spec is no change.
      expect((await store().update({ ...k, id: 'a', spec: { n: 1 } }, 'me')).metadata.version).toBe(1);
      expect((await store().update({ ...k, id: 'a', spec: { n: 1 }, labels: { x: '1' }, annotations: {} }, 'me')).metadata.version).toBe(1);
      expect((await store().update({ ...k, id: 'a', spec: { n: 2, deep: { p: 1, q: [1, { r: 2, s: 3 }] } } }, 'me')).metadata.version).toBe(2);
      // The same content with its keys in another order is the same spec.
      expect((await store().update({ ...k, id: 'a', spec: { deep: { q: [1, { s: 3, r: 2 }], p: 1 }, n: 2 } }, 'me')).metadata.version).toBe(2);
      expect((await store().get({ ...k, id: 'a' })).metadata.version).toBe(2);
      expect((await changesAfter(k, start)).map(line)).toEqual(['created a@1', 'updated a@2']);
    });

    it('refuses duplicates, missing resources, foreign owners and stale versions with typed errors, and commits nothing for them', async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'a', spec: null }, 'me');
      const missing = { ...k, id: 'zz' };
      const kinds = [
        await errorKind(store().create({ ...k, id: 'a', spec: null }, 'me')),
        await errorKind(store().get(missing)),
        await errorKind(store().update({ ...missing, spec: null }, 'me')),
        await errorKind(store().teardown(missing, 'me')),
        await errorKind(store().addFinalizers(missing, ['f'])),
        await errorKind(store().removeFinalizers(missing, ['f'])),
        await errorKind(store().destroy(missing, 'me')),
        await errorKind(store().update({ ...k, id: 'a', spec: 1 }, 'you')),
        await errorKind(store().teardown({ ...k, id: 'a' }, 'you')),
        await errorKind(store().destroy({ ...k, id: 'a' }, 'you')),
        await errorKind(store().update({ ...k, id: 'a', spec: 1 }, 'me', { expectedVersion: 2 })),
        await errorKind(store().update({ ...k, id: 'a', spec: 1 }, 'me', { expectedVersion: 0 })),
        // Tearing down is a phase a writer must expect: a running resource is not updated as one tearing down.
        await errorKind(store().update({ ...k, id: 'a', spec: 1 }, 'me', { expectedPhase: 'tearingDown' })),
      ];
      expect(kinds).toEqual([
        'already-exists',
        'not-found',
        'not-found',
        'not-found',
        'not-found',
        'not-found',
        'not-found',
        'owner-conflict',
        'owner-conflict',
        'owner-conflict',
        'version-conflict',
        'version-conflict',
        'phase-conflict',
      ]);
      expect(await store().get({ ...k, id: 'a' })).toMatchObject({ metadata: { version: 1, owner: 'me', phase: 'running' }, spec: null });
      // The version it expects, it gets.
      expect((await store().update({ ...k, id: 'a', spec: 1 }, 'me', { expectedVersion: 1 })).metadata.version).toBe(2);
      // Once tearing down, an update must say it expects that phase.
      await store().teardown({ ...k, id: 'a' }, 'me');
      expect(await errorKind(store().update({ ...k, id: 'a', spec: 2 }, 'me'))).toBe('phase-conflict');
      expect(await errorKind(store().update({ ...k, id: 'a', spec: 2 }, 'me', { expectedPhase: 'running' }))).toBe('phase-conflict');
      const updated = await store().update({ ...k, id: 'a', spec: 2 }, 'me', { expectedPhase: 'tearingDown', expectedVersion: 3 });
      expect(updated.metadata).toMatchObject({ version: 4, phase: 'tearingDown' });
      expect((await changesAfter(k, start)).map(line)).toEqual(['created a@1', 'updated a@2', 'updated a@3', 'updated a@4']);
    });

    it('tears down once: phase tearingDown, one version more, destroyReady as the finalizers say', async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'free', spec: { s: 1 }, labels: { l: 'x' } }, 'me');
      const first = await store().teardown({ ...k, id: 'free' }, 'me');
      expect(first.destroyReady).toBe(true);
      expect(first.resource.metadata).toMatchObject({ version: 2, phase: 'tearingDown', owner: 'me', labels: { l: 'x' }, finalizers: [] });
      expect(first.resource.spec).toEqual({ s: 1 });
      // A second teardown changes nothing.
      const second = await store().teardown({ ...k, id: 'free' }, 'me');
      expect(second.destroyReady).toBe(true);
      expect(second.resource.metadata).toMatchObject({ version: 2, phase: 'tearingDown' });

      await store().create({ ...k, id: 'held', spec: null }, 'me');
      await store().addFinalizers({ ...k, id: 'held' }, ['f']);
      const held = await store().teardown({ ...k, id: 'held' }, 'me');
      expect(held.destroyReady).toBe(false);
      expect(held.resource.metadata).toMatchObject({ version: 3, phase: 'tearingDown', finalizers: ['f'] });
      expect((await store().teardown({ ...k, id: 'held' }, 'me')).destroyReady).toBe(false);
      // The finalizer's owner lets go: now it can be destroyed.
      expect((await store().removeFinalizers({ ...k, id: 'held' }, ['f'])).metadata).toMatchObject({ version: 4, phase: 'tearingDown', finalizers: [] });
      expect((await store().teardown({ ...k, id: 'held' }, 'me')).destroyReady).toBe(true);
      await store().destroy({ ...k, id: 'held' }, 'me');
      await store().destroy({ ...k, id: 'free' }, 'me');
      expect(await errorKind(store().get({ ...k, id: 'held' }))).toBe('not-found');
      expect(await store().list(k)).toEqual([]);
      expect((await changesAfter(k, start)).map(line)).toEqual([
        'created free@1',
        'updated free@2',
        'created held@1',
        'updated held@2',
        'updated held@3',
        'updated held@4',
        'destroyed held@4',
        'destroyed free@2',
      ]);
    });

    it('adds and removes finalizers for any writer, ignores duplicates, and destroys only once none is left', async () => {
      const k = newKind();
      const p = { ...k, id: 'a' };
      const start = await mark(k);
      await store().create({ ...p, spec: { s: 1 } }, 'me');
      // Finalizers are not the owner's business: calls take no owner.
      expect((await store().addFinalizers(p, ['x', 'y', 'x'])).metadata).toMatchObject({ version: 2, owner: 'me', finalizers: ['x', 'y'] });
      expect((await store().addFinalizers(p, ['y'])).metadata).toMatchObject({ version: 2, finalizers: ['x', 'y'] });
      expect((await store().addFinalizers(p, [])).metadata.version).toBe(2);
      expect((await store().addFinalizers(p, ['z', 'x'])).metadata).toMatchObject({ version: 3, finalizers: ['x', 'y', 'z'] });
      expect((await store().removeFinalizers(p, ['nope'])).metadata).toMatchObject({ version: 3, finalizers: ['x', 'y', 'z'] });
      expect((await store().removeFinalizers(p, ['x', 'z', 'nope'])).metadata).toMatchObject({ version: 4, finalizers: ['y'] });
      // Spec and labels stay as they were.
      expect((await store().get(p)).spec).toEqual({ s: 1 });

      // Destroy with a finalizer left: refused, and nothing changes.
      expect(await errorKind(store().destroy(p, 'me'))).toBe('pending-finalizers');
      expect((await store().get(p)).metadata).toMatchObject({ version: 4, phase: 'running', finalizers: ['y'] });

      // Tearing down: no finalizer can be added any more.
      await store().teardown(p, 'me');
      expect(await errorKind(store().addFinalizers(p, ['late']))).toBe('phase-conflict');
      expect(await errorKind(store().destroy(p, 'me'))).toBe('pending-finalizers');
      expect((await store().get(p)).metadata).toMatchObject({ version: 5, phase: 'tearingDown', finalizers: ['y'] });

      expect((await store().removeFinalizers(p, ['y'])).metadata).toMatchObject({ version: 6, finalizers: [] });
      await store().destroy(p, 'me');
      expect(await errorKind(store().get(p))).toBe('not-found');
      expect((await changesAfter(k, start)).map(line)).toEqual(['created a@1', 'updated a@2', 'updated a@3', 'updated a@4', 'updated a@5', 'updated a@6', 'destroyed a@6']);
    });

    it(`refuses a spec nested deeper than ${MAX_SPEC_DEPTH} levels with invalid-argument, and commits nothing`, async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'ok', spec: nest(MAX_SPEC_DEPTH) }, 'me');
      const messages = [store().create({ ...k, id: 'deep', spec: nest(MAX_SPEC_DEPTH + 1) }, 'me'), store().update({ ...k, id: 'ok', spec: [nest(MAX_SPEC_DEPTH)] }, 'me')].map(async (p) => {
        try {
          await p;
          return 'no error';
        } catch (err) {
          return isCosiError(err) ? `${err.kind}: ${err.message}` : 'untyped';
        }
      });
      expect(await Promise.all(messages)).toEqual([
        expect.stringMatching(/^invalid-argument: .*deep.*nested deeper than 32 levels/),
        expect.stringMatching(/^invalid-argument: .*ok.*nested deeper than 32 levels/),
      ]);
      expect(await errorKind(store().get({ ...k, id: 'deep' }))).toBe('not-found');
      const ok = await store().get({ ...k, id: 'ok' });
      expect(ok.metadata.version).toBe(1);
      expect(ok.spec).toEqual(nest(MAX_SPEC_DEPTH));
      expect((await changesAfter(k, start)).map(line)).toEqual(['created ok@1']);
    });

    it('keeps what it stored immune to the caller changing its input afterwards', async () => {
      const k = newKind();
      const spec = { list: [1, 2] };
      const labels: Record<string, string> = { l: '1' };
      await store().create({ ...k, id: 'a', spec, labels }, 'me');
      spec.list.push(3);
      labels['l'] = '2';
      const got = await store().get({ ...k, id: 'a' });
      expect(got.spec).toEqual({ list: [1, 2] });
      expect(got.metadata.labels).toEqual({ l: '1' });
      expect((await caughtUp(store(), k)).current('a')?.spec).toEqual({ list: [1, 2] });
    });

    it('lists a kind sorted by ID, from the store and from the feed, apart from other kinds', async () => {
      const k = newKind();
      const other = { namespace: `${k.namespace}-other`, type: k.type };
      await store().create({ ...k, id: 'b', spec: 1 }, 'me');
      await store().create({ ...k, id: 'a', spec: 1 }, 'me');
      await store().create({ ...k, id: 'c', spec: 1 }, 'me');
      await store().update({ ...k, id: 'a', spec: 2 }, 'me');
      await store().destroy({ ...k, id: 'c' }, 'me');
      await store().create({ ...other, id: 'x', spec: 1 }, 'me');
      expect((await store().list(k)).map(at)).toEqual(['a@2', 'b@1']);
      const h = await caughtUp(store(), k);
      expect(h.kind).toEqual(k);
      expect(h.list().map(at)).toEqual(['a@2', 'b@1']);
      expect(h.current('a')?.spec).toBe(2);
      expect(h.current('c')).toBeUndefined();
      expect((await store().list(other)).map(at)).toEqual(['x@1']);
      expect((await caughtUp(store(), other)).list().map(at)).toEqual(['x@1']);
    });

    it('selects by label and ID queries over the feed', async () => {
      const k = newKind();
      const put = (id: string, labels: Record<string, string>) => store().create({ ...k, id, spec: null, labels }, 'me');
      await put('web-1', { tier: 'front', size: '2Ki' });
      await put('web-2', { tier: 'front', size: '3000' });
      await put('db-1', { tier: 'back', size: '1k' });
      await put('cache-1', { size: '512' });
      await put('db-2', { tier: 'back' });
      const ids = async (labelQueries: WireLabelTerm[][], idRegexp?: string) => {
        const sel = compileSelector(
          labelQueries.map((terms) => ({ terms })),
          idRegexp === undefined ? null : { regexp: idRegexp },
        );
        return (await caughtUp(store(), k))
          .list()
          .filter((r) => sel.matches(r.metadata))
          .map((r) => r.metadata.id);
      };
      expect(await ids([])).toEqual(['cache-1', 'db-1', 'db-2', 'web-1', 'web-2']);
      expect(await ids([[term('tier', LabelOp.EQUAL, ['front'])]])).toEqual(['web-1', 'web-2']);
      expect(await ids([[term('tier', LabelOp.EXISTS, [], true)]])).toEqual(['cache-1']);
      expect(await ids([[term('tier', LabelOp.IN, ['front', 'back']), term('size', LabelOp.EXISTS)]])).toEqual(['db-1', 'web-1', 'web-2']);
      expect(await ids([[term('size', LabelOp.LT_NUMERIC, ['2500'])]])).toEqual(['cache-1', 'db-1', 'web-1']);
      // OR of label queries.
      expect(await ids([[term('tier', LabelOp.EQUAL, ['back'])], [term('size', LabelOp.EQUAL, ['512'])]])).toEqual(['cache-1', 'db-1', 'db-2']);
      expect(await ids([], '-1$')).toEqual(['cache-1', 'db-1', 'web-1']);
      expect(await ids([[term('tier', LabelOp.EQUAL, ['back'])]], '^db-2$')).toEqual(['db-2']);
      expect(await ids([[term('tier', LabelOp.EQUAL, ['none'])]])).toEqual([]);
    });

    it('keeps a kind\'s changes in order: types, old states, increasing revisions, paged by max', async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'a', spec: 1 }, 'me');
      await store().create({ ...k, id: 'b', spec: 1 }, 'me');
      await store().update({ ...k, id: 'a', spec: 2 }, 'me');
      await store().update({ ...k, id: 'b', spec: 1, labels: { l: 'x' } }, 'me');
      await store().destroy({ ...k, id: 'a' }, 'me');
      await store().create({ ...k, id: 'c', spec: 1 }, 'me');
      await store().addFinalizers({ ...k, id: 'c' }, ['f']);
      const h = await caughtUp(store(), k);
      expect(h.unavailable).toBeUndefined();
      const all = h.readChanges(start, 100);
      const changes = all.changes;
      expect(changes.map(line)).toEqual(['created a@1', 'created b@1', 'updated a@2', 'updated b@2', 'destroyed a@2', 'created c@1', 'updated c@2']);
      expect(changes.map((c) => (c.old === undefined ? undefined : at(c.old)))).toEqual([undefined, undefined, 'a@1', 'b@1', 'a@2', undefined, 'c@1']);
      expect(changes.map((c) => c.resource.spec)).toEqual([1, 1, 2, 1, 2, 1, 1]);
      expect(changes[3]?.resource.metadata.labels).toEqual({ l: 'x' });
      expect(changes[3]?.old?.metadata.labels).toEqual({});
      expect(changes[6]?.resource.metadata.finalizers).toEqual(['f']);
      expect(changes.every((c) => c.error === undefined)).toBe(true);
      const revisions = changes.map((c) => c.revision);
      for (let i = 1; i < revisions.length; i++) expect(revisions[i]).toBeGreaterThan(revisions[i - 1] ?? Infinity);
      expect(revisions[0]).toBeGreaterThan(start);
      expect(h.revision).toBeGreaterThanOrEqual(revisions.at(-1) ?? Infinity);
      expect(all.through).toBe(h.revision);
      // Paged: at most `max` each, resumed after `through`, the same changes in the same order.
      const pages: string[][] = [];
      for (let after = start; pages.length <= 7; ) {
        const batch = h.readChanges(after, 3);
        if (batch.changes.length === 0) {
          expect(batch.through).toBe(h.revision);
          break;
        }
        // `through` is at least the page's last change and never past what the history holds.
        expect(batch.through).toBeGreaterThanOrEqual(batch.changes.at(-1)?.revision ?? Infinity);
        expect(batch.through).toBeLessThanOrEqual(h.revision);
        pages.push(batch.changes.map(line));
        after = batch.through;
      }
      expect(pages).toEqual([
        ['created a@1', 'created b@1', 'updated a@2'],
        ['updated b@2', 'destroyed a@2', 'created c@1'],
        ['updated c@2'],
      ]);
    });

    it('resumes after a revision it still holds: exactly the later changes, and the state as it was then', async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'a', spec: 1 }, 'me');
      await store().create({ ...k, id: 'b', spec: 1 }, 'me');
      await store().update({ ...k, id: 'a', spec: 2 }, 'me');
      const r = (await caughtUp(store(), k)).revision;
      await store().destroy({ ...k, id: 'b' }, 'me');
      await store().create({ ...k, id: 'c', spec: 1 }, 'me');
      await store().update({ ...k, id: 'a', spec: 3 }, 'me');
      const h = await caughtUp(store(), k);
      await store().feed.reach(k, r);
      expect(h.readChanges(r, 100).changes.map(line)).toEqual(['destroyed b@1', 'created c@1', 'updated a@3']);
      expect((await store().feed.listAt(k, r)).map(at)).toEqual(['a@2', 'b@1']);
      expect((await store().feed.listAt(k, start)).map(at)).toEqual([]);
      expect((await store().feed.listAt(k, h.revision)).map(at)).toEqual(['a@3', 'c@1']);
      expect(h.list().map(at)).toEqual(['a@3', 'c@1']);
      // A revision this history has not reached is a bookmark it never gave.
      expect(await errorKind(() => store().feed.reach(k, h.revision * 2 + 1_000_000))).toBe('invalid-bookmark');
    });

    it('says "too old" for a revision whose history was forgotten', async () => {
      const k = newKind();
      await store().create({ ...k, id: 'a', spec: 1 }, 'me');
      await store().update({ ...k, id: 'a', spec: 2 }, 'me');
      const r = (await caughtUp(store(), k)).revision;
      await store().update({ ...k, id: 'a', spec: 3 }, 'me');
      await sut.forgetHistory(k);
      const h = await store().feed.history(k);
      expect(await errorKind(() => store().feed.reach(k, r))).toBe('too-old');
      // What is there now is still there.
      expect((await store().get({ ...k, id: 'a' })).spec).toBe(3);
      expect((await caughtUp(store(), k)).current('a')?.spec).toBe(3);
    });

    it('lets 5 concurrent upserts of one new resource all succeed: one creates it, the others find it (fleet replicas publishing definitions at once)', async () => {
      const k = newKind();
      const outcomes = await Promise.all(Array.from({ length: 5 }, () => upsert(store(), { ...k, id: 'def', spec: { same: true } }, 'cosi.meta')));
      expect(outcomes.filter((o) => o === 'created')).toHaveLength(1);
      expect(outcomes.filter((o) => o === 'unchanged')).toHaveLength(4);
      expect((await store().get({ ...k, id: 'def' })).metadata.version).toBe(1);
    });

    it('lets exactly one of 20 concurrent creates of one ID succeed', async () => {
      const k = newKind();
      const start = await mark(k);
      const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => store().create({ ...k, id: 'x', spec: { i } }, `writer-${i}`)));
      const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      expect(won.length).toBe(1);
      expect(results.filter((r) => r.status === 'rejected').map((r) => (isCosiError(r.reason) ? r.reason.kind : String(r.reason)))).toEqual(Array(19).fill('already-exists'));
      const winner = won[0] as Resource;
      expect(winner.metadata.version).toBe(1);
      const stored = await store().get({ ...k, id: 'x' });
      expect({ owner: stored.metadata.owner, spec: stored.spec, version: stored.metadata.version }).toEqual({ owner: winner.metadata.owner, spec: winner.spec, version: 1 });
      expect((await changesAfter(k, start)).map(line)).toEqual(['created x@1']);
    });

    it('lets exactly one of 20 concurrent updates expecting the same version succeed', async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'x', spec: { i: -1 } }, 'me');
      const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => store().update({ ...k, id: 'x', spec: { i } }, 'me', { expectedVersion: 1 })));
      const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      expect(won.length).toBe(1);
      expect(results.filter((r) => r.status === 'rejected').map((r) => (isCosiError(r.reason) ? r.reason.kind : String(r.reason)))).toEqual(Array(19).fill('version-conflict'));
      const winner = won[0] as Resource;
      expect(winner.metadata.version).toBe(2);
      const stored = await store().get({ ...k, id: 'x' });
      expect({ spec: stored.spec, version: stored.metadata.version }).toEqual({ spec: winner.spec, version: 2 });
      expect((await changesAfter(k, start)).map(line)).toEqual(['created x@1', 'updated x@2']);
    });

    it('applies every one of 20 concurrent updates without an expected version, one version each', async () => {
      const k = newKind();
      const start = await mark(k);
      await store().create({ ...k, id: 'x', spec: { i: -1 } }, 'me');
      const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => store().update({ ...k, id: 'x', spec: { i } }, 'me')));
      expect(results.map((r) => (r.status === 'fulfilled' ? 'ok' : isCosiError(r.reason) ? r.reason.kind : String(r.reason)))).toEqual(Array(20).fill('ok'));
      const versions = results.map((r) => (r.status === 'fulfilled' ? r.value.metadata.version : 0));
      expect([...versions].sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 2));
      const stored = await store().get({ ...k, id: 'x' });
      expect(stored.metadata.version).toBe(21);
      const changes = await changesAfter(k, start);
      expect(changes.map((c) => c.resource.metadata.version)).toEqual(Array.from({ length: 21 }, (_, i) => i + 1));
      expect(changes.map((c) => c.type)).toEqual(['created', ...Array<string>(20).fill('updated')]);
      // Each update's change is the state it returned, and the last one is what the store holds.
      for (const r of results) if (r.status === 'fulfilled') expect(changes[r.value.metadata.version - 1]?.resource.spec).toEqual(r.value.spec);
      expect(changes.at(-1)?.resource.spec).toEqual(stored.spec);
    });
  });
}
