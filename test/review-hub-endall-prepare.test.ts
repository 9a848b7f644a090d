// Review: WatchHub.open prepares asynchronously; a watch still preparing when endAll() runs (cosid stopping) ends
// with unavailable, but prepare() has already re-registered the kind in the hub (watchersOf) after endAll cleared it:
// the hub stays subscribed to the kind's history after shutdown, and every later commit still runs its listener.
import { describe, expect, it } from 'vitest';
import type { Registry } from '../server/resources/registry.js';
import { MemoryStore } from '../server/store/memory.js';
import { compileSelector } from '../server/store/query.js';
import { Frames } from '../server/watch/frames.js';
import { WatchHub, type WatchSink } from '../server/watch/hub.js';

describe('review: hub shutdown while a watch prepares', () => {
  it('leaves no subscription on the history once endAll() ran', async () => {
    const store = new MemoryStore();
    const K = { namespace: 'ns', type: 'Things.test.dev' };
    const frames = new Frames({ lookup: () => undefined } as unknown as Registry);
    const hub = new WatchHub(store.feed, frames);
    const ended: unknown[] = [];
    const sink: WatchSink = { write: () => true, onDrain() {}, end: (e) => ended.push(e), buffered: () => 0, bufferedBytes: () => 0 };
    hub.open({ kind: K, id: undefined, selector: compileSelector([], undefined), bootstrapContents: false, tailEvents: 0, aggregated: false, bootstrapBookmark: false, resumeFrom: undefined, apiVersion: 1 }, sink);
    hub.endAll();
    await new Promise((r) => setTimeout(r, 50));
    expect(ended.length).toBe(1);
    const listeners = (store.log(K) as unknown as { listeners: Set<unknown> }).listeners;
    expect(listeners.size).toBe(0);
  });
});
