// The fleet's writer (server/fleet/writer.ts) on the run's real etcd. Owner keys are made with a plain put, and
// their create_revision is the token, as an acquisition's would be. What is checked is what etcd holds and what an
// etcd watch of the prefix sees, and every transaction the writer sends (the client's txn is wrapped):
// - 70 nodes x 10 ops commit, every transaction within etcd 3.4's limits, each node's writes in its order;
// - a node whose owner key was deleted, or made again, is fenced alone; the others of its transaction commit;
// - a later submit under a stale token is fenced without a call to etcd;
// - an error from etcd loses nothing and writes nothing twice, even when the commit went through;
// - bookmarks are stored with the data, readable with the acquisition's decoder.
// BENCH_FLEET_WRITER=1 adds a measure: 1000 nodes x 5 ops, ops/s and txns/s.
import type { Etcd3, ITxnRequest, ITxnResponse, IWatchResponse, Watcher } from 'etcd3';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { isCosiError } from '../shared/errors.js';
import { silentLogger } from '../shared/log.js';
import { decodeBookmarkValue } from '../server/fleet/bookmark-value.js';
import type { Acquired, NodeOp, SubmitResult } from '../server/fleet/contracts.js';
import { FleetKeys, MIRRORED_KINDS } from '../server/fleet/keys.js';
import { FleetWriter, type FleetWriterOptions } from '../server/fleet/writer.js';
import { etcdClient } from '../server/store/etcd/client.js';
import { eventually } from './harness.js';

const etcd = inject('etcd');
const closers: (() => unknown)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c();
});

const KIND = MIRRORED_KINDS[1] as (typeof MIRRORED_KINDS)[number];

interface SentTxn {
  readonly req: ITxnRequest;
  res?: ITxnResponse;
}

describe.skipIf(etcd === null)('fleet writer on etcd', () => {
  const e = etcd as NonNullable<typeof etcd>;
  const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };

  /** A client whose transactions are recorded; `fault` may throw before or after the real call. */
  function client(): { client: Etcd3; sent: SentTxn[]; fault: { before?: () => boolean; after?: () => boolean } } {
    const c = etcdClient(e.endpoints, tls, 5000);
    closers.push(() => c.close());
    const sent: SentTxn[] = [];
    const fault: { before?: () => boolean; after?: () => boolean } = {};
    const txn = c.kv.txn.bind(c.kv);
    c.kv.txn = async (req: ITxnRequest, ...rest) => {
      if (fault.before?.() === true) throw new Error('14 UNAVAILABLE: No connection established (test)');
      const s: SentTxn = { req };
      sent.push(s);
      s.res = await txn(req, ...rest);
      if (fault.after?.() === true) throw new Error('4 DEADLINE_EXCEEDED: Deadline exceeded (test, after the commit)');
      return s.res;
    };
    return { client: c, sent, fault };
  }

  function writer(c: Etcd3, keys: FleetKeys, opts: FleetWriterOptions = {}): FleetWriter {
    const w = new FleetWriter(c, keys, silentLogger, { retryInitialMs: 5, retryMaxMs: 50, ...opts });
    closers.push(() => w.close());
    return w;
  }

  /** Owner keys made with a plain put: the token is the key's create_revision. */
  async function own(c: Etcd3, keys: FleetKeys, node: string): Promise<Acquired> {
    const res = await c.put(keys.owner(node)).value('replica-a').exec();
    return { node, token: String(res.header.revision), bookmarks: new Map(), written: new Map(), fleetNode: undefined };
  }

  /** Every put and delete under the prefix from `start`, in etcd's order. */
  async function watchAll(c: Etcd3, prefix: string, start: number): Promise<{ events: { key: string; value: string; rev: number; type: string }[] }> {
    const seen = { events: [] as { key: string; value: string; rev: number; type: string }[] };
    const w: Watcher = await c.watch().prefix(prefix).startRevision(String(start)).create();
    closers.push(() => w.cancel());
    w.on('data', (res: IWatchResponse) => {
      for (const ev of res.events) seen.events.push({ key: ev.kv.key.toString(), value: ev.kv.value.toString(), rev: Number(ev.kv.mod_revision), type: ev.type });
    });
    return seen;
  }

  const newKeys = () => new FleetKeys(`/test-fleet-${randomBytes(6).toString('hex')}/`);

  /** Op i of a node: keys id0..id2 in turn (so keys repeat within a node's queue), each with a bookmark [i]. */
  const opOf = (keys: FleetKeys, node: string, i: number): NodeOp => ({
    key: keys.resource(KIND, node, `id${i % 3}`),
    value: `${node} op ${i}`,
    bookmark: { type: KIND.type, value: new Uint8Array([i]) },
  });

  function withinLimits(sent: readonly SentTxn[]): void {
    for (const s of sent) {
      expect(s.req.compare?.length ?? 0).toBeLessThanOrEqual(64);
      expect(s.req.success?.length ?? 0).toBeLessThanOrEqual(120);
      expect(s.req.failure?.length ?? 0).toBeLessThanOrEqual(64);
      const keys = (s.req.success ?? []).map((op) => (op.request_put?.key ?? op.request_delete_range?.key ?? op.request_range?.key)?.toString());
      expect(new Set(keys).size).toBe(keys.length);
    }
  }

  it('commits 70 nodes x 10 ops in transactions within the limits, each node in its order, with its bookmark', async () => {
    const { client: c, sent } = client();
    const keys = newKeys();
    const nodes = Array.from({ length: 70 }, (_, i) => `n${i}`);
    const acquired = await Promise.all(nodes.map((n) => own(c, keys, n)));
    const start = Math.max(...acquired.map((a) => Number(a.token))) + 1;
    const watched = await watchAll(c, `${keys.prefix}r/`, start);
    const commits: { node: string; count: number }[] = [];
    const w = writer(c, keys, { onCommit: (node, count) => commits.push({ node, count }) });

    // Each op its own submit, nodes interleaved: the writer's queues decide what goes together.
    const results: Promise<SubmitResult>[] = [];
    for (let i = 0; i < 10; i++) for (const a of acquired) results.push(w.submit(a, [opOf(keys, a.node, i)]));
    expect(w.pending('n5')).toBeGreaterThan(0);
    expect(await Promise.all(results)).toEqual(results.map(() => ({ committed: 1 })));
    expect(w.pending('n5')).toBe(0);

    withinLimits(sent);
    expect(sent.every((s) => s.res?.succeeded === true)).toBe(true);
    // Grouped: far fewer transactions than ops, and more than one node in most.
    expect(sent.length).toBeLessThan(700 / 2);
    expect(w.stats).toEqual({ txns: sent.length, opsCommitted: 700, fenced: 0 });
    expect(commits.reduce((s, x) => s + x.count, 0)).toBe(700);

    // etcd's own order of each node's writes is the submitted order.
    await eventually(() => expect(watched.events.length).toBe(700));
    for (const n of nodes) {
      const mine = watched.events.filter((ev) => ev.key.startsWith(keys.nodeKindPrefix(KIND, n)));
      expect(mine.map((ev) => ev.value)).toEqual(Array.from({ length: 10 }, (_, i) => `${n} op ${i}`));
      expect(mine.map((ev) => ev.rev)).toEqual([...mine.map((ev) => ev.rev)].sort((x, y) => x - y));
    }
    const bm = await c.get(keys.bookmark('n7', KIND.type)).buffer();
    expect(decodeBookmarkValue(bm as Buffer)).toEqual({ token: acquired[7]?.token, bookmark: new Uint8Array([9]) });
  });

  it('fences a node whose owner key was deleted or made again, alone: the others in its transaction commit', async () => {
    const { client: c, sent } = client();
    const keys = newKeys();
    const acquired = await Promise.all(['a', 'b', 'gone', 'remade', 'c'].map((n) => own(c, keys, n)));
    const [a, b, gone, remade, cc] = acquired as [Acquired, Acquired, Acquired, Acquired, Acquired];
    await c.delete().key(keys.owner('gone')).exec();
    await c.delete().key(keys.owner('remade')).exec();
    const again = await own(c, keys, 'remade');
    // One transaction at a time: 'a' goes first alone, the four others wait and go together.
    const w = writer(c, keys, { maxInFlight: 1 });
    const ops = (x: Acquired) => Array.from({ length: 5 }, (_, i) => opOf(keys, x.node, i));
    const results = await Promise.all(acquired.map((x) => w.submit(x, ops(x))));
    expect(results).toEqual([{ committed: 5 }, { committed: 5 }, 'fenced', 'fenced', { committed: 5 }]);

    // A transaction of the four failed its compares, then the two still ours committed without the others.
    const failed = sent.filter((s) => s.res?.succeeded === false);
    expect(failed.length).toBe(1);
    const compared = (failed[0]?.req.compare ?? []).map((x) => x.key?.toString());
    expect(compared).toEqual(expect.arrayContaining([keys.owner('b'), keys.owner('gone'), keys.owner('remade'), keys.owner('c')]));
    withinLimits(sent);
    for (const x of [a, b, cc]) expect(await c.get(keys.resource(KIND, x.node, 'id1')).string()).toBe(`${x.node} op 4`);
    for (const x of [gone, remade]) {
      expect(await c.getAll().prefix(keys.nodeKindPrefix(KIND, x.node)).keys()).toEqual([]);
      expect(await c.get(keys.bookmark(x.node, KIND.type)).string()).toBeNull();
    }
    expect(w.stats.fenced).toBe(2);
    expect(w.isFenced('gone', gone.token)).toBe(true);

    // Later: under the stale token, fenced at once, without asking etcd; under the new one, written.
    const calls = sent.length;
    expect(await w.submit(remade, ops(remade))).toBe('fenced');
    expect(sent.length).toBe(calls);
    expect(await w.submit(again, ops(again))).toEqual({ committed: 5 });
    expect(decodeBookmarkValue((await c.get(keys.bookmark('remade', KIND.type)).buffer()) as Buffer)?.token).toBe(again.token);
  });

  it('keeps every op through etcd errors, and does not write again a commit whose answer was lost', async () => {
    const { client: c, sent, fault } = client();
    const keys = newKeys();
    const acquired = await Promise.all(['p', 'q', 'r'].map((n) => own(c, keys, n)));
    const start = Math.max(...acquired.map((x) => Number(x.token))) + 1;
    const watched = await watchAll(c, `${keys.prefix}r/`, start);
    const w = writer(c, keys);
    // The first commit goes through but its answer is lost; then two calls fail before reaching etcd.
    let lost = 1;
    let refused = 0;
    fault.after = () => lost-- > 0 && ((refused = 2), true);
    fault.before = () => refused-- > 0;
    const results = await Promise.all(acquired.map((x) => w.submit(x, Array.from({ length: 3 }, (_, i) => opOf(keys, x.node, i)))));
    expect(results).toEqual([{ committed: 3 }, { committed: 3 }, { committed: 3 }]);
    await eventually(() => expect(watched.events.length).toBe(9));
    // Each key written once: no second put after the lost answer.
    const kvs = await c.getAll().prefix(`${keys.prefix}r/`).exec();
    expect(kvs.kvs.map((kv) => kv.version)).toEqual(kvs.kvs.map(() => '1'));
    expect(new Set(watched.events.map((ev) => ev.value)).size).toBe(9);
    expect(sent.filter((s) => s.req.success?.some((op) => op.request_range !== undefined)).length).toBeGreaterThan(0);
    expect(w.stats.opsCommitted).toBe(9);
  });

  it('sends again what a failed call did not commit', async () => {
    const { client: c, fault } = client();
    const keys = newKeys();
    const x = await own(c, keys, 'x');
    const w = writer(c, keys);
    let refused = 3;
    fault.before = () => refused-- > 0;
    expect(await w.submit(x, [opOf(keys, 'x', 0), opOf(keys, 'x', 1)])).toEqual({ committed: 2 });
    expect(await c.get(keys.resource(KIND, 'x', 'id1')).string()).toBe('x op 1');
  });

  it('refuses what is pending when closed while etcd does not answer', async () => {
    const { client: c, fault } = client();
    const keys = newKeys();
    const x = await own(c, keys, 'x');
    const w = writer(c, keys);
    let calls = 0;
    fault.before = () => ++calls > 0;
    const pending = w.submit(x, [opOf(keys, 'x', 0)]);
    await eventually(() => expect(calls).toBeGreaterThan(1));
    expect(w.pending('x')).toBe(1);
    w.close();
    await expect(pending).rejects.toSatisfy((err: unknown) => isCosiError(err, 'unavailable'));
    await expect(w.submit(x, [opOf(keys, 'x', 1)])).rejects.toSatisfy((err: unknown) => isCosiError(err, 'unavailable'));
    expect(await c.get(keys.resource(KIND, 'x', 'id0')).string()).toBeNull();
  });

  it.skipIf(process.env['BENCH_FLEET_WRITER'] !== '1')('bench: 1000 nodes x 5 ops', async () => {
    const { client: c, sent } = client();
    const keys = newKeys();
    const acquired = await Promise.all(Array.from({ length: 1000 }, (_, i) => own(c, keys, `node-${i}`)));
    const w = writer(c, keys);
    const value = 'x'.repeat(600);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const results = await Promise.all(
      acquired.map((a) => w.submit(a, Array.from({ length: 5 }, (_, i) => ({ key: keys.resource(KIND, a.node, `pod-${i}`), value, bookmark: { type: KIND.type, value: new Uint8Array(40) } })))),
    );
    const s = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    expect(results.every((r) => r !== 'fenced' && r.committed === 5)).toBe(true);
    withinLimits(sent);
    process.stdout.write(`fleet writer bench: 5000 ops in ${sent.length} txns, ${s.toFixed(2)} s: ${(5000 / s).toFixed(0)} ops/s, ${(sent.length / s).toFixed(0)} txns/s, this process's CPU ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms\n`);
  });
});
