// The watch cache (server/store/cacher.ts, kind-cache.ts) over a backend this test scripts through the Backend
// interface (server/store/backend.ts): what the cache does with a watch that disconnects, ends or falls behind,
// step by step and without etcd (the etcd tests run the same code on a real etcd, with real faults):
// - a disconnect within the grace is not the readers' business; past it they are told, and told again when back;
// - a watch the backend ends (its history was cut) is read again: watchers lose their history (too-old);
// - a resume from before the window is fetched from the backend's history, on and on while the window forgets
//   changes during the fetch (no gap between what was fetched and where the window begins now).
import { describe, expect, it } from 'vitest';
import { CosiError } from '../shared/errors.js';
import type { Kind, Resource } from '../shared/resource.js';
import type { Backend, BackendEvent, BackendWatch, KindSnapshot, PastChange, WatchSink } from '../server/store/backend.js';
import { Cacher } from '../server/store/cacher.js';
import { historyLimits } from '../server/store/kind-log.js';
import { silentLogger } from '../shared/log.js';

const K: Kind = { namespace: 'ns', type: 'Things.test.dev' };

function resource(id: string, version: number): Resource {
  const at = new Date(0);
  return { metadata: { ...K, id, version, owner: 'o', phase: 'running', created: at, updated: at, labels: {}, annotations: {}, finalizers: [] }, spec: { version } };
}

/** A backend whose every answer the test gives: watches and history calls wait for the test to act. */
class ScriptedBackend implements Backend {
  readonly name = 'scripted';
  readonly instance = 'scripted';
  snapshotAt: KindSnapshot = { revision: 0, items: [], modRevisions: new Map() };
  readonly sinks: WatchSink[] = [];
  readonly historyCalls: { after: number; answer: (changes: PastChange[], through: number) => void }[] = [];
  private called: (() => void) | undefined;

  snapshot(): Promise<KindSnapshot> {
    return Promise.resolve(this.snapshotAt);
  }

  watch(_kind: Kind, _after: number, sink: WatchSink): Promise<BackendWatch> {
    this.sinks.push(sink);
    this.called?.();
    return Promise.resolve({ cancel: () => undefined });
  }

  history(_kind: Kind, after: number): Promise<{ changes: PastChange[]; through: number }> {
    return new Promise((resolve) => {
      this.historyCalls.push({ after, answer: (changes, through) => resolve({ changes, through }) });
      this.called?.();
    });
  }

  /** Resolves once `done()` holds, checked at each call of watch() or history(). */
  until(done: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (done()) resolve();
      };
      this.called = check;
      check();
    });
  }

  fence(): Promise<number> {
    return Promise.reject(new CosiError('unavailable', 'no fences here'));
  }

  listAt(): Promise<Resource[]> {
    return Promise.reject(new CosiError('too-old', 'no history here'));
  }

  /** The sink of the watch opened last. */
  get sink(): WatchSink {
    const s = this.sinks.at(-1);
    if (s === undefined) throw new Error('no watch open');
    return s;
  }
}

const put = (id: string, revision: number, version: number): BackendEvent => ({ type: 'put', id, revision, value: resource(id, version) });

function open(backend: Backend, opts: { graceMs?: number; historySize?: number } = {}): Cacher {
  const limits = historyLimits({ historySize: opts.historySize ?? 16, historyAgeMs: 0 });
  return new Cacher(backend, { limits, graceMs: opts.graceMs ?? 60_000, log: silentLogger });
}

describe('the watch cache over a backend', () => {
  it('keeps a disconnect within the grace from readers, and tells them past it, and when the watch is back', async () => {
    const backend = new ScriptedBackend();
    const history = await open(backend, { graceMs: 60_000 }).history(K);
    backend.sink.disconnected(new Error('member failing over'));
    backend.sink.reconnected();
    expect(history.unavailable).toBeUndefined();

    const impatient = new ScriptedBackend();
    const h = await open(impatient, { graceMs: 1 }).history(K);
    const lost = new Promise<CosiError>((resolve) => h.subscribe({ lost: resolve }));
    impatient.sink.disconnected(new Error('connection refused'));
    expect((await lost).kind).toBe('unavailable');
    expect(h.unavailable?.message).toMatch(/^scripted is unreachable \(connection refused\)/);
    impatient.sink.reconnected();
    expect(h.unavailable).toBeUndefined();
  });

  it('reads the kind again when the backend ends the watch, and tells its watchers their history is gone', async () => {
    const backend = new ScriptedBackend();
    backend.snapshotAt = { revision: 5, items: [resource('a', 1)], modRevisions: new Map([['a', 5]]) };
    const cacher = open(backend);
    const history = await cacher.history(K);
    backend.sink.events([put('a', 6, 2)]);
    expect(cacher.cached(K)?.modRevision('a')).toBe(6);
    const lost = new Promise<CosiError>((resolve) => history.subscribe({ lost: resolve }));
    backend.snapshotAt = { revision: 20, items: [resource('b', 1)], modRevisions: new Map([['b', 19]]) };
    backend.sink.ended(new Error('compacted'));
    expect((await lost).kind).toBe('too-old');
    await backend.until(() => backend.sinks.length === 2);
    expect({ revision: history.revision, ids: history.list().map((r) => r.metadata.id), mod: cacher.cached(K)?.modRevision('b') }).toEqual({ revision: 20, ids: ['b'], mod: 19 });
    // The new watch feeds the log; the ended one is no longer heard.
    backend.sink.events([put('b', 21, 2)]);
    expect(history.current('b')?.metadata.version).toBe(2);
    backend.sinks[0]?.disconnected(new Error('late news of the old watch'));
    expect(history.unavailable).toBeUndefined();
  });

  it('fetches a resume from before the window on while the window forgets changes during the fetch', async () => {
    const backend = new ScriptedBackend();
    backend.snapshotAt = { revision: 10, items: [resource('a', 10)], modRevisions: new Map([['a', 10]]) };
    const cacher = open(backend, { historySize: 1 });
    const history = await cacher.history(K);
    const reached = cacher.reach(K, 5);
    await backend.until(() => backend.historyCalls.length === 1);
    // While etcd replays 6..11, the kind's watch brings 11, 12 and 13: a window of one forgets 11 and 12.
    backend.sink.events([put('a', 11, 11), put('a', 12, 12), put('a', 13, 13)]);
    expect(history.oldestRevision).toBe(12);
    const change = (revision: number): PastChange => ({ id: 'a', revision, value: resource('a', revision), old: resource('a', revision - 1) });
    backend.historyCalls[0]?.answer([6, 7, 8, 9, 10, 11].map(change), 11);
    // Revision 12 is neither in what was fetched nor in the window: fetched on from 11.
    await Promise.race([backend.until(() => backend.historyCalls.length === 2), reached]);
    expect(backend.historyCalls.map((c) => c.after)).toEqual([5, 11]);
    backend.historyCalls[1]?.answer([12, 13].map(change), 13);
    await reached;
    expect(history.readChanges(5, 100).changes.map((c) => c.revision)).toEqual([6, 7, 8, 9, 10, 11, 12, 13]);
  });
});
