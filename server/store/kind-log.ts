// One kind's state and bounded, ordered history in memory: the memory backend's storage, and what a kind's watch
// cache holds (kind-cache.ts). Revisions come from the backend and only grow; they may have gaps (etcd numbers all
// keys together).
import { CosiError } from '../../shared/errors.js';
import type { Kind, Resource } from '../../shared/resource.js';
import type { Change, ChangeBatch, HistoryListener, KindHistory } from './store.js';

export interface HistoryOptions {
  /** History keeps at least this many changes per kind (default 16384)... */
  historySize?: number;
  /** ...and at least the changes of this long ago (default 75 s, as the Kubernetes watch cache)... */
  historyAgeMs?: number;
  /** ...but never more than this many (default 8 x historySize), so memory stays bounded under any write rate. */
  historyMaxSize?: number;
  /** Injectable clock for times and history age. */
  now?: () => number;
}

export interface HistoryLimits {
  readonly size: number;
  readonly ageMs: number;
  readonly maxSize: number;
  readonly now: () => number;
}

export function historyLimits(opts: HistoryOptions = {}): HistoryLimits {
  const size = Math.max(1, opts.historySize ?? 16384);
  return { size, ageMs: opts.historyAgeMs ?? 75_000, maxSize: Math.max(size, opts.historyMaxSize ?? size * 8), now: opts.now ?? Date.now };
}

export class KindLog implements KindHistory {
  private readonly items = new Map<string, Resource>();
  private history: Change[] = [];
  private start = 0;
  private rev: number;
  /** History after this revision is complete: it is the last forgotten change, or where the log began. */
  private floor: number;
  private readonly listeners = new Set<HistoryListener>();
  private lostWith: CosiError | undefined;
  /** Grows at every reset(): work begun on the old history (a backfill) must not be applied to the new one. */
  epoch = 0;

  constructor(
    readonly kind: Kind,
    readonly limits: HistoryLimits,
    /** The revision `items` are at; history starts there. */
    revision = 0,
    items: Iterable<Resource> = [],
  ) {
    this.rev = revision;
    this.floor = revision;
    for (const r of items) this.items.set(r.metadata.id, r);
  }

  get revision(): number {
    return this.rev;
  }

  get oldestRevision(): number {
    return this.floor;
  }

  get unavailable(): CosiError | undefined {
    return this.lostWith;
  }

  /** Changes held now. */
  get size(): number {
    return this.history.length - this.start;
  }

  get count(): number {
    return this.items.size;
  }

  current(id: string): Resource | undefined {
    return this.items.get(id);
  }

  list(): Resource[] {
    return sortById([...this.items.values()]);
  }

  listAt(revision: number): Resource[] {
    this.checkReplayable(revision);
    return rewind(this.items, this.history, this.start, revision);
  }

  readChanges(after: number, max: number): ChangeBatch {
    this.checkReplayable(after);
    let i = this.firstAfter(after);
    if (max <= 0) return { changes: [], through: i < this.history.length ? after : this.rev };
    const end = Math.min(this.history.length, i + max);
    const changes = this.history.slice(i, end);
    i = end;
    const last = changes[changes.length - 1];
    return { changes, through: i < this.history.length ? (last?.revision ?? after) : this.rev };
  }

  countAfter(revision: number): number {
    return this.history.length - Math.max(this.start, this.firstAfter(revision));
  }

  subscribe(listener: HistoryListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Appends a committed change and applies it to the state. Its revision must not be below the log's. */
  commit(change: Change): void {
    if (change.revision < this.rev) throw new Error(`change at revision ${change.revision} arrived after revision ${this.rev}`);
    this.rev = change.revision;
    const id = change.resource.metadata.id;
    if (change.type === 'destroyed' || change.error !== undefined) this.items.delete(id);
    else this.items.set(id, change.resource);
    this.history.push(change);
    this.trim(change.committedAt);
    // Compact the array now and then rather than shifting on every commit.
    if (this.start > this.limits.maxSize) {
      this.history.splice(0, this.start);
      this.start = 0;
    }
    for (const l of this.listeners) l.committed?.(change);
  }

  /** Nothing of this kind changed up to `revision` (the backend said so). */
  advance(revision: number): void {
    if (revision > this.rev) this.rev = revision;
  }

  /**
   * Older history fetched from the backend: the kind's changes after `after` up to the log's oldest revision, in
   * order. Returns false (and keeps nothing) when they would not fit the history's hard bound.
   */
  prepend(after: number, changes: readonly Change[]): boolean {
    if (after >= this.floor) return true;
    const older = changes.filter((c) => c.revision > after && c.revision <= this.floor);
    if (older.length + this.size > this.limits.maxSize) return false;
    // A new array, not splice(start, 0, ...older): up to maxSize items as call arguments overflow the stack.
    this.history = older.concat(this.history.slice(this.start));
    this.start = 0;
    this.floor = after;
    return true;
  }

  /** The backend cannot be reached: readers and watchers are told, and history stays as it is until recover(). */
  fail(error: CosiError): void {
    const first = this.lostWith === undefined;
    this.lostWith = error;
    if (first) for (const l of [...this.listeners]) l.lost?.(error);
  }

  recover(): void {
    this.lostWith = undefined;
  }

  /**
   * Starts over from a fresh read (the backend's history was cut while this log was behind): every watcher of the
   * kind is told its history is gone, then the state is replaced.
   */
  reset(revision: number, items: Iterable<Resource>, why: CosiError): void {
    for (const l of [...this.listeners]) l.lost?.(why);
    this.items.clear();
    for (const r of items) this.items.set(r.metadata.id, r);
    this.history.length = 0;
    this.start = 0;
    this.rev = revision;
    this.floor = revision;
    this.lostWith = undefined;
    this.epoch++;
  }

  private firstAfter(after: number): number {
    return firstAfter(this.history, this.start, after);
  }

  private checkReplayable(revision: number): void {
    if (revision > this.rev) throw new CosiError('invalid-bookmark', `revision ${revision} is in the future (current ${this.rev})`);
    if (revision < this.floor) {
      throw new CosiError('too-old', `revision ${revision} is too old: history starts after revision ${this.floor}; list again`);
    }
  }

  private trim(now: number): void {
    const { size, maxSize, ageMs } = this.limits;
    for (;;) {
      const kept = this.history.length - this.start;
      const oldest = this.history[this.start];
      if (oldest === undefined || kept <= size) return;
      if (kept <= maxSize && now - oldest.committedAt < ageMs) return;
      for (const l of this.listeners) l.trimmed?.(oldest);
      this.floor = oldest.revision;
      this.start++;
    }
  }
}

export function sortById(items: Resource[]): Resource[] {
  return items.sort((a, b) => (a.metadata.id < b.metadata.id ? -1 : a.metadata.id > b.metadata.id ? 1 : 0));
}

/**
 * The resources as they were at `revision`: `items` (the state now) with the changes of `history[start..]` newer
 * than `revision` undone, newest first; sorted by ID.
 */
export function rewind(items: ReadonlyMap<string, Resource>, history: readonly Change[], start: number, revision: number): Resource[] {
  const state = new Map(items);
  for (let i = history.length - 1; i >= start; i--) {
    const c = history[i];
    if (c === undefined || c.revision <= revision) break;
    const id = c.resource.metadata.id;
    if (c.type === 'created' && c.error === undefined) state.delete(id);
    else if (c.old !== undefined) state.set(id, c.old);
    else state.delete(id);
  }
  return sortById([...state.values()]);
}

/** The index of the first change of `history[start..]` after revision `after` (revisions increase). */
export function firstAfter(history: readonly Change[], start: number, after: number): number {
  let lo = start;
  let hi = history.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((history[mid]?.revision ?? 0) <= after) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
