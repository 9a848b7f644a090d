// One kind's watch cache on etcd: a KindLog fed, in revision order, by one etcd watch of the kind's prefix, with
// where that watch stands as one explicit state. Also fetches older history for resumes from before the log began
// (after a restart), and writes fences for resumes from the future.
import { randomBytes } from 'node:crypto';
import type { Etcd3, IKeyValue, IWatchResponse, Watcher } from 'etcd3';
import { CosiError } from '../../../shared/errors.js';
import type { Logger } from '../../../shared/log.js';
import { describePointer, type Kind, type Resource } from '../../../shared/resource.js';
import { KindLog, type HistoryLimits } from '../kind-log.js';
import type { Change } from '../store.js';
import { decodeAll, decodeValue, idOf, placeholder } from './codec.js';
import { asStoreError, errorText } from './errors.js';
import { keepResumePoint } from './resume-point.js';

/** What a kind's cache needs of the store: its client, its calls (errors typed) and its watches. */
export interface EtcdAccess {
  readonly client: Etcd3;
  readonly log: Logger;
  readonly watchGraceMs: number;
  kindPrefix(k: Kind): string;
  /** Runs an etcd call; its failure becomes a CosiError. */
  call<T>(f: () => Promise<T>): Promise<T>;
  /** A watch of the keys under `prefix` from `start`, once etcd has confirmed it. */
  createWatch(prefix: string, start: number, onData: (res: IWatchResponse) => void, previousValues?: boolean): Promise<Watcher>;
}

/**
 * Where the kind's watch stands:
 * - starting: the first range read and watch are under way;
 * - watching: the watch is connected (or etcd3 is reconnecting it and had no disconnect to report);
 * - reconnecting: the watch lost its connection; readers hear of it only if the grace ends first;
 * - unreachable: the grace ended: the log says unavailable, and etcd3 keeps reconnecting the watch;
 * - relisting: etcd cancelled the watch (compaction): the kind is read again and watched from there;
 * - closed: the store closed; nothing runs any more.
 */
type WatchState =
  | { readonly is: 'starting' }
  | { readonly is: 'watching'; readonly watcher: Watcher }
  | { readonly is: 'reconnecting'; readonly watcher: Watcher; readonly grace: NodeJS.Timeout }
  | { readonly is: 'unreachable'; readonly watcher: Watcher }
  | { readonly is: 'relisting' }
  | { readonly is: 'closed' };

export class KindCache {
  private state: WatchState = { is: 'starting' };
  private readonly waiters: { revision: number; resolve: () => void; reject: (err: CosiError) => void }[] = [];
  /** The etcd mod_revision of each resource the log holds: what a write's compare-and-swap compares. */
  private readonly mods = new Map<string, number>();
  private backfills: Promise<void> = Promise.resolve();
  private readonly prefix: string;
  private readonly prefixBytes: number;

  private constructor(
    private readonly store: EtcdAccess,
    readonly log: KindLog,
  ) {
    this.prefix = store.kindPrefix(log.kind);
    this.prefixBytes = Buffer.byteLength(this.prefix);
  }

  static async open(store: EtcdAccess, kind: Kind, limits: HistoryLimits): Promise<KindCache> {
    const { revision, items, mods } = await KindCache.snapshot(store, kind);
    const k = new KindCache(store, new KindLog(kind, limits, revision, items));
    for (const [id, mod] of mods) k.mods.set(id, mod);
    await k.watchFrom(revision + 1);
    return k;
  }

  /** The mod_revision of the resource as the log holds it (undefined: the log holds none). */
  modRevision(id: string): number | undefined {
    return this.log.current(id) === undefined ? undefined : this.mods.get(id);
  }

  /** The kind at one revision, from one range read. A value that does not decode is left out, and logged. */
  private static async snapshot(store: EtcdAccess, kind: Kind): Promise<{ revision: number; items: Resource[]; mods: Map<string, number> }> {
    const prefix = store.kindPrefix(kind);
    const res = await store.call(() => store.client.getAll().prefix(prefix).exec());
    const mods = new Map(res.kvs.filter((kv) => kv.key.length > Buffer.byteLength(prefix)).map((kv) => [idOf(kv, prefix), Number(kv.mod_revision)] as const));
    return { revision: Number(res.header.revision), items: decodeAll(kind, prefix, res.kvs, store.log), mods };
  }

  private async watchFrom(start: number): Promise<void> {
    const w = await this.store.createWatch(this.prefix, start, (res) => this.ingest(res));
    if (this.state.is === 'closed') {
      void w.cancel().catch(() => undefined);
      return;
    }
    this.state = { is: 'watching', watcher: w };
    keepResumePoint(w, () => this.log.revision + 1);
    w.on('disconnected', (err: Error) => this.disconnected(w, err));
    w.on('connected', () => this.reconnected(w));
    w.on('error', (err: Error) => void this.restart(err));
  }

  /** Takes one watch response into the log, in revision order, and wakes fences it reached. */
  private ingest(res: IWatchResponse): void {
    for (const ev of res.events) {
      const revision = Number(ev.kv.mod_revision);
      // Older than the log: already applied. Equal: another key of the same transaction (or the fence's own).
      if (revision < this.log.revision) continue;
      if (ev.kv.key.length <= this.prefixBytes) {
        this.log.advance(revision); // a fence
        continue;
      }
      const id = idOf(ev.kv, this.prefix);
      if (ev.type === 'Delete') this.mods.delete(id);
      else this.mods.set(id, revision);
      const change = this.changeOf(ev.type, ev.kv, undefined);
      if (change !== undefined) this.log.commit(change);
      else this.log.advance(revision);
    }
    this.settleWaiters();
  }

  /**
   * A watch event as a change. Live, the old state is the log's own (the same object watchers and the frame cache
   * hold); in a backfill it is decoded from the event's previous value.
   */
  changeOf(type: 'Put' | 'Delete', kv: IKeyValue, prev: IKeyValue | undefined, live = true): Change | undefined {
    const revision = Number(kv.mod_revision);
    const p = { ...this.log.kind, id: idOf(kv, this.prefix) };
    const old = live ? this.log.current(p.id) : prev !== undefined ? decodeValue(p, prev) : undefined;
    const oldResource = typeof old === 'string' ? undefined : old;
    const committedAt = Date.now();
    if (type === 'Delete') {
      if (oldResource === undefined) return undefined; // nothing known to delete (its value never decoded)
      return Object.freeze({ revision, type: 'destroyed' as const, resource: oldResource, old: oldResource, committedAt });
    }
    const decoded = decodeValue(p, kv);
    const changeType = oldResource === undefined ? ('created' as const) : ('updated' as const);
    if (typeof decoded === 'string') {
      this.store.log.error('stored value does not decode: reported to watchers as ERRORED', { key: kv.key.toString('utf8'), revision, error: decoded });
      const error = `${describePointer(p)} at etcd revision ${revision} does not decode: ${decoded}`;
      return Object.freeze({ revision, type: changeType, resource: placeholder(p), old: oldResource, committedAt, error });
    }
    return Object.freeze({ revision, type: changeType, resource: decoded, old: oldResource, committedAt });
  }

  /** Every change committed before this call is in the log once this resolves: the fence's own event came back. */
  async fence(): Promise<void> {
    if (this.log.unavailable !== undefined) throw this.log.unavailable;
    const token = randomBytes(8).toString('hex');
    const res = await this.store.call(() => this.store.client.put(this.prefix).value(token).exec());
    await this.until(Number(res.header.revision));
  }

  private until(revision: number): Promise<void> {
    if (this.log.revision >= revision) return Promise.resolve();
    if (this.log.unavailable !== undefined) return Promise.reject(this.log.unavailable);
    return new Promise((resolve, reject) => this.waiters.push({ revision, resolve, reject }));
  }

  private settleWaiters(): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i];
      if (w !== undefined && w.revision <= this.log.revision) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  /** Makes a resume after `after` servable: from the future, wait for it; from before the log, fetch the gap. */
  async reach(after: number): Promise<void> {
    if (after > this.log.revision) {
      await this.fence();
      if (after > this.log.revision) throw new CosiError('invalid-bookmark', `revision ${after} is in the future (etcd is at ${this.log.revision})`);
    }
    if (after >= this.log.oldestRevision) return;
    // One backfill at a time per kind; a later one that is already covered returns at once.
    const run = this.backfills.then(() => (after >= this.log.oldestRevision ? undefined : this.backfill(after)));
    this.backfills = run.catch(() => undefined);
    await run;
  }

  /**
   * Fetches the kind's changes after `after` up to where the log begins, from etcd's history: a watch from
   * after+1 replays them in order, and a fence written after it was created marks where the replay is complete.
   */
  private async backfill(after: number): Promise<void> {
    const changes: Change[] = [];
    let fenceRevision = Number.POSITIVE_INFINITY;
    let seen = after;
    let done!: () => void;
    let fail!: (err: CosiError) => void;
    const finished = new Promise<void>((resolve, reject) => {
      done = resolve;
      fail = reject;
    });
    // The replay's handlers may reject it before it is awaited (while the watch is created or the fence written),
    // or when it never is (the fence's put failed): handled here, so a broken replay never becomes an unhandled
    // rejection, which would end the process.
    finished.catch(() => undefined);
    const limit = this.log.limits.maxSize;
    // Compacted history answers a read at that revision with an error (too-old); a watch would only be cancelled.
    await this.store.call(() => this.store.client.getAll().prefix(this.prefix).revision(after + 1).limit(1).exec());
    const onData = (res: IWatchResponse) => {
      for (const ev of res.events) {
        const revision = Number(ev.kv.mod_revision);
        seen = Math.max(seen, revision);
        if (revision >= fenceRevision) return done();
        if (ev.kv.key.length <= this.prefixBytes) continue;
        const c = this.changeOf(ev.type, ev.kv, ev.prev_kv ?? undefined, false);
        // All of them: the log may forget more of its oldest changes before the fence comes back.
        if (c !== undefined) changes.push(c);
        if (changes.length > limit) return fail(new CosiError('too-old', `more than ${limit} changes of ${this.log.kind.type} since revision ${after}; list again`));
      }
    };
    const epoch = this.log.epoch;
    const replay = await this.store.createWatch(this.prefix, after + 1, onData, true);
    try {
      replay.on('error', (err: Error) => fail(asStoreError(err, [])));
      replay.on('disconnected', (err: Error) => fail(new CosiError('unavailable', `etcd went away while reading history: ${errorText(err)}`)));
      const put = this.store.call(() => this.store.client.put(this.prefix).value(randomBytes(8).toString('hex')).exec());
      put.catch(() => undefined); // a replay that failed first ends the backfill; the put's own failure then goes unheard
      // `finished` cannot resolve before the fence's revision is known: the race ends early only on a failed replay.
      const res = await Promise.race([put, finished.then(() => put)]);
      fenceRevision = Number(res.header.revision);
      // The fence's event may have come before the answer to its put.
      if (seen >= fenceRevision) done();
      await finished;
    } finally {
      void replay.cancel().catch(() => undefined);
    }
    if (this.log.epoch !== epoch) throw new CosiError('too-old', `the history of ${this.log.kind.type} started over while revision ${after} was being fetched; list again`);
    if (!this.log.prepend(after, changes)) {
      throw new CosiError('too-old', `more than ${limit} changes of ${this.log.kind.type} since revision ${after}; list again`);
    }
    this.store.log.debug('history fetched from etcd', { kind: this.log.kind.type, after, changes: changes.length });
  }

  private disconnected(watcher: Watcher, err: Error): void {
    if (this.state.is !== 'watching' || this.state.watcher !== watcher || this.log.unavailable !== undefined) return;
    // A member failing over reconnects within the grace; etcd gone for longer is the readers' business.
    const grace = setTimeout(() => {
      if (this.state.is !== 'reconnecting' || this.state.grace !== grace) return;
      this.state = { is: 'unreachable', watcher };
      const lost = new CosiError('unavailable', `etcd is unreachable (${errorText(err)}); reconnect and resume from your last bookmark`);
      this.log.fail(lost);
      for (const w of this.waiters.splice(0)) w.reject(lost);
    }, this.store.watchGraceMs);
    grace.unref();
    this.state = { is: 'reconnecting', watcher, grace };
  }

  private reconnected(watcher: Watcher): void {
    const s = this.state;
    if ((s.is !== 'watching' && s.is !== 'reconnecting' && s.is !== 'unreachable') || s.watcher !== watcher) return;
    if (s.is === 'reconnecting') clearTimeout(s.grace);
    this.state = { is: 'watching', watcher };
    if (this.log.unavailable !== undefined) this.store.log.info('etcd reachable again: watch resumed', { kind: this.log.kind.type, after: this.log.revision });
    this.log.recover();
  }

  /** The watch was cancelled by etcd (its history was compacted past where it was): start over from a fresh read. */
  private async restart(err: Error): Promise<void> {
    if (this.state.is === 'closed') return;
    // The cancelled watch's own disconnect no longer matters: the relist reports its failures to the log itself.
    if (this.state.is === 'reconnecting') clearTimeout(this.state.grace);
    this.state = { is: 'relisting' };
    this.store.log.warn('etcd cancelled the watch; reading the kind again', { kind: this.log.kind.type, error: errorText(err) });
    for (let delay = 100; this.isRelisting(); delay = Math.min(delay * 2, 5000)) {
      try {
        const { revision, items, mods } = await KindCache.snapshot(this.store, this.log.kind);
        this.mods.clear();
        for (const [id, mod] of mods) this.mods.set(id, mod);
        this.log.reset(revision, items, new CosiError('too-old', `etcd compacted its history past this watch (${errorText(err)}); list again`));
        await this.watchFrom(revision + 1);
        this.settleWaiters();
        return;
      } catch (again) {
        this.log.fail(asStoreError(again, []));
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
      }
    }
  }

  /** Whether a relist is still wanted (the store may close meanwhile). */
  private isRelisting(): boolean {
    return this.state.is === 'relisting';
  }

  close(): void {
    const s = this.state;
    this.state = { is: 'closed' };
    if (s.is === 'reconnecting') clearTimeout(s.grace);
    const closed = new CosiError('unavailable', 'the etcd store is closed');
    for (const w of this.waiters.splice(0)) w.reject(closed);
    if (s.is === 'watching' || s.is === 'reconnecting' || s.is === 'unreachable') void s.watcher.cancel().catch(() => undefined);
  }
}
