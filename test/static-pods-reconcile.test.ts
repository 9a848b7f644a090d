// The StaticPod reconcile is all or nothing: a plan the store would refuse writes nothing, a write that fails midway
// is undone, and when undoing fails too the error and the log say exactly which changes stayed.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StaticPodEntry } from '../server/config/machine-config.js';
import { MachineConfigController } from '../server/controllers/machine-config.js';
import { ReconcileError, reconcileStaticPods, STATIC_POD_OWNER } from '../server/controllers/static-pods.js';
import { CONFIG_NAMESPACE, INVALID_LABEL, MACHINE_CONFIG_STATUS_ID, MACHINE_CONFIG_STATUS_TYPE } from '../server/resources/k8s.js';
import { MemoryStore } from '../server/store/memory.js';
import type { ChangeFeed, ResourceInput, ResourceStore, UpdateOptions } from '../server/store/store.js';
import type { Kind, Pointer, Resource } from '../shared/resource.js';
import { CosiError, isCosiError } from '../shared/errors.js';
import { createLogger, silentLogger } from '../shared/log.js';
import { pod, STATIC_PODS } from './harness.js';

/**
 * A store whose writes (create, update, teardown, finalizers, destroy) fail from the `failAt`-th on: at that one only,
 * or at every one after. Everything else is the inner store's.
 */
class FailingStore implements ResourceStore {
  writes = 0;
  failAt = Infinity;
  failAfter = false;
  /** What the failing write throws (default: a plain Error, as a store bug would). */
  failure: (what: string) => Error = (what) => new Error(`injected failure: ${what}`);
  /** Reads fail too once a write has failed. */
  readsFailAfterWrite = false;
  private readsBroken = false;
  constructor(readonly inner: MemoryStore) {}
  get backend(): string {
    return this.inner.backend;
  }
  get feed(): ChangeFeed {
    return this.inner.feed;
  }
  /** The inner store's last commit (memory only). */
  get revision(): number {
    return this.inner.revision;
  }
  async get(p: Pointer): Promise<Resource> {
    if (this.readsBroken) throw this.failure('read');
    return this.inner.get(p);
  }
  list(k: Kind): Promise<Resource[]> {
    return this.inner.list(k);
  }
  async create(input: ResourceInput, owner: string): Promise<Resource> {
    this.write(`create ${input.id}`);
    return this.inner.create(input, owner);
  }
  async update(input: ResourceInput, owner: string, opts?: UpdateOptions): Promise<Resource> {
    this.write(`update ${input.id}`);
    return this.inner.update(input, owner, opts);
  }
  async teardown(p: Pointer, owner: string): Promise<{ resource: Resource; destroyReady: boolean }> {
    this.write(`teardown ${p.id}`);
    return this.inner.teardown(p, owner);
  }
  async addFinalizers(p: Pointer, finalizers: readonly string[]): Promise<Resource> {
    this.write(`add finalizers to ${p.id}`);
    return this.inner.addFinalizers(p, finalizers);
  }
  async removeFinalizers(p: Pointer, finalizers: readonly string[]): Promise<Resource> {
    this.write(`remove finalizers from ${p.id}`);
    return this.inner.removeFinalizers(p, finalizers);
  }
  async destroy(p: Pointer, owner: string): Promise<void> {
    this.write(`destroy ${p.id}`);
    await this.inner.destroy(p, owner);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  private write(what: string): void {
    this.writes++;
    if (this.writes === this.failAt || (this.failAfter && this.writes > this.failAt)) {
      this.readsBroken = this.readsFailAfterWrite;
      throw this.failure(what);
    }
  }
}

const entry = (id: string, image: string): StaticPodEntry => ({ id, pod: pod(id, image), origin: `test (${id})` });
/** Before: a, b, c. After: a gone, b changed, c as it was, d new: three changes (destroy a, update b, create d). */
const OLD = [entry('a', 'a:1'), entry('b', 'b:1'), entry('c', 'c:1')];
const NEW = [entry('b', 'b:2'), entry('c', 'c:1'), entry('d', 'd:1')];
const WRITES = 3 + 1; // and the update of c, which changes nothing but is a call

/** The StaticPods by ID: spec, labels and annotations (versions move on when a write is undone). */
async function content(store: ResourceStore): Promise<Record<string, unknown>> {
  return Object.fromEntries((await store.list(STATIC_PODS)).map((r: Resource) => [r.metadata.id, { owner: r.metadata.owner, spec: r.spec, labels: r.metadata.labels, annotations: r.metadata.annotations }]));
}

async function seeded(): Promise<{ store: FailingStore; before: Record<string, unknown>; after: Record<string, unknown> }> {
  const reference = new MemoryStore();
  await reconcileStaticPods(reference, NEW, silentLogger);
  const store = new FailingStore(new MemoryStore());
  await reconcileStaticPods(store, OLD, silentLogger);
  store.writes = 0;
  return { store, before: await content(store), after: await content(reference) };
}

describe('reconcileStaticPods is all or nothing', () => {
  it('applies the whole change when nothing fails', async () => {
    const { store, after } = await seeded();
    const result = await reconcileStaticPods(store, NEW, silentLogger);
    expect(result).toMatchObject({ created: ['d'], updated: ['b'], destroyed: ['a'] });
    expect(await content(store)).toEqual(after);
    expect(store.writes).toBe(WRITES);
  });

  it('refuses a plan the store would refuse before any write: a StaticPod of that ID owned by someone else', async () => {
    const { store } = await seeded();
    await store.inner.create({ ...STATIC_PODS, id: 'd', spec: { mine: true } }, 'someone.Else');
    const revision = store.revision;
    const theirs = await content(store);
    const err = await catchError(() => reconcileStaticPods(store, NEW, silentLogger));
    expect(err).toBeInstanceOf(ReconcileError);
    expect(err.message).toBe('test (d): static pod d exists and is owned by "someone.Else", not "k8s.StaticPodController"; no static pod was changed');
    expect(err.unchanged).toBe(true);
    expect(store.revision).toBe(revision);
    // Not even a, which the new config drops and which comes before d.
    expect(await content(store)).toEqual(theirs);
    expect(Object.keys(theirs)).toEqual(['a', 'b', 'c', 'd']);
  });

  it('refuses duplicate IDs before any write', async () => {
    const { store } = await seeded();
    const revision = store.revision;
    const err = await catchError(() => reconcileStaticPods(store, [entry('x', 'x:1'), entry('x', 'x:2')], silentLogger));
    expect(err.message).toMatch(/duplicate static pod x; no static pod was changed$/);
    expect(store.revision).toBe(revision);
  });

  it.each(Array.from({ length: WRITES }, (_, i) => i + 1))('undoes the writes before a failure at write %i: the store holds the old set', async (n) => {
    const { store, before } = await seeded();
    store.failAt = n;
    const err = await catchError(() => reconcileStaticPods(store, NEW, silentLogger));
    expect(err).toBeInstanceOf(ReconcileError);
    expect(err.unchanged).toBe(true);
    expect(err.applied).toEqual({ created: [], updated: [], destroyed: [] });
    expect(err.message).toMatch(/^cannot (create|update|destroy) static pod [a-d]: injected failure: /);
    expect(err.message).toMatch(/; (no static pod had been changed yet|the \d change\(s\) made were undone)$/);
    expect(await content(store)).toEqual(before);
  });

  // Writes in order: destroy a, update b, update c (no change), create d.
  it.each([
    [1, { created: [], updated: [], destroyed: [] }, /^cannot destroy static pod a: injected failure: destroy a; no static pod had been changed yet$/],
    [2, { created: [], updated: [], destroyed: ['a'] }, /^cannot update static pod b: .*; cannot undo the destroy of a: injected failure: create a; the store keeps these changes of the new config: destroyed a$/],
    [3, { created: [], updated: ['b'], destroyed: ['a'] }, /^cannot update static pod c: .*; cannot undo the update of b: .*; cannot undo the destroy of a: .*; the store keeps these changes of the new config: updated b; destroyed a$/],
    [4, { created: [], updated: ['b'], destroyed: ['a'] }, /^cannot create static pod d: .*; cannot undo the update of b: .*; cannot undo the destroy of a: .*; the store keeps these changes of the new config: updated b; destroyed a$/],
  ])('when undoing fails too (every write from %i on fails), says exactly which changes stayed', async (n, applied, message) => {
    const { store, before, after } = await seeded();
    store.failAt = n;
    store.failAfter = true;
    const err = await catchError(() => reconcileStaticPods(store, NEW, silentLogger));
    expect(err.applied).toEqual(applied);
    expect(err.unchanged).toBe(n === 1);
    expect(err.message).toMatch(message);
    // The store is the old set with exactly the changes the error names.
    const expected: Record<string, unknown> = { ...before };
    for (const id of [...applied.created, ...applied.updated]) expected[id] = after[id];
    for (const id of applied.destroyed) delete expected[id];
    expect(await content(store)).toEqual(expected);
  });

  it('undoes a write that threw after it reached the store', async () => {
    const { store, before } = await seeded();
    // A commit listener that throws: the create of d is committed, and the call throws.
    const off = (await store.feed.history(STATIC_PODS)).subscribe({
      committed(c) {
        if (c.type === 'created' && c.resource.metadata.id === 'd') throw new Error('listener failed');
      },
    });
    const err = await catchError(() => reconcileStaticPods(store, NEW, silentLogger));
    off();
    expect(err.unchanged).toBe(true);
    expect(await content(store)).toEqual(before);
  });

  it('says so when the store cannot tell whether the failed write took effect', async () => {
    const { store, before } = await seeded();
    store.failAt = 2;
    store.readsFailAfterWrite = true;
    const err = await catchError(() => reconcileStaticPods(store, NEW, silentLogger));
    expect(err.uncertain).toBe('b');
    expect(err.unchanged).toBe(false);
    expect(err.message).toBe(
      'cannot update static pod b: injected failure: update b (and the store cannot tell whether that update took effect); the 1 change(s) made were undone',
    );
    expect(await content(store.inner)).toEqual(before);
  });

  it('gives the store\'s own "unavailable" back when the store goes away at the first write, so the caller waits and runs it again', async () => {
    const { store, before, after } = await seeded();
    store.failAt = 1;
    store.readsFailAfterWrite = true;
    store.failure = (what) => new CosiError('unavailable', `etcd is unreachable (${what})`);
    const err = await reconcileStaticPods(store, NEW, silentLogger).catch((e: unknown) => e);
    // Not a ReconcileError (which would make the config controller give the config up): the store's error.
    expect(err).not.toBeInstanceOf(ReconcileError);
    expect(isCosiError(err, 'unavailable')).toBe(true);
    expect(await content(store.inner)).toEqual(before);
    // The store is back: the same reconcile, run again as untilWritten does, lands the new config.
    store.failAt = Infinity;
    store.readsFailAfterWrite = false;
    const healthy = new FailingStore(store.inner);
    await reconcileStaticPods(healthy, NEW, silentLogger);
    expect(await content(healthy)).toEqual(after);
  });

  it('restores labels, annotations and invalid pods as they were', async () => {
    const store = new FailingStore(new MemoryStore());
    const invalid: StaticPodEntry = { id: 'bad', pod: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'bad' }, spec: {} }, origin: 'test (bad)' };
    await reconcileStaticPods(store, [invalid, entry('a', 'a:1')], silentLogger);
    expect((await store.get({ ...STATIC_PODS, id: 'bad' })).metadata.labels).toEqual({ [INVALID_LABEL]: 'true' });
    const before = await content(store);
    store.writes = 0;
    store.failAt = 3;
    // Destroys a, fixes "bad" (its label goes), creates e: the third write fails.
    const err = await catchError(() => reconcileStaticPods(store, [entry('bad', 'bad:1'), entry('e', 'e:1')], silentLogger));
    expect(err.unchanged).toBe(true);
    expect(await content(store)).toEqual(before);
  });
});

describe('the machine config controller says what happened', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cosi-reconcile-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const config = (pods: [string, string][]) =>
    `version: v1alpha1\nmachine:\n  type: worker\n  pods:\n${pods.map(([name, image]) => `    - apiVersion: v1\n      kind: Pod\n      metadata: {name: ${name}}\n      spec:\n        containers: [{name: ${name}, image: "${image}"}]\n`).join('')}`;

  async function controller(file: string) {
    const path = join(dir, file);
    await writeFile(path, config([['a', 'a:1'], ['b', 'b:1']]));
    const store = new FailingStore(new MemoryStore());
    const lines: string[] = [];
    const ctl = new MachineConfigController(store, path, createLogger({ write: (l) => lines.push(l) }));
    expect(await ctl.reload('start')).toBe(true);
    store.writes = 0;
    const status = async () => (await store.get({ namespace: CONFIG_NAMESPACE, type: MACHINE_CONFIG_STATUS_TYPE, id: MACHINE_CONFIG_STATUS_ID })).spec as { error: string; pods: number };
    return { path, store, lines, ctl, status, errors: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['level'] === 'error') };
  }

  it('keeps the last good state, and says so, when a write fails and is undone', async () => {
    const { path, store, ctl, status, errors } = await controller('undone.yaml');
    const before = await content(store);
    await writeFile(path, config([['b', 'b:2'], ['c', 'c:1']]));
    store.failAt = 2;
    expect(await ctl.reload('test')).toBe(false);
    expect(await content(store)).toEqual(before);
    expect(errors()).toEqual([expect.objectContaining({ msg: 'machine config rejected; keeping the last good state', error: expect.stringMatching(/injected failure: .*; the 1 change\(s\) made were undone$/) })]);
    expect(await status()).toMatchObject({ pods: 2, error: expect.stringMatching(/injected failure/) });
  });

  it('says which changes stayed when undoing fails too, and applies the config on the next reload', async () => {
    const { path, store, ctl, status, errors } = await controller('partial.yaml');
    await writeFile(path, config([['b', 'b:2'], ['c', 'c:1']]));
    // destroy default-a, update default-b, create default-c: the second and every later write fail.
    store.failAt = 2;
    store.failAfter = true;
    expect(await ctl.reload('test')).toBe(false);
    const [line] = errors();
    expect(line).toMatchObject({
      msg: 'machine config applied in part: the last good state is NOT kept',
      created: { count: 0, first: [] },
      updated: { count: 0, first: [] },
      destroyed: { count: 1, first: ['default-a'] },
      error: expect.stringMatching(/cannot undo the destroy of default-a: injected failure: create default-a; the store keeps these changes of the new config: destroyed default-a$/),
    });
    expect((await store.list(STATIC_PODS)).map((r) => [r.metadata.id, r.metadata.owner, (r.spec as { spec: { containers: { image: string }[] } }).spec.containers[0]?.image])).toEqual([
      ['default-b', STATIC_POD_OWNER, 'b:1'],
    ]);
    // The status could not be written either (the store refuses every write): that is logged on its own.
    expect(errors()[1]).toMatchObject({ msg: 'cannot publish the machine config status' });
    store.failAt = Infinity;
    store.failAfter = false;
    expect(await ctl.reload('test')).toBe(true);
    expect((await store.list(STATIC_PODS)).map((r) => r.metadata.id)).toEqual(['default-b', 'default-c']);
    expect(await status()).toMatchObject({ pods: 2, error: '' });
  });
});

async function catchError(f: () => Promise<unknown>): Promise<ReconcileError> {
  try {
    await f();
  } catch (err) {
    if (err instanceof ReconcileError) return err;
    throw err;
  }
  throw new Error('expected a ReconcileError');
}
