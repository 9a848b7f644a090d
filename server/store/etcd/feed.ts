// The etcd store's change feed: one watch cache per kind (kind-cache.ts), opened when first read and shared by every
// reader of that kind; resumes from before a cache's window are read from etcd's own history.
import { CosiError } from '../../../shared/errors.js';
import { kindKey, type Kind, type Resource } from '../../../shared/resource.js';
import { sortById, type HistoryLimits } from '../kind-log.js';
import type { ChangeFeed, KindHistory } from '../store.js';
import { decodeAll } from './codec.js';
import { KindCache, type EtcdAccess } from './kind-cache.js';

export class EtcdFeed implements ChangeFeed {
  private readonly kinds = new Map<string, Promise<KindCache>>();
  private readonly ready = new Map<string, KindCache>();
  private closed = false;

  constructor(
    private readonly etcd: EtcdAccess,
    readonly instance: string,
    private readonly limits: HistoryLimits,
  ) {}

  /** The kind's cache if it is open now (the writer decides on it first). */
  cached(kind: Kind): KindCache | undefined {
    return this.ready.get(kindKey(kind));
  }

  opened(): KindHistory[] {
    return [...this.ready.values()].map((k) => k.log);
  }

  async history(kind: Kind): Promise<KindHistory> {
    return (await this.kindOf(kind)).log;
  }

  async reach(kind: Kind, after: number): Promise<void> {
    const k = await this.kindOf(kind);
    await k.reach(after);
  }

  async listAt(kind: Kind, revision: number): Promise<Resource[]> {
    const k = await this.kindOf(kind);
    if (revision > k.log.revision) await k.reach(revision);
    if (revision >= k.log.oldestRevision) return k.log.listAt(revision);
    const prefix = this.etcd.kindPrefix(kind);
    const res = await this.etcd.call(() => this.etcd.client.getAll().prefix(prefix).revision(revision).exec());
    return sortById(decodeAll(kind, prefix, res.kvs, this.etcd.log));
  }

  /** Stops every kind's watch; readers waiting on one fail with unavailable. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const kinds = await Promise.allSettled([...this.kinds.values()]);
    for (const k of kinds) if (k.status === 'fulfilled') k.value.close();
    this.kinds.clear();
    this.ready.clear();
  }

  private kindOf(kind: Kind): Promise<KindCache> {
    if (this.closed) return Promise.reject(new CosiError('unavailable', 'the etcd store is closed'));
    const key = kindKey(kind);
    let k = this.kinds.get(key);
    if (k === undefined) {
      k = KindCache.open(this.etcd, { namespace: kind.namespace, type: kind.type }, this.limits);
      this.kinds.set(key, k);
      k.then((opened) => this.ready.set(key, opened), () => undefined);
      // A kind that could not be opened (etcd unreachable) is tried again by the next reader.
      k.catch(() => this.kinds.delete(key));
    }
    return k;
  }
}
