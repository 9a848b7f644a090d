// Review: EtcdKind.backfill keeps a replayed change only when, as it arrives, it is at or below the log's oldest
// revision; the rest are "already in the log". If the log forgets some of them (trim) before the fence comes back,
// prepend() still moves the floor down to `after`, and the history claims to be complete over a gap.
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { kindKey } from '../shared/resource.js';
import { EtcdStore } from '../server/store/etcd.js';

const etcd = inject('etcd');
const opened: { close(): unknown }[] = [];
afterAll(async () => {
  for (const c of opened.reverse()) await c.close();
});

describe.skipIf(etcd === null)('review: backfill while the log trims', () => {
  const e = etcd as NonNullable<typeof etcd>;
  const tls = { caPem: e.tls.caPem, certPem: e.tls.certPem, keyPem: e.tls.keyPem };

  it('never serves a resume with a gap', async () => {
    const prefix = `/test-${randomBytes(6).toString('hex')}/`;
    const K = { namespace: 'ns', type: 'Things.test.dev' };
    const writer = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix });
    opened.push(writer);
    await writer.create({ ...K, id: 'x0', spec: {} }, 'w');
    const mark = (await writer.feed.sync(K)).revision;
    await writer.create({ ...K, id: 'x1', spec: {} }, 'w');
    await writer.create({ ...K, id: 'x2', spec: {} }, 'w');

    // A restarted cosid with a small window.
    const store = await EtcdStore.connect({ endpoints: e.endpoints, tls, prefix, history: { historySize: 1, historyAgeMs: 0 } });
    opened.push(store);
    const history = await store.feed.history(K);
    const kind = await (store as unknown as { kinds: Map<string, Promise<{ watcher: { emit: (...a: unknown[]) => boolean } }>> }).kinds.get(kindKey(K));
    const live = kind!.watcher;
    const emit = live.emit.bind(live);
    let held: unknown[][] | undefined;
    live.emit = (...args: unknown[]) => {
      if (held !== undefined && args[0] === 'data') {
        held.push(args);
        return true;
      }
      return emit(...args);
    };
    // While the backfill waits for its fence, three more changes: the replay sees them first (above the floor:
    // skipped), then the kind's own watch delivers them and the window of one forgets the first two.
    const client = store.client as unknown as { put(key: string): { exec(): Promise<unknown> } };
    const put = client.put.bind(client);
    let armed = true;
    client.put = (key: string) => {
      const b = put(key);
      if (armed && key === store.kindPrefix(K)) {
        armed = false;
        const exec = b.exec.bind(b);
        b.exec = async () => {
          held = [];
          for (const id of ['y1', 'y2', 'y3']) await writer.create({ ...K, id, spec: {} }, 'w');
          await new Promise((r) => setTimeout(r, 500));
          const release = held;
          held = undefined;
          for (const args of release) emit(...args);
          return exec();
        };
      }
      return b;
    };
    await store.feed.reach(history, mark);
    const ids = history.readChanges(mark, 100).changes.map((c) => c.resource.metadata.id);
    expect(ids).toEqual(['x1', 'x2', 'y1', 'y2', 'y3']);
  });
});
