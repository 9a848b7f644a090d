// A history check in the manner of etcd's robustness tests: random churn while watchers stall, lose their
// connection and resume, and the server restarts; then every watcher's recorded history is checked for the
// watch guarantees, and its final view must equal a fresh List. Seeded (HISTORY_SEED) and bounded in time.
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { EtcdStore } from '../server/store/etcd.js';
import type { ResourceStore } from '../server/store/store.js';
import type { Subscription } from 'rxjs';
import { connect, type CosiClient, type LabelQuery, type WatchEvent } from '../client/index.js';
import type { Json } from '../shared/wire.js';
import { eventually, makePki, startServer, STATUSES, TEST_OWNER, type TestPki, type TestServer } from './harness.js';
import { freePort } from './pipeline-harness.js';
import { prng } from './fuzz/fuzzer.js';
import { StallableProxy } from './proxy.js';
import { decodeBookmark } from './soak/checker.js';

const SEED = Number(process.env['HISTORY_SEED'] ?? 20261125);
const STEPS = 900;
const IDS = 24;
const WATCHERS = 6;


interface Watcher {
  proxy: StallableProxy;
  client: CosiClient;
  query: LabelQuery[] | undefined;
  events: WatchEvent[];
  errors: unknown[];
  sub: Subscription;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Our bookmark layout (server/watch/bookmark.ts), shared with the soak's checker. */
const decode = decodeBookmark;

const etcd = inject('etcd');

/**
 * The backends the check runs on. Memory forgets everything at a restart (the producer writes its state again, and
 * watchers re-list); etcd keeps it, and its bookmarks stay valid across restarts: watchers resume without a re-list.
 */
const backends: { name: string; persistent: boolean; store?: (() => Promise<ResourceStore>) | undefined; skip: boolean }[] = [
  { name: 'memory', persistent: false, skip: false },
  {
    name: 'etcd',
    persistent: true,
    skip: etcd === null,
    store:
      etcd === null
        ? undefined
        : (() => {
            const prefix = `/history-${randomBytes(6).toString('hex')}/`;
            const tls = { caPem: etcd.tls.caPem, certPem: etcd.tls.certPem, keyPem: etcd.tls.keyPem };
            // A small window, as for memory: watchers that fall behind still meet "too old".
            return () => EtcdStore.connect({ endpoints: etcd.endpoints, tls, prefix, history: { historySize: 60, historyAgeMs: 0 } });
          })(),
  },
];

describe.each(backends)(`watch history under churn, stalls, cuts and restarts (seed ${SEED}), $name store`, ({ persistent, store, skip }) => {
  it.skipIf(skip)('gives every watcher an ordered, unique, reliable, bookmarkable history that converges to a fresh List', async () => {
    const rand = prng(SEED);
    const pick = <T>(xs: readonly T[]): T => {
      const x = xs[Math.floor(rand() * xs.length)];
      if (x === undefined) throw new Error('empty');
      return x;
    };
    const pki: TestPki = await makePki();
    const port = await freePort();
    const options = { pki, listen: `127.0.0.1:${port}`, historySize: 60, historyAgeMs: 0, maxBacklog: 40, store };
    let srv: TestServer = await startServer(options);
    cleanups.push(() => srv.close());
    // The producer's truth, replayed into a restarted server (as cosid rebuilds from its config).
    const model = new Map<string, { spec: Json; labels: Record<string, string> }>();

    const watchers: Watcher[] = [];
    for (let i = 0; i < WATCHERS; i++) {
      const proxy = await StallableProxy.start(() => ({ host: '127.0.0.1', port }));
      const client = connect({ endpoint: proxy.endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
      const query: LabelQuery[] | undefined = i % 3 === 2 ? [{ terms: [{ key: 'tier', op: 'equal', values: ['a'] }] }] : undefined;
      const w: Watcher = { proxy, client, query, events: [], errors: [], sub: undefined as unknown as Subscription };
      w.sub = client
        .watch('podstatus', { bootstrap: true, ...(query ? { labelQuery: query } : {}), aggregated: i % 2 === 1, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } })
        .subscribe({ next: (e) => w.events.push(e), error: (e: unknown) => w.errors.push(e) });
      watchers.push(w);
      cleanups.push(async () => {
        w.sub.unsubscribe();
        client.close();
        await proxy.close();
      });
    }

    // Every watcher is streaming before the churn starts.
    await eventually(() => expect(watchers.every((w) => w.events.some((e) => e.type === 'bootstrapped'))).toBe(true));
    // ...from an empty store (checkGuarantees relies on it: every created event it checks is a create).
    expect(watchers.map((w) => w.events.map((e) => e.type))).toEqual(watchers.map(() => ['bootstrapped']));
    let restarts = 0;
    for (let step = 0; step < STEPS; step++) {
      const r = rand();
      if (r < 0.75) {
        const id = `p${Math.floor(rand() * IDS)}`;
        const labels = { tier: rand() < 0.5 ? 'a' : 'b' };
        const spec = { phase: pick(['Pending', 'Running']), step };
        if (model.has(id) && rand() < 0.25) {
          model.delete(id);
          await srv.cosid.store.destroy({ ...STATUSES, id }, TEST_OWNER);
        } else if (model.has(id)) {
          model.set(id, { spec, labels });
          await srv.cosid.store.update({ ...STATUSES, id, spec, labels }, TEST_OWNER);
        } else {
          model.set(id, { spec, labels });
          await srv.cosid.store.create({ ...STATUSES, id, spec, labels }, TEST_OWNER);
        }
      } else if (r < 0.85) {
        pick(watchers).proxy.stall();
      } else if (r < 0.93) {
        pick(watchers).proxy.resume();
      } else {
        pick(watchers).proxy.cut();
      }
      // Two restarts, a third and two thirds of the way in, with state to re-list.
      if (step === Math.floor(STEPS / 3) || step === Math.floor((2 * STEPS) / 3)) {
        restarts++;
        if (process.env['HISTORY_DEBUG']) console.log('restart begin', Date.now());
        await srv.close();
        srv = await startServer(options);
        if (process.env['HISTORY_DEBUG']) console.log('restart end', Date.now());
        if (!persistent) for (const [id, v] of model) await srv.cosid.store.create({ ...STATUSES, id, spec: v.spec, labels: v.labels }, TEST_OWNER);
      }
      await new Promise((res) => (step % 10 === 0 ? setTimeout(res, 2) : setImmediate(res)));
      if (process.env['HISTORY_DEBUG'] && step % 100 === 0) console.log('step', step, Date.now());
    }
    if (process.env['HISTORY_DEBUG']) console.log('churn done', Date.now());
    for (const w of watchers) w.proxy.resume();

    const truth = async (q: LabelQuery[] | undefined) => {
      const c = connect({ endpoint: srv.endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
      try {
        const items = await c.list('podstatus', q ? { labelQuery: q } : {});
        return new Map(items.map((x) => [x.metadata.id, `${x.metadata.version}:${x.yamlSpec}`]));
      } finally {
        c.close();
      }
    };
    for (const [i, w] of watchers.entries()) {
      const want = await truth(w.query);
      await eventually(() => {
        const view = new Map<string, string>();
        for (const e of w.events) {
          if (e.resource === undefined) continue;
          if (e.type === 'destroyed') view.delete(e.resource.metadata.id);
          else if (e.type === 'created' || e.type === 'updated') view.set(e.resource.metadata.id, `${e.resource.metadata.version}:${e.resource.yamlSpec}`);
        }
        expect(view, `watcher ${i} converges to a fresh List`).toEqual(want);
      }, 30_000);
      expect(w.errors, `watcher ${i} never failed`).toEqual([]);
      checkGuarantees(i, w);
    }
    if (process.env['HISTORY_DEBUG']) {
      for (const w of watchers) console.log('events', w.events.length, 'resync', w.events.filter((e) => e.resync).length, 'types', [...new Set(w.events.map((e) => e.type))].join(','));
      console.log('model', model.size, 'revision', (await srv.cosid.store.feed.history(STATUSES)).revision);
    }
    // The run exercised what it claims to.
    expect(restarts).toBe(2);
    if (!persistent) expect(watchers.some((w) => w.events.some((e) => e.resync === true))).toBe(true);
    // On etcd every watcher resumed across both restarts from its bookmark: one history, one instance.
    if (persistent) for (const w of watchers) expect(new Set(w.events.filter((e) => e.bookmark !== undefined).map((e) => decode(e.bookmark as Uint8Array).instance)).size).toBe(1);
  });
});

function checkGuarantees(i: number, w: Watcher): void {
  const label = `watcher ${i}`;
  // Bookmarkable: every event the server sent carries a bookmark (resync events are made by the client).
  for (const e of w.events) if (e.resync !== true && e.type !== 'noop') expect(e.bookmark, `${label}: ${e.type} has a bookmark`).toBeDefined();
  expect(w.events.filter((e) => e.type === 'bootstrapped').length, `${label}: one BOOTSTRAPPED`).toBe(1);
  // Ordered and unique: within one server instance, tail revisions strictly increase.
  const last = new Map<string, number>();
  for (const e of w.events) {
    if (e.resync === true || e.bookmark === undefined || e.type === 'noop' || e.type === 'bootstrapped') continue;
    const b = decode(e.bookmark);
    if (b.bootstrap) continue;
    const prev = last.get(b.instance);
    if (prev !== undefined) expect(b.revision, `${label}: revisions increase (ordered, unique)`).toBeGreaterThan(prev);
    last.set(b.instance, b.revision);
  }
  // Reliable: without a label query, each resource's versions go up one at a time (a gap is a lost event),
  // except across a resync, which stands in for what a restarted or forgetful server cannot replay.
  if (w.query !== undefined) return;
  const versions = new Map<string, number>();
  for (const e of w.events) {
    const r = e.resource;
    if (r === undefined || e.type === 'noop') continue;
    const id = r.metadata.id;
    const v = r.metadata.version;
    if (e.resync === true) {
      if (e.type === 'destroyed') versions.delete(id);
      else versions.set(id, v);
      continue;
    }
    if (e.type === 'created') {
      // The watchers start on an empty store (their bootstrap is empty), and every create (a restarted server's
      // replay too) makes version 1: a created event is for a resource not in the view, at version 1.
      expect(versions.has(id), `${label}: ${id} created while in the view`).toBe(false);
      expect(v, `${label}: ${id} created`).toBe(1);
      versions.set(id, v);
    } else if (e.type === 'updated') {
      expect(v, `${label}: ${id} updated without a gap`).toBe((versions.get(id) ?? 0) + 1);
      versions.set(id, v);
    } else if (e.type === 'destroyed') {
      expect(v, `${label}: ${id} destroyed at its last version`).toBe(versions.get(id));
      versions.delete(id);
    }
  }
}
