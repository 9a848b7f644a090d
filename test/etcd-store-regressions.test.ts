// Regressions of the etcd store's watch cache and reads (server/store/kind-cache.ts over etcd/backend.ts), on the
// run's real etcd:
// - a foreign transaction that changes several keys of one kind at one revision keeps every key (ingest());
// - a kind's watch that breaks right after its creation resumes before the changes it has not delivered yet
//   (keepResumePoint());
// - a value that does not decode is left out of list() and of listAt() below the window instead of failing the
//   whole kind (EtcdBackend.range());
// - a resume from before the window, fetched while the kind's own watch makes the window forget changes, is served
//   without a gap (backfill()).
import { caughtUp } from './caught-up.js';
import { Etcd3, type IWatchResponse, type Watcher } from 'etcd3';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type { Logger } from '../shared/log.js';
import { silentLogger } from '../shared/log.js';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { K8S_NAMESPACE, STATIC_POD_TYPE } from '../server/resources/k8s.js';
import { EtcdStore } from '../server/store/etcd.js';
import { etcdRevisionOf } from '../server/store/etcd/backend.js';
import type { Change } from '../server/store/store.js';

const etcd = inject('etcd');
const opened: { close(): unknown }[] = [];
afterAll(async () => {
  for (const c of opened.reverse()) await c.close();
});

const K = { namespace: 'ns', type: 'Things.test.dev' };

function errorLines(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const log: Logger = { debug() {}, info() {}, warn() {}, error: (msg, f) => lines.push(`${msg} ${JSON.stringify(f)}`), with: () => log };
  return { log, lines };
}

describe.skipIf(etcd === null)('etcd store regressions', () => {
  const e = etcd as NonNullable<typeof etcd>;
  const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };
  const connect = async (prefix: string, extra: Partial<Parameters<typeof EtcdStore.connect>[0]> = {}) => {
    const s = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix, ...extra });
    opened.push(s);
    return s;
  };
  const rawClient = () => {
    const c = new Etcd3({ hosts: e.endpoints, credentials: { rootCertificate: Buffer.from(tls.caPem), certChain: Buffer.from(tls.certPem), privateKey: Buffer.from(tls.keyPem) } });
    opened.push(c);
    return c;
  };
  const newPrefix = () => `/test-${randomBytes(6).toString('hex')}/`;

  it('keeps every key of a foreign multi-key transaction in the kind state and history, at one revision', async () => {
    const store = await connect(newPrefix());
    const raw = rawClient();
    const history = await store.feed.history(K);
    const seen: Change[] = [];
    history.subscribe({ committed: (c) => seen.push(c) });
    // One resource written by cosid, then copied twice by a script in one transaction (a restore, a migration).
    await store.create({ ...K, id: 'a', spec: { n: 1 } }, 'me');
    const a = await raw.get(store.etcd.keyOf({ ...K, id: 'a' })).buffer();
    expect(a).not.toBeNull();
    const txn = await raw
      .if(store.etcd.keyOf({ ...K, id: 'x' }), 'Create', '==', 0)
      .then(raw.put(store.etcd.keyOf({ ...K, id: 'b' })).value(a as Buffer), raw.put(store.etcd.keyOf({ ...K, id: 'c' })).value(a as Buffer))
      .commit();
    const at = Number(txn.header.revision);
    await caughtUp(store, K);
    expect((await store.list(K)).map((r) => r.metadata.id)).toEqual(['a', 'b', 'c']);
    expect(seen.map((c) => [c.resource.metadata.id, c.type])).toEqual([
      ['a', 'created'],
      ['b', 'created'],
      ['c', 'created'],
    ]);
    // One etcd revision, each change its own position in it (a resume between them loses neither).
    expect(seen.slice(1).map((c) => etcdRevisionOf(c.revision))).toEqual([at, at]);
    const [first, second] = seen.slice(1).map((c) => c.revision);
    expect(first).toBeLessThan(second as number);
    // A watcher whose bookmark is the first of them resumes with the second (with one revision for both it got none).
    expect(history.readChanges(first as number, 10).changes.map((c) => c.resource.metadata.id)).toEqual(['c']);
    expect(history.list().map((r) => r.metadata.id)).toEqual(['a', 'b', 'c']);
  });

  it('does not lose a change committed between the snapshot and the watch when the stream breaks before its events', async () => {
    const prefix = newPrefix();
    const store = await connect(prefix);
    const other = await connect(prefix);
    // Another cosid writes between this kind's snapshot and its watch's creation, and the connection breaks right
    // after etcd answered the create, before the catch-up events arrived.
    const createWatch = store.etcd.createWatch.bind(store.etcd);
    let armed = true;
    store.etcd.createWatch = async (p, start, onData, previousValues) => {
      if (!armed) return createWatch(p, start, onData, previousValues);
      armed = false;
      await other.create({ ...K, id: 'early', spec: { n: 1 } }, 'other');
      const w = await createWatch(p, start, onData, previousValues);
      (w as unknown as { manager: { handleError(err: Error): void } }).manager.handleError(new Error('simulated connection loss'));
      return w;
    };
    const history = await store.feed.history(K);
    await other.create({ ...K, id: 'later', spec: { n: 2 } }, 'other');
    await caughtUp(store, K);
    expect((await store.list(K)).map((r) => r.metadata.id)).toEqual(['early', 'later']);
    expect(history.list().map((r) => r.metadata.id)).toEqual(['early', 'later']);
  });

  it('leaves a value that does not decode out of list(), so the static pod reconcile still applies the others', async () => {
    const { log, lines } = errorLines();
    const store = await connect(newPrefix(), { log });
    const SP = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };
    await rawClient().put(`${store.etcd.kindPrefix(SP)}junk`).value('{not ours').exec();
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'web' }, spec: { containers: [{ name: 'web', image: 'nginx' }] } };
    const result = await reconcileStaticPods(store, [{ id: 'default-web', pod, origin: 'test' }], silentLogger);
    expect(result.created).toEqual(['default-web']);
    expect((await store.list(SP)).map((r) => r.metadata.id)).toEqual(['default-web']);
    expect(lines.filter((l) => l.startsWith('stored value does not decode; left out') && l.includes(`${store.etcd.kindPrefix(SP)}junk`)).length).toBeGreaterThan(0);
  });

  it('leaves a value that does not decode out of listAt() below the window (a resumed bootstrap after a restart)', async () => {
    const prefix = newPrefix();
    const first = await connect(prefix);
    await first.create({ ...K, id: 'good', spec: { n: 1 } }, 'me');
    await rawClient().put(`${first.etcd.kindPrefix(K)}junk`).value('{not ours').exec();
    const at = (await caughtUp(first, K)).revision;
    await first.create({ ...K, id: 'later', spec: { n: 2 } }, 'me');
    // A restarted cosid: its window begins after `at`, so listAt reads etcd at that revision.
    const second = await connect(prefix);
    const history = await second.feed.history(K);
    expect(history.oldestRevision).toBeGreaterThan(at);
    expect((await second.feed.listAt(K, at)).map((r) => r.metadata.id)).toEqual(['good']);
  });

  it('serves a resume from before the window without a gap while the window forgets changes during the fetch', async () => {
    const prefix = newPrefix();
    const writer = await connect(prefix);
    await writer.create({ ...K, id: 'x0', spec: {} }, 'w');
    const mark = (await caughtUp(writer, K)).revision;
    await writer.create({ ...K, id: 'x1', spec: {} }, 'w');
    await writer.create({ ...K, id: 'x2', spec: {} }, 'w');

    // A restarted cosid with a window of one change: its history begins after x2.
    const store = await connect(prefix, { history: { historySize: 1, historyAgeMs: 0 } });
    const idsIn = (res: IWatchResponse) => res.events.map((ev) => ev.kv.key.toString('utf8').slice(store.etcd.kindPrefix(K).length));
    const waiter = () => {
      let resolve!: () => void;
      return { promise: new Promise<void>((r) => (resolve = r)), resolve: () => resolve() };
    };
    // The first watch created is the kind's own; the second the backfill's replay.
    const watches: Watcher[] = [];
    const replaySawY3 = waiter();
    const liveHeldY3 = waiter();
    let held: unknown[][] | undefined;
    const createWatch = store.etcd.createWatch.bind(store.etcd);
    store.etcd.createWatch = async (p, start, onData, previousValues) => {
      const w = await createWatch(p, start, onData, previousValues);
      watches.push(w);
      if (watches.length === 1) {
        // The kind's own watch: its events are held back (from `held = []` until released) to force the order.
        const emit = w.emit.bind(w);
        w.emit = (...args: unknown[]) => {
          if (held !== undefined && args[0] === 'data') {
            held.push(args);
            if (idsIn(args[1] as IWatchResponse).includes('y3')) liveHeldY3.resolve();
            return true;
          }
          return emit(...(args as [string, ...unknown[]]));
        };
        release = () => {
          const events = held ?? [];
          held = undefined;
          for (const args of events) emit(...(args as [string, ...unknown[]]));
        };
      } else if (watches.length === 2) {
        // Added before the backfill's own listener: once this resolves, the backfill has handled y3 too.
        w.on('data', (res: IWatchResponse) => {
          if (idsIn(res).includes('y3')) replaySawY3.resolve();
        });
      }
      return w;
    };
    let release = () => {};
    const history = await store.feed.history(K);
    expect(watches.length).toBe(1);

    // While the backfill waits for its fence: three more changes, which the replay delivers first (they are then
    // above the window's start), and only then the kind's own watch (the window of one forgets y1 and y2).
    const client = store.etcd.client as unknown as { put(key: string): { exec(): Promise<unknown> } };
    const put = client.put.bind(client);
    let armed = true;
    client.put = (key: string) => {
      const b = put(key);
      if (armed && key === store.etcd.kindPrefix(K)) {
        armed = false;
        const exec = b.exec.bind(b);
        b.exec = async () => {
          held = [];
          for (const id of ['y1', 'y2', 'y3']) await writer.create({ ...K, id, spec: {} }, 'w');
          await Promise.all([replaySawY3.promise, liveHeldY3.promise]);
          release();
          return exec();
        };
      }
      return b;
    };
    await store.feed.reach(K, mark);
    expect(armed).toBe(false);
    expect(watches.length).toBe(2);
    const ids = history.readChanges(mark, 100).changes.map((c) => c.resource.metadata.id);
    expect(ids).toEqual(['x1', 'x2', 'y1', 'y2', 'y3']);
  });
});
