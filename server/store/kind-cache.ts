// One kind's watch cache over a backend (backend.ts): a KindLog fed, in revision order, by one watch of the kind,
// with where that watch stands as one explicit state. Also fetches older history for resumes from before the log
// began (after a restart), waits on fences for resumes from the future, and reads the kind again when the backend
// cut its history past the watch.
import { CosiError, isCosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Kind, Pointer, Resource } from '../../shared/resource.js';
import { Undecodable, type Backend, type BackendEvent, type BackendWatch, type KindSnapshot, type PastChange, type StoredValue, type WatchSink } from './backend.js';
import { KindLog, type HistoryLimits } from './kind-log.js';
import type { Change } from './store.js';

export interface KindCacheOptions {
  readonly limits: HistoryLimits;
  /** A watch may be disconnected this long (a member failing over) before the kind's readers hear of it. */
  readonly graceMs: number;
  readonly log: Logger;
}

/**
 * Where the kind's watch stands:
 * - starting: the first read and watch are under way;
 * - watching: the watch is connected (or the backend is reconnecting it and had no disconnect to report);
 * - reconnecting: the watch lost its connection; readers hear of it only if the grace ends first;
 * - unreachable: the grace ended: the log says unavailable, and the backend keeps reconnecting the watch;
 * - relisting: the backend ended the watch (its history was cut): the kind is read again and watched from there;
 * - closed: the store closed; nothing runs any more.
 */
type WatchState =
  | { readonly is: 'starting' }
  | { readonly is: 'watching'; readonly watch: BackendWatch }
  | { readonly is: 'reconnecting'; readonly watch: BackendWatch; readonly grace: NodeJS.Timeout }
  | { readonly is: 'unreachable'; readonly watch: BackendWatch }
  | { readonly is: 'relisting' }
  | { readonly is: 'closed' };

export class KindCache {
  private state: WatchState = { is: 'starting' };
  private readonly waiters: { revision: number; resolve: () => void; reject: (err: CosiError) => void }[] = [];
  /** The revision each resource the log holds was last written at: what a write's compare-and-swap compares. */
  private readonly mods = new Map<string, number>();
  private backfills: Promise<void> = Promise.resolve();

  private constructor(
    private readonly backend: Backend,
    readonly log: KindLog,
    private readonly opts: KindCacheOptions,
  ) {}

  static async open(backend: Backend, kind: Kind, opts: KindCacheOptions): Promise<KindCache> {
    const snapshot = await backend.snapshot(kind);
    const cache = new KindCache(backend, new KindLog(kind, opts.limits, snapshot.revision, snapshot.items), opts);
    cache.keepModRevisions(snapshot);
    await cache.watchAfter(snapshot.revision);
    return cache;
  }

  /** The revision the resource the log holds was last written at (undefined: the log holds none). */
  modRevision(id: string): number | undefined {
    return this.log.current(id) === undefined ? undefined : this.mods.get(id);
  }

  private keepModRevisions(snapshot: KindSnapshot): void {
    this.mods.clear();
    for (const [id, mod] of snapshot.modRevisions) this.mods.set(id, mod);
  }

  private async watchAfter(after: number): Promise<void> {
    let watch: BackendWatch | undefined;
    const sink: WatchSink = {
      events: (events) => this.ingest(events),
      position: () => this.log.revision,
      disconnected: (err) => watch !== undefined && this.disconnected(watch, err),
      reconnected: () => watch !== undefined && this.reconnected(watch),
      ended: (err) => watch !== undefined && this.ended(watch, err),
    };
    watch = await this.backend.watch(this.log.kind, after, sink);
    if (this.state.is === 'closed') {
      watch.cancel();
      return;
    }
    this.state = { is: 'watching', watch };
  }

  /** Takes one response of the watch into the log, in revision order, and wakes the fences it reached. */
  private ingest(events: readonly BackendEvent[]): void {
    for (const ev of events) {
      // Older than the log: already applied. Equal: another key of the same transaction (or a fence's own).
      if (ev.revision < this.log.revision) continue;
      if (ev.type === 'progress') {
        this.log.advance(ev.revision);
        continue;
      }
      if (ev.type === 'delete') this.mods.delete(ev.id);
      else this.mods.set(ev.id, ev.revision);
      // Live, the old state is the log's own (the same object watchers and the frame cache hold).
      const change = this.changeOf(ev.id, ev.revision, ev.type === 'put' ? ev.value : undefined, this.log.current(ev.id));
      if (change !== undefined) this.log.commit(change);
      else this.log.advance(ev.revision);
    }
    this.settleWaiters();
  }

  /** A change of the resource `id` to `value` (undefined: deleted), or undefined when there is nothing to tell. */
  private changeOf(id: string, revision: number, value: StoredValue | undefined, old: StoredValue | undefined): Change | undefined {
    const oldResource = old instanceof Undecodable ? undefined : old;
    const committedAt = Date.now();
    if (value === undefined) {
      if (oldResource === undefined) return undefined; // nothing known to delete (its value never decoded)
      return Object.freeze({ revision, type: 'destroyed' as const, resource: oldResource, old: oldResource, committedAt });
    }
    const type = oldResource === undefined ? ('created' as const) : ('updated' as const);
    if (value instanceof Undecodable) {
      return Object.freeze({ revision, type, resource: placeholder({ ...this.log.kind, id }), old: oldResource, committedAt, error: value.message });
    }
    return Object.freeze({ revision, type, resource: value, old: oldResource, committedAt });
  }

  /** Every change committed before this call is in the log once this resolves: the fence came back. */
  async fence(): Promise<void> {
    if (this.log.unavailable !== undefined) throw this.log.unavailable;
    await this.until(await this.backend.fence(this.log.kind));
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
      if (after > this.log.revision) throw new CosiError('invalid-bookmark', `revision ${after} is in the future (${this.backend.name} is at ${this.log.revision})`);
    }
    if (after >= this.log.oldestRevision) return;
    // One backfill at a time per kind; a later one that is already covered returns at once.
    const run = this.backfills.then(() => (after >= this.log.oldestRevision ? undefined : this.backfill(after)));
    this.backfills = run.catch(() => undefined);
    await run;
  }

  /**
   * Fetches the kind's changes after `after` up to where the log begins, from the backend's history, and puts them
   * in front of the log. The log may forget more of its oldest changes while they are fetched: then the fetch goes
   * on from where the last one ended.
   */
  private async backfill(after: number): Promise<void> {
    const epoch = this.log.epoch;
    const limit = this.log.limits.maxSize;
    const tooMany = () => new CosiError('too-old', `more than ${limit} changes of ${this.log.kind.type} since revision ${after}; list again`);
    const changes: Change[] = [];
    for (let from = after; from < this.log.oldestRevision; ) {
      const past = await this.backend.history(this.log.kind, from, limit - changes.length);
      if (this.log.epoch !== epoch) throw new CosiError('too-old', `the history of ${this.log.kind.type} started over while revision ${after} was being fetched; list again`);
      for (const c of past.changes) {
        const change = this.pastChange(c);
        if (change !== undefined) changes.push(change);
      }
      if (changes.length > limit) throw tooMany();
      from = past.through;
    }
    if (!this.log.prepend(after, changes)) throw tooMany();
    this.opts.log.debug('history fetched', { kind: this.log.kind.type, after, changes: changes.length });
  }

  private pastChange(c: PastChange): Change | undefined {
    return this.changeOf(c.id, c.revision, c.value, c.old);
  }

  private disconnected(watch: BackendWatch, err: Error): void {
    if (this.state.is !== 'watching' || this.state.watch !== watch || this.log.unavailable !== undefined) return;
    // A member failing over reconnects within the grace; a backend gone for longer is the readers' business.
    const grace = setTimeout(() => {
      if (this.state.is !== 'reconnecting' || this.state.grace !== grace) return;
      this.state = { is: 'unreachable', watch };
      const lost = new CosiError('unavailable', `${this.backend.name} is unreachable (${err.message}); reconnect and resume from your last bookmark`);
      this.log.fail(lost);
      for (const w of this.waiters.splice(0)) w.reject(lost);
    }, this.opts.graceMs);
    grace.unref();
    this.state = { is: 'reconnecting', watch, grace };
  }

  private reconnected(watch: BackendWatch): void {
    const s = this.state;
    if ((s.is !== 'watching' && s.is !== 'reconnecting' && s.is !== 'unreachable') || s.watch !== watch) return;
    if (s.is === 'reconnecting') clearTimeout(s.grace);
    this.state = { is: 'watching', watch };
    if (this.log.unavailable !== undefined) this.opts.log.info(`${this.backend.name} reachable again: watch resumed`, { kind: this.log.kind.type, after: this.log.revision });
    this.log.recover();
  }

  /** The backend ended the watch (its history was cut past where it was): start over from a fresh read. */
  private ended(watch: BackendWatch, err: Error): void {
    const s = this.state;
    if ((s.is !== 'watching' && s.is !== 'reconnecting' && s.is !== 'unreachable') || s.watch !== watch) return;
    // The ended watch's own disconnect no longer matters: the relist reports its failures to the log itself.
    if (s.is === 'reconnecting') clearTimeout(s.grace);
    this.state = { is: 'relisting' };
    this.opts.log.warn(`${this.backend.name} ended the watch; reading the kind again`, { kind: this.log.kind.type, error: err.message });
    void this.relist(err);
  }

  private async relist(err: Error): Promise<void> {
    for (let delay = 100; this.isRelisting(); delay = Math.min(delay * 2, 5000)) {
      try {
        const snapshot = await this.backend.snapshot(this.log.kind);
        this.keepModRevisions(snapshot);
        this.log.reset(snapshot.revision, snapshot.items, new CosiError('too-old', `${this.backend.name} cut its history past this watch (${err.message}); list again`));
        await this.watchAfter(snapshot.revision);
        this.settleWaiters();
        return;
      } catch (again) {
        this.log.fail(isCosiError(again) ? again : new CosiError('unavailable', `cannot read ${this.log.kind.type} again: ${String(again)}`));
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
    const closed = new CosiError('unavailable', `the ${this.backend.name} store is closed`);
    for (const w of this.waiters.splice(0)) w.reject(closed);
    if (s.is === 'watching' || s.is === 'reconnecting' || s.is === 'unreachable') s.watch.cancel();
  }
}

/** What names a resource whose value does not decode. */
function placeholder(p: Pointer): Resource {
  const epoch = new Date(0);
  return { metadata: { ...p, version: 0, owner: '', phase: 'running', created: epoch, updated: epoch, labels: {}, annotations: {}, finalizers: [] }, spec: null };
}
