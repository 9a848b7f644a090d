// CurrentFrames (server/watch/current-frames.ts) on its own: which resource versions it keeps encoded and when, and
// the ID order it keeps for List, held to the store's own (KindLog.list) through random changes and a restart.
import { describe, expect, it } from 'vitest';
import { CosiError } from '../shared/errors.js';
import type { Resource } from '../shared/resource.js';
import { historyLimits, KindLog } from '../server/store/kind-log.js';
import { MemoryStore } from '../server/store/memory.js';
import type { Change } from '../server/store/store.js';
import type { Registry } from '../server/resources/registry.js';
import { CurrentFrames } from '../server/watch/current-frames.js';
import { Frames } from '../server/watch/frames.js';
import { prng } from './fuzz/fuzzer.js';

const K = { namespace: 'ns', type: 'Things.test.dev' };
const frames = () => new Frames({ lookup: () => undefined } as unknown as Registry);

function resource(id: string, version: number): Resource {
  const at = new Date(0);
  return Object.freeze({ metadata: { ...K, id, version, owner: 'o', phase: 'running' as const, created: at, updated: at, labels: {}, annotations: {}, finalizers: [] }, spec: { id, version } });
}

/** Resolves once the catch-up slices have nothing left (bounded: a slice runs every event-loop turn). */
async function caughtUp(current: CurrentFrames): Promise<void> {
  for (let turns = 0; current.stats().pending > 0; turns++) {
    if (turns > 10_000) throw new Error('catch-up never finished');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('CurrentFrames', () => {
  it('encodes each version of a tracked kind as it is committed, and drops a superseded one once the commit is done', async () => {
    const store = new MemoryStore();
    const f = frames();
    const current = new CurrentFrames(f);
    current.track(store.log(K));
    const v1 = await store.create({ ...K, id: 'a', spec: { n: 1 } }, 'o');
    expect(f.has(v1)).toBe(true);
    const v2 = await store.update({ ...K, id: 'a', spec: { n: 2 } }, 'o');
    expect(f.has(v2)).toBe(true);
    // The commit's listeners (a watch event carries the old version) have all run by now.
    await Promise.resolve();
    expect(f.has(v1)).toBe(false);
    const encoded = f.encoded;
    f.message(v2);
    f.resource(v2);
    expect(f.encoded).toBe(encoded);
    // A kind nobody tracks is encoded by its first reader only.
    const other = await store.create({ namespace: 'ns', type: 'Others.test.dev', id: 'b', spec: {} }, 'o');
    expect(f.has(other)).toBe(false);
    current.close();
  });

  it("encodes a kind's resources from before its tracking in the background, and after its history starts over", async () => {
    const log = new KindLog(K, historyLimits(), 10, Array.from({ length: 300 }, (_, i) => resource(`r${i}`, 1)));
    const f = frames();
    // Slices of at most 1 ms: several turns.
    const current = new CurrentFrames(f, { sliceMs: 1 });
    current.track(log);
    expect(current.stats()).toEqual({ kinds: 1, pending: 1 });
    await caughtUp(current);
    expect(log.list().every((r) => f.has(r))).toBe(true);
    const fresh = Array.from({ length: 50 }, (_, i) => resource(`s${i}`, 1));
    log.reset(20, fresh, new CosiError('too-old', 'compacted'));
    expect(current.list(log)).toEqual(log.list());
    await caughtUp(current);
    expect(fresh.every((r) => f.has(r))).toBe(true);
    current.close();
  });

  it("keeps the store's ID order through random creates, updates, destroys, undecodable values and a restart", () => {
    const random = prng(22);
    const ids = ['a', 'B', 'b', 'a/b', 'a-b', 'é', 'z', '0', '10', '9', 'pod-1', 'pod-10', 'pod-2', '日本', 'Z', '', '~'];
    const log = new KindLog(K, historyLimits(), 0, []);
    const current = new CurrentFrames(frames());
    current.track(log);
    let revision = 0;
    let held: readonly Resource[] = [];
    for (let step = 0; step < 3000; step++) {
      const id = ids[Math.floor(random() * ids.length)] ?? 'a';
      const old = log.current(id);
      const roll = random();
      revision++;
      let change: Change;
      if (old !== undefined && roll < 0.3) change = { revision, type: 'destroyed', resource: old, old, committedAt: 0 };
      else if (roll < 0.35) change = { revision, type: old === undefined ? 'created' : 'updated', resource: resource(id, 0), old, committedAt: 0, error: 'does not decode' };
      else change = { revision, type: old === undefined ? 'created' : 'updated', resource: resource(id, (old?.metadata.version ?? 0) + 1), old, committedAt: 0 };
      log.commit(change);
      if (step === 1500) log.reset(revision, log.list().slice(2), new CosiError('too-old', 'compacted'));
      expect(current.list(log)).toEqual(log.list());
      // A List reading the array it got goes on seeing the state it began with.
      if (step % 7 === 0) held = current.list(log);
      if (step % 7 === 3) expect(held).not.toBe(current.list(log));
    }
    current.close();
  });
});
