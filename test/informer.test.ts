// The informer against real cosids on loopback: list-then-watch into a cache, each change heard once, a resync
// after "too old" that calls a handler only for what changed, many nodes, a node that is down or refused, stop().
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, createInformer, type CosiClient, type Informer, type InformerHandlers, type InformerOptions, type NodeTarget } from '../client/index.js';
import type { Json } from '../shared/wire.js';
import { makePki, podStatus, startServer, STATUSES, TEST_OWNER, type TestPki, type TestServer } from './harness.js';
import { StallableProxy } from './proxy.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/**
 * Every handler call of an informer as one line, and a way to wait for lines as they come (never a sleep): `until`
 * resolves once the record satisfies the check, and fails after a generous bound with what was recorded.
 */
class Recorder {
  readonly lines: string[] = [];
  readonly states: string[] = [];
  private readonly waiters: { check: () => boolean; resolve: () => void }[] = [];

  handlers(): { [K in keyof InformerHandlers]: InformerHandlers[K] } {
    const v = (r: { metadata: { id: string; version: number } }) => `${r.metadata.id}@${r.metadata.version}`;
    const at = (node: string) => (this.multi ? ` ${node}` : '');
    return {
      added: (c) => this.push(`added ${v(c.resource)}${at(c.node)}${c.resync ? ' resync' : ''}`),
      updated: (c) => this.push(`updated ${v(c.old)}->${v(c.resource)}${at(c.node)}${c.resync ? ' resync' : ''}`),
      deleted: (c) => this.push(`deleted ${v(c.resource)}${at(c.node)}${c.resync ? ' resync' : ''}`),
      synced: (e) => this.push(`synced${at(e.node)}`),
      state: (e) => {
        this.states.push(`${e.state}${at(e.node)}`);
        this.settle();
      },
      error: (e) => this.push(`error${at(e.node)} ${e.fatal ? 'fatal' : 'handler'} ${e.error.kind}`),
    };
  }

  constructor(private readonly multi = false) {}

  push(line: string): void {
    this.lines.push(line);
    this.settle();
  }

  private settle(): void {
    for (const w of [...this.waiters]) {
      if (w.check()) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }

  until(check: () => boolean, what: string, ms = 20_000): Promise<void> {
    if (check()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; recorded ${JSON.stringify(this.lines)}, states ${JSON.stringify(this.states)}`)), ms);
      this.waiters.push({ check, resolve: () => (clearTimeout(timer), resolve()) });
    });
  }

  /** Waits until the last line is `line` (a sentinel change made after what is being checked). */
  untilLine(line: string): Promise<void> {
    return this.until(() => this.lines.includes(line), JSON.stringify(line));
  }
}

function inform(source: CosiClient | NodeTarget[], rec: Recorder, opts: InformerOptions = {}): Informer {
  const informer = createInformer(source, 'podstatus', { ...opts, handlers: rec.handlers(), reconnect: { initialDelayMs: 20, maxDelayMs: 200, jitter: 0, ...opts.reconnect } });
  cleanups.push(() => informer.stop());
  return informer;
}

const ids = (informer: Informer, node?: string) => informer.list(node).map((i) => `${i.node}:${i.resource.metadata.id}@${i.resource.metadata.version}`);

let srv: TestServer;
beforeAll(async () => {
  srv = await startServer({ nodeName: 'node-1' });
  cleanups.push(() => srv.close());
});

const store = () => srv.cosid.store;
const put = async (s: TestServer, id: string, spec: Json = podStatus(false), labels: Record<string, string> = {}): Promise<void> => {
  const existing = (await s.cosid.store.list(STATUSES)).find((r) => r.metadata.id === id);
  if (existing === undefined) await s.cosid.store.create({ ...STATUSES, id, spec, labels }, TEST_OWNER);
  else await s.cosid.store.update({ ...STATUSES, id, spec, labels }, TEST_OWNER);
};

describe('an informer on one node', () => {
  it('its client closed by the caller: the node is closed (cancelled), no error event, nothing thrown', async () => {
    const client = srv.client();
    // No error handler: a reported failure would be thrown as an uncaught exception and fail the run.
    const informer = createInformer(client, 'podstatus', { reconnect: { initialDelayMs: 20, maxDelayMs: 200, jitter: 0 } });
    cleanups.push(() => informer.stop());
    const states: string[] = [];
    const closed = new Promise<void>((resolve) => informer.on('state', (e) => (states.push(e.state), e.state === 'closed' && resolve())));
    await informer.synced();
    client.close();
    await closed;
    // The watch says 'closed' first; the informer then ends the node's loop.
    await expect.poll(() => informer.status()[0]?.error?.kind, { timeout: 20_000 }).toBe('cancelled');
    expect(informer.status()[0]).toMatchObject({ state: 'closed', synced: true });
  });

  it('lists into its cache (added each, then synced), then hears each change exactly once', async () => {
    await put(srv, 'one/a');
    await put(srv, 'one/b');
    const rec = new Recorder();
    const informer = inform(srv.client(), rec, { idRegexp: '^one/' });
    // Nothing is delivered before createInformer returns: a handler added right after it hears everything.
    const states: string[] = [];
    informer.on('state', (e) => states.push(e.state));
    await informer.synced();
    expect(states).toEqual(['connecting', 'streaming']);
    expect(informer.hasSynced()).toBe(true);
    expect(rec.lines).toEqual(['added one/a@1', 'added one/b@1', 'synced']);

    await put(srv, 'one/c');
    await put(srv, 'one/a', podStatus(true));
    await store().destroy({ ...STATUSES, id: 'one/b' }, TEST_OWNER);
    await put(srv, 'one/c', podStatus(true));
    await rec.untilLine('updated one/c@1->one/c@2');
    expect(rec.lines).toEqual(['added one/a@1', 'added one/b@1', 'synced', 'added one/c@1', 'updated one/a@1->one/a@2', 'deleted one/b@1', 'updated one/c@1->one/c@2']);

    const node = srv.endpoint;
    expect(informer.nodes).toEqual([node]);
    expect(ids(informer)).toEqual([`${node}:one/a@2`, `${node}:one/c@2`]);
    expect(informer.get('one/a')?.spec).toEqual(podStatus(true));
    expect(informer.get('one/b')).toBeUndefined();
    expect(informer.status()).toEqual([{ node, state: 'streaming', detail: undefined, synced: true, error: undefined, size: 2 }]);
  });

  it('follows a label query: an update that stops matching is deleted, one that starts matching is added', async () => {
    await put(srv, 'lq/a', podStatus(false), { tier: 'a' });
    await put(srv, 'lq/b', podStatus(false), { tier: 'b' });
    const rec = new Recorder();
    const informer = inform(srv.client(), rec, { idRegexp: '^lq/', labelQuery: [{ terms: [{ key: 'tier', op: 'equal', values: ['a'] }] }] });
    await informer.synced();
    await put(srv, 'lq/a', podStatus(false), { tier: 'b' });
    await put(srv, 'lq/b', podStatus(false), { tier: 'a' });
    await rec.untilLine('added lq/b@2');
    expect(rec.lines).toEqual(['added lq/a@1', 'synced', 'deleted lq/a@2', 'added lq/b@2']);
    expect(ids(informer).map((s) => s.split(':').pop())).toEqual(['lq/b@2']);
  });

  it('awaits an async handler before the next event, and reports a handler that throws without stopping', async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const rec = new Recorder();
    const informer = inform(srv.client(), rec, { idRegexp: '^slow/' });
    await informer.synced();
    informer.on('added', async (c) => {
      rec.push(`start ${c.resource.metadata.id}`);
      if (c.resource.metadata.id === 'slow/a') await gate;
      rec.push(`end ${c.resource.metadata.id}`);
    });
    informer.on('updated', () => {
      throw new Error('boom');
    });
    const failures: string[] = [];
    informer.on('error', (e) => failures.push(`${e.error.message} / ${e.error.cause instanceof Error ? e.error.cause.message : ''}`));
    await put(srv, 'slow/a');
    await put(srv, 'slow/b');
    await rec.untilLine('start slow/a');
    // The next event waits for the handler: slow/b is not even in the cache yet.
    expect(informer.get('slow/b')).toBeUndefined();
    release();
    await rec.untilLine('end slow/b');
    await put(srv, 'slow/a', podStatus(true));
    await put(srv, 'slow/c');
    await rec.untilLine('end slow/c');
    expect(rec.lines).toEqual([
      'synced',
      'added slow/a@1',
      'start slow/a',
      'end slow/a',
      'added slow/b@1',
      'start slow/b',
      'end slow/b',
      'updated slow/a@1->slow/a@2',
      'error handler internal',
      'added slow/c@1',
      'start slow/c',
      'end slow/c',
    ]);
    expect(failures).toEqual(["the informer's updated handler failed: boom / boom"]);
  });

  it('stop() ends the watch: no handler after it, a pending synced() rejects, the client stays usable', async () => {
    const client = srv.client();
    const rec = new Recorder();
    const informer = inform(client, rec, { idRegexp: '^stopped/' });
    await informer.synced();
    await informer.stop();
    await put(srv, 'stopped/a');
    // A witness: by the time another informer on the same client has listed the write, the stopped one would
    // have heard of it.
    const witness = new Recorder();
    await inform(client, witness, { idRegexp: '^stopped/' }).synced();
    expect(witness.lines).toEqual(['added stopped/a@1', 'synced']);
    expect(rec.lines).toEqual(['synced']);
    expect(informer.list()).toEqual([]);
    expect(informer.status()[0]).toMatchObject({ synced: true, error: undefined });
    // The client is the caller's: still open.
    expect((await client.list('podstatus', { idRegexp: '^stopped/' })).length).toBe(1);

    // Stopped before its first list: a pending synced() and later ones reject with cancelled.
    const early = inform(client, new Recorder(), { idRegexp: '^stopped/' });
    const pending = early.synced();
    await early.stop();
    await expect(pending).rejects.toMatchObject({ kind: 'cancelled' });
    await expect(early.synced()).rejects.toMatchObject({ kind: 'cancelled' });

    // An aborted signal stops it too; `await using` disposes of it.
    const abort = new AbortController();
    const aborted = inform(client, new Recorder(), { idRegexp: '^stopped/', signal: abort.signal });
    const waiting = aborted.synced();
    abort.abort();
    await expect(waiting).rejects.toMatchObject({ kind: 'cancelled' });
    {
      await using disposed = createInformer(client, 'podstatus', { idRegexp: '^stopped/' });
      await disposed.synced();
      expect(disposed.get('stopped/a')?.metadata.version).toBe(1);
    }
  });

  it('refuses what it cannot do: no nodes, the same node twice, an unknown event, a node it does not watch', async () => {
    const client = srv.client();
    expect(() => createInformer([], 'podstatus')).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    expect(() => createInformer([{ node: 'x', client }, { node: 'x', client }], 'podstatus')).toThrow(expect.objectContaining({ kind: 'invalid-argument', message: 'node "x" is given twice' }));
    expect(() => createInformer(client, 'podstatus', { reconnect: { jitter: 2 } })).toThrow(expect.objectContaining({ kind: 'invalid-argument', message: 'reconnect.jitter must be between 0 and 1, not 2' }));
    const informer = createInformer(client, 'podstatus', { idRegexp: '^none/' });
    cleanups.push(() => informer.stop());
    expect(() => informer.on('nope' as 'added', () => {})).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    expect(() => informer.on('toString' as 'added', () => {})).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    expect(() => informer.get('a', 'elsewhere')).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    await expect(informer.synced({ node: 'elsewhere' })).rejects.toMatchObject({ kind: 'invalid-argument' });
    await informer.synced({ timeoutMs: 20_000 });
  });
});

describe('an informer on a client of its own making', () => {
  it('is refused: the informer runs the library\'s list-watch-resume core, which needs a client made by connect()', () => {
    const real = srv.client();
    // Every method of a CosiClient, none of the library's transport.
    const wrapped: CosiClient = {
      endpoint: real.endpoint,
      node: undefined,
      definitions: (o) => real.definitions(o),
      resolveType: (n, o) => real.resolveType(n, o),
      get: (t, id, o) => real.get(t, id, o),
      list: (t, o) => real.list(t, o),
      listIter: (t, o) => real.listIter(t, o),
      watchIter: (t, o) => real.watchIter(t, o),
      watch: (t, o) => real.watch(t, o),
      containers: (o) => real.containers(o),
      logs: (id, o) => real.logs(id, o),
      applyConfiguration: (c, o) => real.applyConfiguration(c, o),
      withNode: (n) => real.withNode(n),
      close: () => real.close(),
      [Symbol.asyncDispose]: () => real[Symbol.asyncDispose](),
    };
    expect(() => createInformer([{ node: 'x', client: wrapped }], 'podstatus')).toThrow(expect.objectContaining({ kind: 'invalid-argument', message: expect.stringContaining('node "x" was not made by connect() or connectContext()') }));
    real.close();
  });
});

describe('resync after "too old"', () => {
  it('calls no handler for what is unchanged, deleted once for what vanished, updated once for what changed', async () => {
    const pki: TestPki = await makePki();
    const a = await startServer({ pki, nodeName: 'node-1' });
    cleanups.push(() => a.close());
    // The informer reaches the server through a proxy, which the test points at another server and cuts: the
    // informer's bookmark is then from another server instance ("too old"), as after a restart.
    let target = a.cosid.port;
    const proxy = await StallableProxy.start(() => ({ host: '127.0.0.1', port: target }));
    cleanups.push(() => proxy.close());
    const client = connect({ endpoint: proxy.endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
    cleanups.push(() => client.close());

    await put(a, 'changes');
    await put(a, 'stays');
    await put(a, 'vanishes');
    const rec = new Recorder();
    const informer = inform(client, rec);
    await informer.synced();
    expect(rec.lines).toEqual(['added changes@1', 'added stays@1', 'added vanishes@1', 'synced']);

    // The new server holds: the same "stays" (same version and content), "changes" changed, "vanishes" gone, "new".
    const b = await startServer({ pki, nodeName: 'node-1' });
    cleanups.push(() => b.close());
    await put(b, 'changes', podStatus(true));
    await put(b, 'new');
    await put(b, 'stays');
    target = b.cosid.port;
    proxy.cut();
    await rec.untilLine('added new@1 resync');
    // A change after the resync, as a sentinel: nothing else came in between, and nothing after.
    await put(b, 'stays', podStatus(true));
    await rec.untilLine('updated stays@1->stays@2');
    expect(rec.lines).toEqual([
      'added changes@1',
      'added stays@1',
      'added vanishes@1',
      'synced',
      'deleted vanishes@1 resync',
      'updated changes@1->changes@1 resync',
      'added new@1 resync',
      'updated stays@1->stays@2',
    ]);
    expect(rec.states.filter((s) => s === 'resyncing')).toEqual(['resyncing']);
    expect(informer.get('changes')?.spec).toEqual(podStatus(true));
    const fresh = (await b.client().list('podstatus')).map((r) => `${proxy.endpoint}:${r.metadata.id}@${r.metadata.version}`);
    expect(ids(informer)).toEqual(fresh);
  });
});

describe('an informer on many nodes', () => {
  let other: TestServer;
  beforeAll(async () => {
    other = await startServer({ nodeName: 'node-2' });
    cleanups.push(() => other.close());
  });

  it('keeps each node apart in one cache, keyed by node and ID', async () => {
    await put(srv, 'many/x');
    await put(other, 'many/x', podStatus(true));
    await put(other, 'many/y');
    const rec = new Recorder(true);
    const informer = inform(
      [
        { node: 'n1', client: srv.client() },
        { node: 'n2', client: other.client() },
      ],
      rec,
      { idRegexp: '^many/' },
    );
    await informer.synced();
    expect(rec.lines.filter((l) => l.endsWith('n1'))).toEqual(['added many/x@1 n1', 'synced n1']);
    expect(rec.lines.filter((l) => l.endsWith('n2'))).toEqual(['added many/x@1 n2', 'added many/y@1 n2', 'synced n2']);
    expect(ids(informer)).toEqual(['n1:many/x@1', 'n2:many/x@1', 'n2:many/y@1']);
    expect(informer.get('many/x', 'n2')?.spec).toEqual(podStatus(true));
    expect(informer.get('many/x')?.spec).toEqual(podStatus(false));
    expect(informer.get('many/y')?.metadata.version).toBe(1);

    await other.cosid.store.destroy({ ...STATUSES, id: 'many/x' }, TEST_OWNER);
    await put(srv, 'many/x', podStatus(true));
    await rec.untilLine('deleted many/x@1 n2');
    await rec.untilLine('updated many/x@1->many/x@2 n1');
    expect(rec.lines.slice(5).sort()).toEqual(['deleted many/x@1 n2', 'updated many/x@1->many/x@2 n1']);
    expect(ids(informer, 'n2')).toEqual(['n2:many/y@1']);
  });

  it('a node that is down does not hold up the others: synced(node) resolves, synced() waits and says why', async () => {
    const rec = new Recorder(true);
    const dead = connect({ endpoint: '127.0.0.1:1', caPem: srv.pki.ca.certPem, certPem: srv.pki.admin.certPem, keyPem: srv.pki.admin.keyPem });
    cleanups.push(() => dead.close());
    const informer = inform(
      [
        { node: 'up', client: srv.client() },
        { node: 'down', client: dead },
      ],
      rec,
      { idRegexp: '^many/' },
    );
    await informer.synced({ node: 'up' });
    await rec.until(() => rec.states.includes('reconnecting down'), 'the down node to be retrying');
    expect(informer.hasSynced('up')).toBe(true);
    expect(informer.hasSynced()).toBe(false);
    await expect(informer.synced({ timeoutMs: 300 })).rejects.toMatchObject({ kind: 'deadline-exceeded', message: expect.stringMatching(/waiting for down \((reconnecting|connecting): .+\)$/) });
    const [up, down] = informer.status();
    expect(up).toMatchObject({ node: 'up', synced: true, state: 'streaming' });
    expect(down).toMatchObject({ node: 'down', synced: false, error: undefined, size: 0 });
    expect(down?.detail).toMatch(/nothing is listening at .* \(connection refused\)/);
    expect(rec.lines.filter((l) => l.startsWith('error'))).toEqual([]);
  });

  it('a node refused for good is an error event; synced() rejects with it, the other node goes on', async () => {
    const rec = new Recorder(true);
    const informer = inform(
      [
        { node: 'good', client: srv.client() },
        { node: 'denied', client: other.client(await other.certWithRoles([])) },
      ],
      rec,
      { idRegexp: '^many/' },
    );
    await expect(informer.synced()).rejects.toMatchObject({ kind: 'permission-denied', message: expect.stringMatching(/^node denied: /) });
    await informer.synced({ node: 'good' });
    await rec.untilLine('error denied fatal permission-denied');
    expect(rec.lines.filter((l) => l.includes('denied'))).toEqual(['error denied fatal permission-denied']);
    expect(informer.status().find((s) => s.node === 'denied')).toMatchObject({ synced: false, state: 'closed', error: { kind: 'permission-denied' } });
    await put(srv, 'many/z');
    await rec.untilLine('added many/z@1 good');
  });
});
