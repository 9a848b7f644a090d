// Every current resource of the kinds being read, kept encoded (Frames) and in ID order: a kind is tracked from its
// first read (or from start, for the kinds cosid serves), each version is encoded as it is committed, and a kind's
// state when tracking starts (or after its history started over) is encoded in slices between other work. Get, List
// and watch bootstraps then only send bytes, and a List does not sort: the first List after loading costs what later
// ones do.
import type { Resource } from '../../shared/resource.js';
import type { Change, KindHistory } from '../store/store.js';
import type { Frames } from './frames.js';

export interface CurrentFramesOptions {
  /** Longest run of catch-up encoding in one event-loop turn (default 5 ms). */
  readonly sliceMs?: number;
  /**
   * When a committed version is encoded: 'commit' (default) as it is committed, so that it is ready by the time its
   * writer hears back; 'background' in the catch-up slices, as a kind's state is.
   */
  readonly commits?: 'commit' | 'background';
}

export interface CurrentFramesStats {
  /** Kinds tracked. */
  readonly kinds: number;
  /** Resources (and kinds to read again) waiting for their catch-up encoding. */
  readonly pending: number;
}

export class CurrentFrames {
  private readonly tracked = new Map<KindHistory, TrackedKind>();
  /** Kinds whose whole state is to be (re)encoded: read at the next slice, after a history that started over is refilled. */
  private readonly rescans = new Set<KindHistory>();
  private backlog: { readonly history: KindHistory; readonly resource: Resource }[] = [];
  private next = 0;
  /** Versions superseded by commits: their encodings go once every listener of the commit has used them. */
  private superseded: Resource[] = [];
  private slice: NodeJS.Immediate | undefined;
  private readonly sliceMs: number;
  private readonly commits: 'commit' | 'background';
  private closed = false;

  constructor(
    private readonly frames: Frames,
    opts: CurrentFramesOptions = {},
  ) {
    this.sliceMs = opts.sliceMs ?? 5;
    this.commits = opts.commits ?? 'commit';
  }

  /** Keeps the kind's current resources encoded from now on (again: nothing to do). */
  track(history: KindHistory): void {
    if (this.closed || this.tracked.has(history)) return;
    const kind = new TrackedKind(history);
    kind.unsubscribe = history.subscribe({
      committed: (c) => {
        kind.committed(c);
        this.committed(c, history);
      },
      // Its state is read again (after it is refilled, when the history started over; unchanged otherwise).
      lost: () => {
        kind.forget();
        this.rescan(history);
      },
    });
    this.tracked.set(history, kind);
    this.rescan(history);
  }

  /**
   * The kind's resources now, sorted by ID, as history.list() returns them: for a tracked kind without sorting (the
   * order is kept up to date at each commit). The array is not to be modified.
   */
  list(history: KindHistory): readonly Resource[] {
    return this.tracked.get(history)?.list() ?? history.list();
  }

  stats(): CurrentFramesStats {
    return { kinds: this.tracked.size, pending: this.backlog.length - this.next + this.rescans.size };
  }

  close(): void {
    this.closed = true;
    for (const kind of this.tracked.values()) kind.unsubscribe();
    this.tracked.clear();
    this.rescans.clear();
    this.backlog = [];
    this.next = 0;
    if (this.slice !== undefined) clearImmediate(this.slice);
    this.slice = undefined;
  }

  private committed(c: Change, history: KindHistory): void {
    if (c.old !== undefined) this.supersede(c.old);
    if (c.type === 'destroyed') return;
    // A value that does not decode has no resource to encode (a placeholder carries its pointer).
    if (c.error !== undefined) return;
    if (this.commits === 'background') {
      this.backlog.push({ history, resource: c.resource });
      this.schedule();
      return;
    }
    try {
      this.frames.message(c.resource);
    } catch {
      // Never the writer's failure: its change is committed. A reader meets the error and reports it.
    }
  }

  /**
   * The old version's encoding is still what this commit's watch event carries (the hub's listener may come after
   * this one): dropped once the commit's listeners have run.
   */
  private supersede(old: Resource): void {
    if (this.superseded.length === 0) {
      queueMicrotask(() => {
        const done = this.superseded;
        this.superseded = [];
        for (const r of done) this.frames.forget(r);
      });
    }
    this.superseded.push(old);
  }

  private rescan(history: KindHistory): void {
    this.rescans.add(history);
    this.schedule();
  }

  private schedule(): void {
    if (this.slice !== undefined || this.closed) return;
    this.slice = setImmediate(() => {
      this.slice = undefined;
      this.catchUp();
    });
    this.slice.unref();
  }

  /** One slice of catch-up encoding: at most sliceMs, then the event loop gets its turn. */
  private catchUp(): void {
    const deadline = performance.now() + this.sliceMs;
    for (const history of this.rescans) {
      this.rescans.delete(history);
      const kind = this.tracked.get(history);
      if (kind === undefined) continue;
      for (const resource of kind.list()) this.backlog.push({ history, resource });
    }
    while (this.next < this.backlog.length) {
      const item = this.backlog[this.next++];
      if (item === undefined) continue;
      const { history, resource } = item;
      // Superseded or already encoded (by a reader, or a watch event) since it was queued: nothing to do.
      if (this.frames.has(resource) || history.current(resource.metadata.id) !== resource) continue;
      try {
        this.frames.message(resource);
      } catch {
        // A reader meets the error and reports it.
      }
      if (performance.now() >= deadline) break;
    }
    if (this.next >= this.backlog.length) {
      this.backlog = [];
      this.next = 0;
    } else if (this.next > 4096) {
      // Drop what is done now and then rather than shifting on every item.
      this.backlog = this.backlog.slice(this.next);
      this.next = 0;
    }
    if (this.next < this.backlog.length || this.rescans.size > 0) this.schedule();
  }
}

/**
 * A tracked kind's resources in ID order (the store's: UTF-16 code units, as sortById), kept from its commits: an
 * update replaces its resource in place, a create or destroy inserts or removes one (found by binary search). Read
 * from the history when tracking starts, and again after it started over. A List gets the array itself; the next
 * commit then changes a copy, so the List goes on reading the state it began with.
 */
class TrackedKind {
  unsubscribe: () => void = () => {};
  private sorted: Resource[] | undefined;
  private shared = false;

  constructor(private readonly history: KindHistory) {
    this.sorted = history.list();
  }

  list(): readonly Resource[] {
    this.sorted ??= this.history.list();
    this.shared = true;
    return this.sorted;
  }

  /** Read from the history again at the next list() (the history is about to start over: not now). */
  forget(): void {
    this.sorted = undefined;
  }

  committed(c: Change): void {
    let sorted = this.sorted;
    if (sorted === undefined) return;
    if (this.shared) {
      sorted = this.sorted = sorted.slice();
      this.shared = false;
    }
    const id = c.resource.metadata.id;
    const at = indexOf(sorted, id);
    const found = sorted[at]?.metadata.id === id;
    // A value that does not decode leaves the state too (KindLog.commit).
    if (c.type === 'destroyed' || c.error !== undefined) {
      if (found) sorted.splice(at, 1);
    } else if (found) {
      sorted[at] = c.resource;
    } else {
      sorted.splice(at, 0, c.resource);
    }
  }
}

/** The first index whose ID is not below `id`. */
function indexOf(sorted: readonly Resource[], id: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((sorted[mid]?.metadata.id ?? '') < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
