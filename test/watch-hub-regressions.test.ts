// Regressions of the watch hub (server/watch/hub.ts), driven through its own interface (open/endAll and a WatchSink):
// - resuming an interrupted bootstrap (a bootstrap event's bookmark) on a cosid restarted on the same etcd sends the
//   rest of the snapshot and then the changes after it, instead of ending "too old" (prepare() reaches the bookmark);
// - a watch still preparing when endAll() runs (cosid stopping) ends unavailable and leaves no subscription on the
//   kind's history behind.
import { caughtUp } from './caught-up.js';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { CosiError } from '../shared/errors.js';
import { EventType, wire } from '../shared/wire.js';
import type { Registry } from '../server/resources/registry.js';
import { EtcdStore } from '../server/store/etcd.js';
import { MemoryStore } from '../server/store/memory.js';
import { compileSelector } from '../server/store/query.js';
import type { ChangeFeed, HistoryListener, KindHistory } from '../server/store/store.js';
import { decodeBookmark, encodeBookmark } from '../server/watch/bookmark.js';
import { Frames } from '../server/watch/frames.js';
import type { WatchPlan } from '../server/watch/plan.js';
import { WatchHub } from '../server/watch/hub.js';
import type { WatchSink } from '../server/watch/session.js';

const etcd = inject('etcd');
const opened: { close(): unknown }[] = [];
afterAll(async () => {
  for (const c of opened.reverse()) await c.close();
});

const K = { namespace: 'ns', type: 'Things.test.dev' };
const frames = () => new Frames({ lookup: () => undefined } as unknown as Registry);

function plan(resumeFrom: WatchPlan['resumeFrom']): WatchPlan {
  return {
    kind: K,
    id: undefined,
    selector: compileSelector([], undefined),
    bootstrapContents: false,
    tailEvents: 0,
    aggregated: false,
    bootstrapBookmark: false,
    resumeFrom,
    apiVersion: 1,
    form: 'full',
    idleBookmarks: false,
  };
}

/** A sink that records events ("TYPE id@version") and its end, and says when a condition on them first holds. */
function recordingSink() {
  const events: string[] = [];
  const ended: (CosiError | undefined)[] = [];
  const waiters: { cond: () => boolean; resolve: () => void }[] = [];
  const check = () => {
    for (const w of [...waiters]) {
      if (w.cond()) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  const sink: WatchSink = {
    write(message) {
      for (const e of wire.watchResponse.decode(message.payload).event) {
        events.push(`${EventType[e.eventType]}${e.resource?.metadata?.id ? ` ${e.resource.metadata.id}@${e.resource.metadata.version}` : ''}`);
      }
      check();
      return true;
    },
    onDrain() {},
    end(error) {
      ended.push(error);
      check();
    },
    buffered: () => 0,
    bufferedBytes: () => 0,
  };
  const until = (cond: () => boolean) => (cond() ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ cond, resolve })));
  return { sink, events, ended, until };
}

describe.skipIf(etcd === null)('watch hub regressions on etcd', () => {
  const e = etcd as NonNullable<typeof etcd>;
  const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };

  it('resumes an interrupted bootstrap after a restart: the rest of the snapshot, then the changes after it', async () => {
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const first = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(first);
    for (const id of ['a', 'b', 'c']) await first.create({ ...K, id, spec: { id } }, 'me');
    const snapshot = (await caughtUp(first, K)).revision;
    // The bookmark the first bootstrap event (after 'a') carried, then a change after the snapshot.
    const bookmark = encodeBookmark(first.feed.instance, { revision: snapshot, bootstrapAfterId: 'a' });
    await first.update({ ...K, id: 'b', spec: { id: 'b2' } }, 'me');
    await first.close();

    // The restarted cosid: its window begins after the update, so the snapshot and the update come from etcd.
    const second = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(second);
    const hub = new WatchHub(second.feed, frames());
    opened.push({ close: () => hub.endAll() });
    const s = recordingSink();
    hub.open(plan(decodeBookmark(second.feed.instance, bookmark)), s.sink);
    // Done when the update arrives, or when the watch ends instead.
    await s.until(() => s.events.includes('UPDATED b@2') || s.ended.length > 0);
    expect({ events: s.events, ended: s.ended }).toEqual({
      events: ['CREATED b@1', 'CREATED c@1', 'BOOTSTRAPPED', 'UPDATED b@2'],
      ended: [],
    });
  });
});

describe('watch hub regressions', () => {
  it('leaves no subscription on the history when endAll() runs while a watch prepares', async () => {
    const store = new MemoryStore();
    // The feed as the hub sees it, counting the subscriptions still in place on the kind's history.
    let subscribed = 0;
    const feed: ChangeFeed = {
      instance: store.feed.instance,
      opened: () => store.feed.opened(),
      reach: (k, after) => store.feed.reach(k, after),
      listAt: (k, rev) => store.feed.listAt(k, rev),
      async history(k) {
        const h = await store.feed.history(k);
        return new Proxy(h, {
          get(target, prop, receiver) {
            if (prop !== 'subscribe') return Reflect.get(target, prop, receiver) as unknown;
            return (listener: HistoryListener) => {
              const off = target.subscribe(listener);
              subscribed++;
              let done = false;
              return () => {
                if (!done) subscribed--;
                done = true;
                off();
              };
            };
          },
        }) as KindHistory;
      },
    };
    const hub = new WatchHub(feed, frames());
    const s = recordingSink();
    hub.open(plan(undefined), s.sink);
    hub.endAll();
    await s.until(() => s.ended.length > 0);
    expect(s.ended.map((err) => [err?.kind, err?.message])).toEqual([['unavailable', 'cosid is shutting down; reconnect and resume from your last bookmark']]);
    expect(s.events).toEqual([]);
    expect(subscribed).toBe(0);
    expect(hub.stats().sessions).toBe(0);
  });
});
