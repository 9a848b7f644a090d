// Watch semantics end to end: bootstrap, events, queries, bookmarks, tail, api_version, slow watchers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { firstValueFrom, Observable, type Subscription } from 'rxjs';
import { filter, map, take, toArray } from 'rxjs/operators';
import type { WatchEvent, WatchOptions } from '../client/index.js';
import { upsert } from '../server/store/upsert.js';
import { EventType, wire } from '../shared/wire.js';
import { eventually, podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

let srv: TestServer;
const subs: Subscription[] = [];

beforeAll(async () => {
  // A small encoded-event cache, so events older than a few dozen are encoded again when a watcher needs them.
  // Uncompressed: these tests read the server's messages with grpc-js's raw client, which (like every grpc-js
  // client) drops the messages it is still decompressing when a stream ends with an error status, and they check
  // the ERRORED event that precedes OUT_OF_RANGE. test/watch-forms.test.ts covers gzip on the wire.
  srv = await startServer({ historySize: 300, historyAgeMs: 0, maxBacklog: 200, watchLimits: { eventCacheBytes: 64 << 10 }, watchCompression: false });
});
afterAll(async () => {
  for (const s of subs) s.unsubscribe();
  await srv.close();
});

let seq = 0;
/** A fresh namespace-free ID prefix per test keeps tests independent on one server. */
function prefix(): string {
  return `t${++seq}`;
}

function collect(opts: WatchOptions): { events: WatchEvent[]; errors: unknown[]; done: () => boolean } {
  const events: WatchEvent[] = [];
  const errors: unknown[] = [];
  let completed = false;
  subs.push(
    srv.client().watch('podstatus', opts).subscribe({
      next: (e) => events.push(e),
      error: (e: unknown) => errors.push(e),
      complete: () => (completed = true),
    }),
  );
  return { events, errors, done: () => completed || errors.length > 0 };
}

/**
 * A watch that has started: it asks for the NOOP bookmark of its starting point, waits for it (the server sends it
 * once the watch is registered, so every later change reaches it), and drops it from the events.
 */
async function collectStarted(opts: WatchOptions): Promise<ReturnType<typeof collect>> {
  const w = collect({ ...opts, bootstrapBookmark: true });
  await eventually(() => expect(summary(w.events)).toEqual(['noop']));
  w.events.shift();
  return w;
}

const store = () => srv.cosid.store;
const put = (id: string, ready: boolean, labels?: Record<string, string>) =>
  upsert(store(), { ...STATUSES, id, spec: podStatus(ready), ...(labels ? { labels } : {}) }, TEST_OWNER);
const del = (id: string) => store().destroy({ ...STATUSES, id }, TEST_OWNER);
const summary = (events: WatchEvent[]) => events.map((e) => `${e.type}${e.resource ? ` ${e.resource.metadata.id}@${e.resource.metadata.version}` : ''}`);

describe('watch a kind', () => {
  it('bootstraps the current contents, then streams changes, every event with a bookmark', async () => {
    const p = prefix();
    await put(`${p}/a`, false);
    await put(`${p}/b`, true);
    const w = collect({ bootstrap: true, idRegexp: `^${p}/` });
    await eventually(() => expect(summary(w.events)).toEqual([`created ${p}/a@1`, `created ${p}/b@1`, 'bootstrapped']));
    await put(`${p}/a`, true);
    await del(`${p}/b`);
    await put(`${p}/c`, false);
    await eventually(() => expect(summary(w.events).slice(3)).toEqual([`updated ${p}/a@2`, `destroyed ${p}/b@1`, `created ${p}/c@1`]));
    expect(w.events.every((e) => e.bookmark !== undefined && e.bookmark.length > 0)).toBe(true);
    const updated = w.events[3];
    expect(updated?.old?.metadata.version).toBe(1);
    expect(updated?.resource?.spec).toEqual(podStatus(true));
  });

  it('turns updates into created/destroyed as resources start or stop matching a label query', async () => {
    const p = prefix();
    const w = await collectStarted({ labelQuery: [{ terms: [{ key: 'app', op: 'equal', values: [p] }] }] });
    await put(`${p}/x`, false, { app: 'other' }); // never matched: not delivered
    await put(`${p}/x`, false, { app: p }); // starts matching
    await put(`${p}/x`, true, { app: p }); // still matching
    await put(`${p}/x`, true, { app: 'other' }); // stops matching
    await put(`${p}/y`, true, { app: p });
    await eventually(() => expect(summary(w.events)).toEqual([`created ${p}/x@2`, `updated ${p}/x@3`, `destroyed ${p}/x@4`, `created ${p}/y@1`]));
  });

  it('resumes exactly after a bookmark, including one taken in the middle of a bootstrap', async () => {
    const p = prefix();
    for (const id of ['a', 'b', 'c', 'd']) await put(`${p}/${id}`, false);
    const w = collect({ bootstrap: true, idRegexp: `^${p}/` });
    await eventually(() => expect(w.events.length).toBe(5));
    // Changes while "disconnected" after the second bootstrap item.
    await put(`${p}/a`, true);
    await del(`${p}/c`);
    await put(`${p}/e`, true);
    const midBootstrap = w.events[1]?.bookmark;
    expect(midBootstrap).toBeDefined();
    const resumed = collect({ fromBookmark: midBootstrap, idRegexp: `^${p}/` });
    // The rest of the same snapshot (c and d as they were), BOOTSTRAPPED, then every change since.
    await eventually(() =>
      expect(summary(resumed.events)).toEqual([`created ${p}/c@1`, `created ${p}/d@1`, 'bootstrapped', `updated ${p}/a@2`, `destroyed ${p}/c@1`, `created ${p}/e@1`]),
    );
    const afterUpdate = resumed.events[3]?.bookmark;
    const tail = collect({ fromBookmark: afterUpdate, idRegexp: `^${p}/` });
    await eventually(() => expect(summary(tail.events)).toEqual([`destroyed ${p}/c@1`, `created ${p}/e@1`]));
  });

  it.each([true, false])('with bootstrap_contents and bootstrap_bookmark (aggregated: %s), sends the NOOP after BOOTSTRAPPED', async (aggregated) => {
    const p = prefix();
    await put(`${p}/a`, false);
    await put(`${p}/b`, true);
    const w = collect({ bootstrap: true, bootstrapBookmark: true, aggregated, idRegexp: `^${p}/` });
    await eventually(() => expect(summary(w.events)).toEqual([`created ${p}/a@1`, `created ${p}/b@1`, 'bootstrapped', 'noop']));
    // The NOOP's bookmark is the snapshot's end: a resume from it gets the changes after the bootstrap, and only them.
    await put(`${p}/a`, true);
    const resumed = collect({ fromBookmark: w.events[3]?.bookmark, idRegexp: `^${p}/` });
    await eventually(() => expect(summary(resumed.events)).toEqual([`updated ${p}/a@2`]));
  });

  it('replays the last N events with tail_events', async () => {
    const p = prefix();
    for (let i = 0; i < 5; i++) await put(`${p}/n`, i % 2 === 0);
    const w = collect({ tailEvents: 2, idRegexp: `^${p}/` });
    await eventually(() => expect(summary(w.events)).toEqual([`updated ${p}/n@4`, `updated ${p}/n@5`]));
  });

  it('sends a NOOP bookmark on request and batches events in aggregated mode', async () => {
    const p = prefix();
    const w = collect({ bootstrapBookmark: true, aggregated: true, idRegexp: `^${p}/` });
    await eventually(() => expect(summary(w.events)).toEqual(['noop']));
    for (let i = 0; i < 20; i++) await put(`${p}/${i}`, true);
    await eventually(() => expect(w.events.length).toBe(21));
    const resumed = collect({ fromBookmark: w.events[0]?.bookmark, idRegexp: `^${p}/` });
    await eventually(() => expect(resumed.events.length).toBe(20));
  });
});

describe('the Observable', () => {
  // client/rx.ts loads rxjs's Observable module alone: it must be the class the application's `rxjs` exports.
  it("is an instance of the application's rxjs Observable and takes its operators", async () => {
    const p = prefix();
    await put(`${p}/a`, false);
    await put(`${p}/b`, true);
    const watch = srv.client().watch('podstatus', { bootstrap: true, idRegexp: `^${p}/` });
    expect(watch).toBeInstanceOf(Observable);
    const ids = await firstValueFrom(
      watch.pipe(
        filter((e) => e.type === 'created'),
        map((e) => e.resource?.metadata.id),
        take(2),
        toArray(),
      ),
    );
    expect(ids).toEqual([`${p}/a`, `${p}/b`]);
  });
});

describe('watch one resource', () => {
  it('starts with its current state and follows it', async () => {
    const p = prefix();
    await put(`${p}/one`, false);
    await put(`${p}/other`, false);
    const w = collect({ id: `${p}/one` });
    await eventually(() => expect(summary(w.events)).toEqual([`created ${p}/one@1`]));
    await put(`${p}/other`, true);
    await put(`${p}/one`, true);
    await del(`${p}/one`);
    await eventually(() => expect(summary(w.events)).toEqual([`created ${p}/one@1`, `updated ${p}/one@2`, `destroyed ${p}/one@2`]));
  });

  it('with tail_events and bootstrap_bookmark, bookmarks the start of its tail: a resume from it replays the whole tail', async () => {
    const p = prefix();
    for (let i = 0; i < 5; i++) await put(`${p}/one`, i % 2 === 0);
    await put(`${p}/other`, true);
    const tail = [`updated ${p}/one@3`, `updated ${p}/one@4`, `updated ${p}/one@5`];
    const w = collect({ id: `${p}/one`, tailEvents: 3, bootstrapBookmark: true, eventForm: 'full' });
    await eventually(() => expect(summary(w.events)).toEqual(['noop', ...tail]));
    // A client that went away right after the NOOP resumes from its bookmark: nothing of the tail may be lost.
    const resumed = collect({ id: `${p}/one`, fromBookmark: w.events[0]?.bookmark, eventForm: 'full' });
    await eventually(() => expect(summary(resumed.events)).toEqual(tail));
    await put(`${p}/one`, false);
    await eventually(() => expect(summary(resumed.events)).toEqual([...tail, `updated ${p}/one@6`]));
  });

  it('refuses bootstrap_contents and label queries with UNIMPLEMENTED', async () => {
    const a = collect({ id: 'x', bootstrap: true });
    const b = collect({ id: 'x', labelQuery: [{ terms: [{ key: 'a', op: 'exists' }] }] });
    await eventually(() => expect(a.errors.length + b.errors.length).toBe(2));
    expect(a.errors[0]).toMatchObject({ code: grpc.status.UNIMPLEMENTED });
    expect(b.errors[0]).toMatchObject({ code: grpc.status.UNIMPLEMENTED });
  });
});

describe('watch set-up errors are the call status', () => {
  it.each([
    ['bootstrap with tail events', { bootstrap: true, tailEvents: 1 }, grpc.status.INVALID_ARGUMENT],
    ['tail events with a bookmark', { tailEvents: 1, fromBookmark: new Uint8Array(26) }, grpc.status.INVALID_ARGUMENT],
    ['a bad regexp', { idRegexp: '([' }, grpc.status.INVALID_ARGUMENT],
    ['a garbage bookmark', { fromBookmark: new Uint8Array([1, 2, 3]) }, grpc.status.FAILED_PRECONDITION],
    ['a bookmark of another server instance', { fromBookmark: new Uint8Array([1, 0, 9, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 1]) }, grpc.status.OUT_OF_RANGE],
  ] as const)('%s', async (_name, opts, code) => {
    const w = collect(opts as WatchOptions);
    await eventually(() => expect(w.errors.length).toBe(1));
    expect(w.errors[0]).toMatchObject({ code });
    expect(w.events).toEqual([]);
  });
});

/** A raw gRPC watch, as an old or generic client would make it. */
function rawWatch(
  apiVersion: number,
  bootstrap: boolean,
  aggregated = false,
  tailEvents = 0,
  more: { bootstrapBookmark?: boolean; id?: string } = {},
): { messages: Buffer[]; call: grpc.ClientReadableStream<Buffer>; client: grpc.Client; errors: grpc.ServiceError[] } {
  const client = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem), Buffer.from(srv.pki.admin.keyPem), Buffer.from(srv.pki.admin.certPem)));
  const req = wire.watchRequest.encode({
    namespace: 'k8s',
    type: 'StaticPodStatuses.kubernetes.talos.dev',
    ...(more.id !== undefined ? { id: more.id } : {}),
    apiVersion,
    options: { bootstrapContents: bootstrap, tailEvents, labelQuery: [], aggregated, bootstrapBookmark: more.bootstrapBookmark ?? false },
  });
  const call = client.makeServerStreamRequest('/cosi.resource.State/Watch', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req));
  const messages: Buffer[] = [];
  const errors: grpc.ServiceError[] = [];
  call.on('data', (b: Buffer) => messages.push(b));
  call.on('error', (e: grpc.ServiceError) => errors.push(e));
  return { messages, call, client, errors };
}

describe('wire details', () => {
  it('sends the empty "ready" response first, and BOOTSTRAPPED only to api_version 1', async () => {
    const v1 = rawWatch(1, true);
    const v0 = rawWatch(0, true);
    const count = (await store().list(STATUSES)).length;
    await eventually(() => expect(v1.messages.length).toBe(count + 2));
    await eventually(() => expect(v0.messages.length).toBe(count + 1));
    expect(v1.messages[0]?.length).toBe(0);
    expect(v0.messages[0]?.length).toBe(0);
    const types = (ms: Buffer[]) => ms.slice(1).map((m) => wire.watchResponse.decode(m).event[0]?.eventType);
    expect(types(v1.messages).at(-1)).toBe(EventType.BOOTSTRAPPED);
    expect(types(v0.messages).every((t) => t === EventType.CREATED)).toBe(true);
    for (const w of [v1, v0]) {
      w.call.cancel();
      w.client.close();
    }
  });
});

describe('placeholders, as the reference sends them', () => {
  const events = (w: ReturnType<typeof rawWatch>) => w.messages.slice(1).flatMap((m) => wire.watchResponse.decode(m).event);
  const done = (w: ReturnType<typeof rawWatch>) => {
    w.call.cancel();
    w.client.close();
  };
  // The reference's tombstone: kind set, version "undefined", Go's zero time, an empty spec.
  const placeholder = (id: string) => ({
    metadata: expect.objectContaining({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', id, version: 'undefined', phase: 'running', created: { seconds: '-62135596800', nanos: 0 }, updated: { seconds: '-62135596800', nanos: 0 } }),
    spec: { protoSpec: Buffer.alloc(0), yamlSpec: '' },
  });

  it('BOOTSTRAPPED and NOOP carry a placeholder resource of the kind, and NOOP reaches api_version 0 too', async () => {
    const count = (await store().list(STATUSES)).length;
    const v1 = rawWatch(1, true, false, 0, { bootstrapBookmark: true });
    const v0 = rawWatch(0, true, false, 0, { bootstrapBookmark: true });
    await eventually(() => expect(events(v1).length).toBe(count + 2));
    await eventually(() => expect(events(v0).length).toBe(count + 1));
    const [bootstrapped, noop] = events(v1).slice(-2);
    expect(bootstrapped).toMatchObject({ eventType: EventType.BOOTSTRAPPED, resource: placeholder('') });
    expect(noop).toMatchObject({ eventType: EventType.NOOP, resource: placeholder('') });
    expect(noop?.bookmark?.length).toBeGreaterThan(0);
    // api_version 0: no BOOTSTRAPPED, but the NOOP it asked for with bootstrap_bookmark.
    expect(events(v0).map((e) => e.eventType)).toEqual([...Array<EventType>(count).fill(EventType.CREATED), EventType.NOOP]);
    done(v1);
    done(v0);
  });

  it('a watch of a missing resource starts with a DESTROYED placeholder of that id (with a bookmark: ours resumes from it)', async () => {
    const w = rawWatch(1, false, false, 0, { id: 'default/not-there' });
    await eventually(() => expect(events(w).length).toBe(1));
    const [first] = events(w);
    expect(first).toMatchObject({ eventType: EventType.DESTROYED, resource: placeholder('default/not-there') });
    expect(first?.bookmark?.length).toBeGreaterThan(0);
    done(w);
  });
});

describe('a watcher that cannot keep up', () => {
  it('neither slows the others nor makes the server buffer, and ends with an explicit "too old" when history has moved on', async () => {
    const p = prefix();
    const stalled = rawWatch(1, false);
    // Aggregated batches are large messages: grpc-js's 16-message mark alone would let it queue 16 batches.
    const stalledAggregated = rawWatch(1, false, true);
    await eventually(() => expect(stalled.messages.length + stalledAggregated.messages.length).toBe(2));
    stalled.call.pause(); // stop reading: flow control fills up and the server must stop writing
    stalledAggregated.call.pause();
    const healthy = await collectStarted({ idRegexp: `^${p}/` });
    const big = 'x'.repeat(4096);
    const total = 1500; // five times the history size of this server
    let sawParked = false;
    let maxBuffered = 0;
    let maxBufferedBytes = 0;
    for (let i = 0; i < total; i++) {
      await store().create({ ...STATUSES, id: `${p}/${String(i).padStart(5, '0')}`, spec: { ...(podStatus(true) as object), padding: big } }, TEST_OWNER);
      if (i % 50 === 49) {
        // Pace the writer by the healthy watcher (history holds 300): the point is the stalled one.
        await eventually(() => expect(healthy.events.length).toBeGreaterThan(i - 150), 20_000);
        const stats = srv.cosid.hub.stats();
        sawParked ||= stats.parked > 0;
        maxBuffered = Math.max(maxBuffered, stats.maxBuffered);
        maxBufferedBytes = Math.max(maxBufferedBytes, stats.maxBufferedBytes);
      }
    }
    await eventually(() => expect(healthy.events.length).toBe(total), 30_000);
    expect(healthy.errors).toEqual([]);
    // In order, no gaps, no duplicates.
    expect(healthy.events.map((e) => e.resource?.metadata.id)).toEqual(Array.from({ length: total }, (_, i) => `${p}/${String(i).padStart(5, '0')}`));
    // The stalled watch was parked, and no stream ever held more than grpc-js's high-water mark (16 messages).
    expect(sawParked).toBe(true);
    expect(maxBuffered).toBeLessThanOrEqual(16);
    // ...and none held more bytes than its budget plus the one batch that crossed it.
    const { maxBufferedBytes: budget, maxBatchBytes } = srv.cosid.hub.limits;
    expect(maxBufferedBytes).toBeGreaterThan(0);
    expect(maxBufferedBytes).toBeLessThanOrEqual(budget + maxBatchBytes + 16 * 1024);
    // The stalled watcher is ended (it is only a cursor, and history moved past it) with an explicit status.
    stalled.call.resume();
    await eventually(() => expect(stalled.errors.length).toBe(1), 20_000);
    expect(stalled.errors[0]?.code).toBe(grpc.status.OUT_OF_RANGE);
    expect(stalled.errors[0]?.details).toMatch(/fell behind.*list again/);
    const last = stalled.messages.at(-1);
    expect(last && wire.watchResponse.decode(last).event[0]?.eventType).toBe(EventType.ERRORED);
    stalled.client.close();
    stalledAggregated.call.resume();
    await eventually(() => expect(stalledAggregated.errors.length).toBe(1), 20_000);
    expect(stalledAggregated.errors[0]?.code).toBe(grpc.status.OUT_OF_RANGE);
    stalledAggregated.client.close();
    for (let i = 0; i < total; i++) await del(`${p}/${String(i).padStart(5, '0')}`);
  });
});

describe('aggregated watchers that fell behind at different points', () => {
  it('get every event once and in order, and soon send the very same batches', async () => {
    const p = prefix();
    const padding = 'x'.repeat(4096);
    const total = 100;
    const ids = Array.from({ length: total }, (_, i) => `${p}/${String(i).padStart(3, '0')}`);
    for (const id of ids) await store().create({ ...STATUSES, id, spec: { ...(podStatus(true) as object), padding } }, TEST_OWNER);
    // Both replay the tail of history: one from the first of these creates, one from the 48th.
    const early = rawWatch(1, false, true, total);
    const late = rawWatch(1, false, true, total - 47);
    const events = (w: ReturnType<typeof rawWatch>) => w.messages.slice(1).flatMap((m) => wire.watchResponse.decode(m).event);
    await eventually(() => expect(events(early).length).toBe(total));
    await eventually(() => expect(events(late).length).toBe(total - 47));
    expect(events(early).map((e) => e.resource?.metadata?.id)).toEqual(ids);
    expect(events(late).map((e) => e.resource?.metadata?.id)).toEqual(ids.slice(47));
    // Batched: fewer messages than events; after its first batch, every batch the late one sent is byte for byte
    // one the early one sent (their cuts merged), whichever was pumped first.
    expect(late.messages.length - 1).toBeLessThan(total - 47);
    const sentByEarly = new Set(early.messages.map((m) => m.toString('base64')));
    expect(late.messages.slice(2).every((m) => sentByEarly.has(m.toString('base64')))).toBe(true);
    for (const w of [early, late]) {
      w.call.cancel();
      w.client.close();
    }
    for (const id of ids) await del(id);
  });
});

describe('encoded events kept in memory', () => {
  it('stay within their budget, and a watcher resuming from further back still gets each update with its old version', async () => {
    const p = prefix();
    const id = `${p}/pod`;
    const padding = 'y'.repeat(1024);
    const live = await collectStarted({ idRegexp: `^${p}/` });
    const total = 60; // about 4 KB per event: several times the 64 KiB budget
    for (let i = 0; i < total; i++) await upsert(store(), { ...STATUSES, id, spec: { ...(podStatus(i % 2 === 0) as object), padding, seq: i } }, TEST_OWNER);
    await eventually(() => expect(live.events.length).toBe(total));
    const { cachedEventBytes } = srv.cosid.hub.stats();
    expect(cachedEventBytes).toBeGreaterThan(0);
    expect(cachedEventBytes).toBeLessThanOrEqual((64 << 10) + 16 * 1024);
    // Resume right after the first event: every update again, long evicted from the cache, each with its old version.
    const from = live.events[0]?.bookmark;
    expect(from).toBeDefined();
    const resumed = collect({ idRegexp: `^${p}/`, fromBookmark: from, reconnect: false });
    await eventually(() => expect(resumed.events.length).toBe(total - 1));
    expect(resumed.events.map((e) => [e.type, e.resource?.metadata.version, e.old?.metadata.version, (e.resource?.spec as { seq?: number }).seq])).toEqual(
      Array.from({ length: total - 1 }, (_, i) => ['updated', i + 2, i + 1, i + 1]),
    );
    expect(resumed.events.map((e) => (e.old?.spec as { seq?: number }).seq)).toEqual(Array.from({ length: total - 1 }, (_, i) => i));
    await del(id);
  });
});
