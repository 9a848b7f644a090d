// Watches that survive: network cuts, server restarts, slow watchers, idle streams, many nodes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import type { Subscription } from 'rxjs';
import { connect, listNodes, watchNodes, type CosiClient, type NodeWatchEvent, type WatchEvent } from '../client/index.js';
import { upsert } from '../server/store/upsert.js';
import { EventType, IDLE_BOOKMARKS_METADATA_KEY, wire, type Json } from '../shared/wire.js';
import { eventually, makePki, podStatus, startServer, STATUSES, TEST_OWNER, type TestPki, type TestServer } from './harness.js';
import { freePort } from './pipeline-harness.js';
import { StallableProxy } from './proxy.js';

let pki: TestPki;
const subs: Subscription[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  pki = await makePki();
});
afterAll(async () => {
  for (const s of subs) s.unsubscribe();
  for (const c of cleanups.reverse()) await c();
});

function clientFor(endpoint: string): CosiClient {
  const c = connect({ endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
  cleanups.push(() => c.close());
  return c;
}

const FAST = { initialDelayMs: 20, maxDelayMs: 200 };
const put = (srv: TestServer, id: string, spec: Json) => upsert(srv.cosid.store, { ...STATUSES, id, spec }, TEST_OWNER);

/** The subscriber's view, built only from the events it got: what a user of the library sees. */
function follow(events: WatchEvent[]): Map<string, string> {
  const view = new Map<string, string>();
  for (const e of events) {
    if (e.resource === undefined) continue;
    if (e.type === 'destroyed') view.delete(e.resource.metadata.id);
    else if (e.type === 'created' || e.type === 'updated') view.set(e.resource.metadata.id, e.resource.yamlSpec);
  }
  return view;
}

describe('reconnect and resume', () => {
  it('resumes from the last bookmark after network cuts: every change exactly once, in order', async () => {
    const srv = await startServer({ pki });
    cleanups.push(() => srv.close());
    const proxy = await StallableProxy.start(() => ({ host: '127.0.0.1', port: srv.cosid.port }));
    cleanups.push(() => proxy.close());
    const states: string[] = [];
    const events: WatchEvent[] = [];
    subs.push(clientFor(proxy.endpoint).watch('podstatus', { bootstrap: true, reconnect: { ...FAST, onState: (s) => states.push(s) } }).subscribe((e) => events.push(e)));
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['bootstrapped']));
    const count = (state: string) => states.filter((s) => s === state).length;
    let cuts = 0;
    for (let i = 0; i < 60; i++) {
      await put(srv, `r${i % 20}`, podStatus(i % 3 === 0, { round: i }));
      if (i % 15 === 7) {
        // Each cut hits a streaming watch, and the changes after it are made while the client knows it is cut off.
        await eventually(() => expect(states.at(-1)).toBe('streaming'), 20_000);
        const reconnects = count('reconnecting');
        proxy.cut();
        cuts++;
        await eventually(() => expect(count('reconnecting')).toBeGreaterThan(reconnects), 20_000);
      }
    }
    await eventually(() => expect(events.length).toBe(61), 20_000);
    expect(events.some((e) => e.resync === true)).toBe(false);
    // Per resource: versions 1, 2, 3 in order, none twice, none missing.
    const versions = new Map<string, number[]>();
    for (const e of events.slice(1)) versions.set(e.resource?.metadata.id ?? '', [...(versions.get(e.resource?.metadata.id ?? '') ?? []), e.resource?.metadata.version ?? 0]);
    for (const v of versions.values()) expect(v).toEqual([1, 2, 3]);
    // Every cut was noticed (a reconnect attempt that fails counts again, so not exactly one each).
    expect(cuts).toBe(4);
    expect(count('reconnecting')).toBeGreaterThanOrEqual(cuts);
    expect(states.at(-1)).toBe('streaming');
    // The subscriber's view equals a fresh list.
    const fresh = await clientFor(srv.endpoint).list('podstatus');
    expect(follow(events)).toEqual(new Map(fresh.map((r) => [r.metadata.id, r.yamlSpec])));
  });

  it('survives a server restart: lists again and emits only the difference', async () => {
    const port = await freePort();
    const first = await startServer({ pki, listen: `127.0.0.1:${port}` });
    for (const id of ['a', 'b', 'c']) await put(first, id, podStatus(false));
    const events: WatchEvent[] = [];
    const states: string[] = [];
    // Slow enough retries that the restarted server has its state before the client is back.
    subs.push(
      clientFor(`127.0.0.1:${port}`)
        .watch('podstatus', { bootstrap: true, reconnect: { initialDelayMs: 500, maxDelayMs: 500, onState: (s) => states.push(s) } })
        // The server's last bookmark before it stops arrives as a NOOP: not part of the view.
        .subscribe((e) => e.type !== 'noop' && events.push(e)),
    );
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['created', 'created', 'created', 'bootstrapped']));
    await first.close();
    const second = await startServer({ pki, listen: `127.0.0.1:${port}` });
    cleanups.push(() => second.close());
    await put(second, 'b', podStatus(false)); // the same as before: no event
    await put(second, 'c', podStatus(true)); // changed
    await put(second, 'd', podStatus(true)); // new; 'a' is gone
    await eventually(() => expect(events.length, JSON.stringify(events.map((e) => `${e.type} ${e.resource?.metadata.id}`))).toBe(7), 20_000);
    expect(events.slice(4).map((e) => `${e.type} ${e.resource?.metadata.id} resync=${e.resync}`)).toEqual(['destroyed a resync=true', 'updated c resync=true', 'created d resync=true']);
    expect(states).toContain('resyncing');
    await put(second, 'd', podStatus(false));
    await eventually(() => expect(events.length).toBe(8));
    expect(events[7]).toMatchObject({ type: 'updated', resource: { metadata: { id: 'd', version: 2 } } });
    expect(events[7]?.resync).toBeUndefined();
  });
});

/** A raw watch whose reading can be paused (grpc-js stops reading: HTTP/2 flow control pushes back). */
function rawWatch(srv: TestServer, regexp: string, metadata: Record<string, string> = {}) {
  const client = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(pki.admin.keyPem), Buffer.from(pki.admin.certPem)));
  const req = wire.watchRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', apiVersion: 1, options: { bootstrapContents: false, tailEvents: 0, labelQuery: [], idQuery: { regexp }, aggregated: false, bootstrapBookmark: false } });
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  const call = client.makeServerStreamRequest('/cosi.resource.State/Watch', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req), md);
  const events: { type: EventType; id: string; bookmark: boolean }[] = [];
  const errors: grpc.ServiceError[] = [];
  // The first message is the empty "ready" response: the server has registered the watch.
  const result = { call, events, errors, client, ready: false };
  call.on('data', (b: Buffer) => {
    result.ready = true;
    for (const e of wire.watchResponse.decode(b).event) events.push({ type: e.eventType, id: e.resource?.metadata?.id ?? '', bookmark: e.bookmark != null });
  });
  call.on('error', (e: grpc.ServiceError) => errors.push(e));
  cleanups.push(() => client.close());
  return result;
}

describe('slow watchers', () => {
  it('counts lag only in events the watcher would receive: a parked watcher survives history moving past on other changes', async () => {
    const srv = await startServer({ pki, historySize: 2500, historyAgeMs: 0 });
    cleanups.push(() => srv.close());
    const w = rawWatch(srv, '^mine/');
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(1));
    w.call.pause();
    const big = 'x'.repeat(4096);
    for (let i = 0; i < 2000; i++) await put(srv, `mine/${String(i).padStart(4, '0')}`, { padding: big, i });
    await eventually(() => expect(srv.cosid.hub.stats().parked).toBe(1));
    // Ten thousand changes it does not want: history forgets everything it had pending position for.
    for (let i = 0; i < 10_000; i++) await put(srv, `other/${i % 50}`, { i });
    expect((await srv.cosid.store.feed.history(STATUSES)).oldestRevision).toBeGreaterThan(2000);
    w.call.resume();
    await eventually(() => expect(w.events.filter((e) => e.id.startsWith('mine/')).length).toBe(2000), 20_000);
    expect(w.errors).toEqual([]);
    await put(srv, 'mine/late', { late: true });
    await eventually(() => expect(w.events.at(-1)?.id).toBe('mine/late'));
  });

  it('ends a watcher that lost events it would receive with ERRORED and OUT_OF_RANGE', async () => {
    const srv = await startServer({ pki, historySize: 200, historyAgeMs: 0, maxBacklog: 500 });
    cleanups.push(() => srv.close());
    const w = rawWatch(srv, '^mine/');
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(1));
    w.call.pause();
    const big = 'x'.repeat(4096);
    for (let i = 0; i < 3000; i++) await put(srv, `mine/${i % 100}`, { padding: big, i });
    w.call.resume();
    await eventually(() => expect(w.errors.length).toBe(1), 20_000);
    expect(w.errors[0]?.code).toBe(grpc.status.OUT_OF_RANGE);
    expect(w.events.at(-1)?.type).toBe(EventType.ERRORED);
  });
});

describe('bookmarks', () => {
  it('gives idle watches periodic NOOP bookmarks that resume exactly there', async () => {
    const srv = await startServer({ pki, bookmarkIntervalMs: 100 });
    cleanups.push(() => srv.close());
    await put(srv, 'x', podStatus(false));
    const c = clientFor(srv.endpoint);
    const events: WatchEvent[] = [];
    subs.push(c.watch('podstatus', { reconnect: false }).subscribe((e) => events.push(e)));
    await eventually(() => expect(events.filter((e) => e.type === 'noop').length).toBeGreaterThanOrEqual(2));
    const mark = events.filter((e) => e.type === 'noop').at(-1)?.bookmark;
    await put(srv, 'y', podStatus(true));
    const resumed: WatchEvent[] = [];
    subs.push(c.watch('podstatus', { fromBookmark: mark, reconnect: false }).subscribe((e) => resumed.push(e)));
    await eventually(() => expect(resumed.filter((e) => e.type !== 'noop').map((e) => `${e.type} ${e.resource?.metadata.id}`)).toEqual(['created y']));
  });

  it('sends a last bookmark before ending streams with UNAVAILABLE on shutdown, to clients that asked for bookmarks', async () => {
    const srv = await startServer({ pki });
    const asked = rawWatch(srv, '', { [IDLE_BOOKMARKS_METADATA_KEY]: 'on' });
    const generic = rawWatch(srv, '');
    await eventually(() => expect(asked.ready && generic.ready).toBe(true));
    await srv.close();
    await eventually(() => expect(asked.errors.length + generic.errors.length).toBe(2));
    expect(asked.errors[0]?.code).toBe(grpc.status.UNAVAILABLE);
    expect(asked.events.at(-1)).toMatchObject({ type: EventType.NOOP, bookmark: true });
    // A generic client (talosctl) gets no NOOP it did not ask for: the reference never sends one unasked.
    expect(generic.errors[0]?.code).toBe(grpc.status.UNAVAILABLE);
    expect(generic.events).toEqual([]);
  });

  it('sends idle NOOP bookmarks only to watches that asked for them', async () => {
    const srv = await startServer({ pki, bookmarkIntervalMs: 50 });
    cleanups.push(() => srv.close());
    const asked = rawWatch(srv, '', { [IDLE_BOOKMARKS_METADATA_KEY]: 'on' });
    const generic = rawWatch(srv, '');
    await eventually(() => expect(asked.events.filter((e) => e.type === EventType.NOOP).length).toBeGreaterThanOrEqual(3));
    // Both are idle watches of the same kind on the same hub: by now the generic one has been passed over 3 times.
    expect(generic.ready).toBe(true);
    expect(generic.events).toEqual([]);
    const bad = rawWatch(srv, '', { [IDLE_BOOKMARKS_METADATA_KEY]: 'sometimes' });
    await eventually(() => expect(bad.errors.length).toBe(1));
    expect(bad.errors[0]).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: `${IDLE_BOOKMARKS_METADATA_KEY} must be "on" or "off", not "sometimes"` });
  });
});

describe('limits', () => {
  it('refuses more watches per connection than the limit with RESOURCE_EXHAUSTED', async () => {
    const srv = await startServer({ pki, maxWatchesPerConnection: 3 });
    cleanups.push(() => srv.close());
    const c = clientFor(srv.endpoint);
    const errors: unknown[] = [];
    const opened = [0, 1, 2, 3].map(() => c.watch('podstatus', { reconnect: false }).subscribe({ error: (e: unknown) => errors.push(e) }));
    await eventually(() => expect(errors.length).toBe(1));
    expect(errors[0]).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, message: expect.stringContaining('too many watches on this connection') });
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(3));
    opened[0]?.unsubscribe();
    // The server has seen the cancellation: the watch is gone, and with it its place in the count.
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(2));
    const later: unknown[] = [];
    const events: WatchEvent[] = [];
    subs.push(c.watch('podstatus', { reconnect: false, bootstrap: true }).subscribe({ next: (e) => events.push(e), error: (e: unknown) => later.push(e) }));
    await eventually(() => expect(events.some((e) => e.type === 'bootstrapped')).toBe(true));
    expect(later).toEqual([]);
    for (const s of opened) s.unsubscribe();
  });
});

describe('connections per address', () => {
  it('refuses calls on more connections from one address than the limit, and admits again when one closes', async () => {
    const srv = await startServer({ pki, maxConnectionsPerAddress: 2 });
    cleanups.push(() => srv.close());
    const creds = grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(pki.admin.keyPem), Buffer.from(pki.admin.certPem));
    // A local subchannel pool gives each client its own connection.
    const clients = [0, 1, 2].map(() => new grpc.Client(srv.endpoint, creds, { 'grpc.use_local_subchannel_pool': 1 }));
    for (const c of clients) cleanups.push(() => c.close());
    const req = Buffer.from(wire.watchRequest.encode({ namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev', apiVersion: 1, options: { bootstrapContents: false, tailEvents: 0, labelQuery: [], aggregated: false, bootstrapBookmark: false } }));
    const open = (c: grpc.Client) => {
      const call = c.makeServerStreamRequest('/cosi.resource.State/Watch', (b: Buffer) => b, (b: Buffer) => b, req);
      const result = { ready: false, code: undefined as number | undefined, call };
      call.on('data', () => (result.ready = true));
      call.on('error', () => {});
      call.on('status', (st: grpc.StatusObject) => (result.code = st.code));
      return result;
    };
    const [a, b] = [open(clients[0] as grpc.Client), open(clients[1] as grpc.Client)];
    await eventually(() => expect(a.ready && b.ready).toBe(true));
    const third = open(clients[2] as grpc.Client);
    await eventually(() => expect(third.code).toBe(grpc.status.RESOURCE_EXHAUSTED));
    expect(srv.cosid.hub.stats().sessions).toBe(2);
    a.call.cancel();
    // The server has seen the cancellation: the connection's last call is gone, and with it its place in the count.
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(1));
    const again = open(clients[2] as grpc.Client);
    await eventually(() => expect(again.ready).toBe(true));
    b.call.cancel();
    again.call.cancel();
  });
});

describe('many nodes', () => {
  it('merges the nodes, reports the one that is down with per-node errors, and keeps streaming from the others', async () => {
    const a = await startServer({ pki, nodeName: 'a' });
    const b = await startServer({ pki, nodeName: 'b' });
    cleanups.push(() => a.close(), () => b.close());
    await put(a, 'on-a', podStatus(true));
    await put(b, 'on-b', podStatus(true));
    const dead = `127.0.0.1:${await freePort()}`;
    const targets = [
      { node: 'a', client: clientFor(a.endpoint) },
      { node: 'b', client: clientFor(b.endpoint) },
      { node: 'dead', client: clientFor(dead) },
    ];
    const lists = await listNodes(targets, 'podstatus');
    expect(lists.map((r) => `${r.node}:${r.error === undefined ? r.value.map((x) => x.metadata.id).join(',') : r.error.kind}`)).toEqual(['a:on-a', 'b:on-b', 'dead:unavailable']);
    const seen: NodeWatchEvent[] = [];
    subs.push(watchNodes(targets, 'StaticPodStatuses.kubernetes.talos.dev', { namespace: 'k8s', bootstrap: true, reconnect: FAST }).subscribe((m) => seen.push(m)));
    await eventually(() => expect(seen.some((m) => m.node === 'dead' && m.kind === 'state' && m.state === 'reconnecting')).toBe(true));
    await eventually(() => expect(seen.filter((m) => m.kind === 'event' && m.event.type === 'bootstrapped').map((m) => m.node).sort()).toEqual(['a', 'b']));
    await put(b, 'on-b-2', podStatus(false));
    await eventually(() => expect(seen.some((m) => m.kind === 'event' && m.node === 'b' && m.event.resource?.metadata.id === 'on-b-2')).toBe(true));
  });
});
