// The watch cache over a backend (backend.ts), as the Kubernetes Cacher over its storage: one KindCache per kind,
// opened when the kind is first read and shared by every reader of it. It is the ChangeFeed of a store whose
// resources live elsewhere (etcd.ts); resumes from before a kind's window are served from the backend's history.
import { CosiError } from '../../shared/errors.js';
import { kindKey, type Kind, type Resource } from '../../shared/resource.js';
import type { Backend } from './backend.js';
import { KindCache, type KindCacheOptions } from './kind-cache.js';
import type { ChangeFeed, KindHistory } from './store.js';

export class Cacher implements ChangeFeed {
  readonly instance: string;
  private readonly kinds = new Map<string, Promise<KindCache>>();
  private readonly ready = new Map<string, KindCache>();
  private closed = false;

  constructor(
    private readonly backend: Backend,
    private readonly opts: KindCacheOptions,
  ) {
    this.instance = backend.instance;
  }

  /** The kind's cache if it is open now. */
  cached(kind: Kind): KindCache | undefined {
    return this.ready.get(kindKey(kind));
  }

  /** The kind's cache, opened when first asked. Throws unavailable. */
  open(kind: Kind): Promise<KindCache> {
    return this.kindOf(kind);
  }

  opened(): KindHistory[] {
    return [...this.ready.values()].map((k) => k.log);
  }

  async history(kind: Kind): Promise<KindHistory> {
    return (await this.open(kind)).log;
  }

  async reach(kind: Kind, after: number): Promise<void> {
    await (await this.open(kind)).reach(after);
  }

  async listAt(kind: Kind, revision: number): Promise<Resource[]> {
    const k = await this.open(kind);
    if (revision > k.log.revision) await k.reach(revision);
    if (revision >= k.log.oldestRevision) return k.log.listAt(revision);
    return this.backend.listAt(kind, revision);
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
    if (this.closed) return Promise.reject(new CosiError('unavailable', `the ${this.backend.name} store is closed`));
    const key = kindKey(kind);
    let k = this.kinds.get(key);
    if (k === undefined) {
      k = KindCache.open(this.backend, { namespace: kind.namespace, type: kind.type }, this.opts);
      this.kinds.set(key, k);
      k.then((opened) => this.ready.set(key, opened), () => undefined);
      // A kind that could not be opened (the backend unreachable) is tried again by the next reader.
      k.catch(() => this.kinds.delete(key));
    }
    return k;
  }
}
