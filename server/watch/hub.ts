// Watches over each kind's shared history (the store's ChangeFeed). Each watcher is only a cursor: it pulls from
// history when its stream can take more (grpc-js backpressure), so a slow watcher costs no memory and slows nobody.
// How events become bytes (encoded once, kept within a budget, shared batches) is events.ts.
import { CosiError, isCosiError } from '../../shared/errors.js';
import { kindKey, type Resource } from '../../shared/resource.js';
import { EventType } from '../../shared/wire.js';
import { readableHistory, type Change, type ChangeFeed, type KindHistory } from '../store/store.js';
import { encodeBookmark } from './bookmark.js';
import { EncodedEvents } from './events.js';
import { Frames, type EventForm } from './frames.js';
import type { WatchPlan } from './plan.js';
import type { WatchMetrics } from '../metrics.js';

/** Where a session writes: a server stream with grpc-js write()/'drain' semantics. */
export interface WatchSink {
  /** false: the stream is full; wait for onDrain before writing again. */
  write(message: Buffer): boolean;
  onDrain(callback: () => void): void;
  /** Ends the stream: OK without error, else with the error's status. */
  end(error?: CosiError): void;
  /** Messages accepted but not yet sent (grpc-js writableLength). */
  buffered(): number;
  /** Bytes of those messages. */
  bufferedBytes(): number;
}

export interface WatchLimits {
  /**
   * Changes a parked watcher would receive that history has already forgotten, kept for it alone (references,
   * not copies). Beyond this the watch ends with "too old"; lag never counts changes it would not receive.
   */
  maxBacklog: number;
  /** An idle watch gets a NOOP event with a fresh bookmark this often (0: never). */
  bookmarkIntervalMs: number;
  /** Events per aggregated WatchResponse. */
  maxBatchEvents: number;
  /** Bytes per aggregated WatchResponse (a single larger event still goes alone). */
  maxBatchBytes: number;
  /** Messages one session may write per turn before yielding to the others. */
  messagesPerTurn: number;
  /** Bytes a watch's stream may have queued before the session waits for it (grpc-js alone counts messages). */
  maxBufferedBytes: number;
  /** Bytes of catch-up batches kept for other watchers to send as they are (oldest dropped first). */
  sharedBatchBytes: number;
  /**
   * Bytes of encoded events kept for watchers still to send them (oldest dropped first). History keeps every change
   * for 75 s; a watcher that far behind gets older events encoded again instead of every event staying encoded.
   */
  eventCacheBytes: number;
}

export const DEFAULT_WATCH_LIMITS: WatchLimits = {
  maxBacklog: 4096,
  bookmarkIntervalMs: 60_000,
  maxBatchEvents: 512,
  maxBatchBytes: 64 << 10,
  messagesPerTurn: 64,
  maxBufferedBytes: 256 << 10,
  sharedBatchBytes: 8 << 20,
  eventCacheBytes: 32 << 20,
};

export interface WatchStats {
  sessions: number;
  /** Sessions waiting for their stream to drain. */
  parked: number;
  /** Changes in history not yet sent: the most of any one watcher (of its kind, filtered or not), and the total. */
  lagMax: number;
  lagTotal: number;
  /** The most messages any one watch has waiting in its stream: bounded by the stream's high-water mark. */
  maxBuffered: number;
  /** The most bytes any one watch has waiting in its stream: about maxBufferedBytes at most. */
  maxBufferedBytes: number;
  /** Bytes of encoded events kept (at most eventCacheBytes plus the newest event). */
  cachedEventBytes: number;
}

const NO_METRICS: WatchMetrics = { sent() {}, overrun() {} };

/** The longest one flush of the watch hub keeps the event loop (see WatchHub.flush). */
const FLUSH_SLICE_MS = 5;

/** The watchers of one kind, and the subscription to its history. */
interface KindWatchers {
  readonly history: KindHistory;
  readonly sessions: Set<WatchSession>;
  /** How many sessions use each event form: a change is encoded at commit in those forms only. */
  readonly forms: Map<EventForm, number>;
  readonly unsubscribe: () => void;
}

export class WatchHub {
  private readonly byKind = new Map<string, KindWatchers>();
  private readonly dirty = new Set<WatchSession>();
  private flushScheduled = false;
  private closed = false;
  readonly events: EncodedEvents;
  private readonly bookmarkTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly feed: ChangeFeed,
    readonly frames: Frames,
    readonly limits: WatchLimits = DEFAULT_WATCH_LIMITS,
    readonly metrics: WatchMetrics = NO_METRICS,
  ) {
    this.events = new EncodedEvents(feed.instance, frames, limits);
    if (limits.bookmarkIntervalMs > 0) {
      this.bookmarkTimer = setInterval(() => this.bookmarkIdle(), limits.bookmarkIntervalMs);
      this.bookmarkTimer.unref();
    }
  }

  private bookmarkIdle(): void {
    const idleSince = Date.now() - this.limits.bookmarkIntervalMs;
    for (const w of this.byKind.values()) for (const s of w.sessions) s.bookmarkIfIdle(idleSince);
  }

  /**
   * Starts a watch: once the kind's history is open (and, for a resume, reaches back to the bookmark), sends the
   * "ready" marker, then the plan's initial events, then changes as they come. Set-up errors end the call.
   */
  open(plan: WatchPlan, sink: WatchSink): { close(): void } {
    let closed = false;
    let session: WatchSession | undefined;
    void this.prepare(plan).then(
      ({ history, snapshot }) => {
        if (closed) return;
        if (this.closed) {
          sink.end(new CosiError('unavailable', 'cosid is shutting down; reconnect and resume from your last bookmark'));
          return;
        }
        const watchers = this.watchersOf(history);
        session = new WatchSession(this, history, plan, sink, snapshot);
        if (session.isEnded) return;
        watchers.sessions.add(session);
        watchers.forms.set(plan.form, (watchers.forms.get(plan.form) ?? 0) + 1);
        this.schedule(session);
      },
      (err: unknown) => {
        if (!closed) sink.end(asCosiError(err));
      },
    );
    return {
      close: () => {
        closed = true;
        session?.close();
      },
    };
  }

  /** The kind's history, reaching back to a resume's bookmark; a resumed bootstrap's snapshot. */
  private async prepare(plan: WatchPlan): Promise<{ history: KindHistory; snapshot: Resource[] | undefined }> {
    const history = await readableHistory(this.feed, plan.kind);
    let snapshot: Resource[] | undefined;
    const from = plan.resumeFrom;
    // A resumed bootstrap needs its snapshot and, after it, the changes since: both from the feed.
    if (from?.bootstrapAfterId !== undefined) snapshot = await this.feed.listAt(history, from.revision);
    if (from !== undefined) await this.feed.reach(history, from.revision);
    return { history, snapshot };
  }

  private watchersOf(history: KindHistory): KindWatchers {
    const key = kindKey(history.kind);
    let w = this.byKind.get(key);
    if (w !== undefined) return w;
    const sessions = new Set<WatchSession>();
    const forms = new Map<EventForm, number>();
    const unsubscribe = history.subscribe({
      committed: (c) => {
        for (const s of sessions) this.schedule(s);
        this.events.committed(c, forms.keys(), history);
      },
      // Lag counts only in events a watcher would receive: when history forgets a change, a watcher still
      // before it skips it if it would not deliver it, and only loses its place if it would.
      trimmed: (c) => {
        for (const s of [...sessions]) s.forgotten(c);
      },
      // The backend went away or cut its history: every watch of the kind ends with that status (after a last
      // bookmark when it can resume), and the clients reconnect or list again.
      lost: (err) => {
        for (const s of [...sessions]) {
          if (err.kind !== 'too-old') s.bookmarkIfIdle(Number.POSITIVE_INFINITY);
          s.finish(err);
        }
      },
    });
    w = { history, sessions, forms, unsubscribe };
    this.byKind.set(key, w);
    return w;
  }

  stats(): WatchStats {
    let sessions = 0;
    let parked = 0;
    let maxBuffered = 0;
    let maxBufferedBytes = 0;
    let lagMax = 0;
    let lagTotal = 0;
    for (const w of this.byKind.values()) {
      for (const s of w.sessions) {
        sessions++;
        if (s.parked) parked++;
        const lag = s.lag();
        lagMax = Math.max(lagMax, lag);
        lagTotal += lag;
        maxBuffered = Math.max(maxBuffered, s.sink.buffered());
        maxBufferedBytes = Math.max(maxBufferedBytes, s.sink.bufferedBytes());
      }
    }
    return { sessions, parked, lagMax, lagTotal, maxBuffered, maxBufferedBytes, cachedEventBytes: this.events.cachedBytes };
  }

  /** Ends every watch with the given status (graceful shutdown). */
  endAll(error?: CosiError): void {
    this.closed = true;
    for (const w of [...this.byKind.values()]) {
      for (const s of [...w.sessions]) {
        // A last bookmark, so the client can resume from exactly here.
        s.bookmarkIfIdle(Number.POSITIVE_INFINITY);
        s.finish(error);
      }
      w.unsubscribe();
    }
    this.byKind.clear();
    clearInterval(this.bookmarkTimer);
  }

  remove(session: WatchSession): void {
    const w = this.byKind.get(kindKey(session.plan.kind));
    if (w?.sessions.delete(session) === true) {
      const left = (w.forms.get(session.plan.form) ?? 1) - 1;
      if (left > 0) w.forms.set(session.plan.form, left);
      else w.forms.delete(session.plan.form);
    }
    this.dirty.delete(session);
  }

  schedule(session: WatchSession): void {
    this.dirty.add(session);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /**
   * Pumps the sessions that have something to send, for at most FLUSH_SLICE_MS per event-loop turn: with a thousand
   * busy watchers one pass can take far longer, and writers (controllers, the kubelet poller) and other calls share
   * this loop. Sessions left over go first next turn; timers and I/O run in between.
   */
  private flush(): void {
    this.flushScheduled = false;
    const sessions = [...this.dirty];
    this.dirty.clear();
    const deadline = performance.now() + FLUSH_SLICE_MS;
    let next = 0;
    while (next < sessions.length) {
      sessions[next++]?.pump();
      if (performance.now() >= deadline) break;
    }
    if (next < sessions.length) {
      // The ones not reached go first, then those that asked again during this slice.
      const later = [...sessions.slice(next), ...this.dirty];
      this.dirty.clear();
      for (const s of later) this.dirty.add(s);
    }
    if (this.dirty.size > 0 && !this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }
}

class WatchSession {
  /** The tail position: every change up to this revision has been delivered or skipped. */
  private cursor = 0;
  private readySent = false;
  private readonly initial: Buffer[] = [];
  /** Changes this watcher will deliver that history has forgotten (oldest first, all at or before the cursor). */
  private backlog: Change[] = [];
  private bootstrapItems: Resource[] | undefined;
  private bootstrapIndex = 0;
  private bootstrapRevision = 0;
  private ended = false;
  private lastSentAt = Date.now();
  parked = false;

  constructor(
    private readonly hub: WatchHub,
    private readonly history: KindHistory,
    readonly plan: WatchPlan,
    readonly sink: WatchSink,
    snapshot: Resource[] | undefined,
  ) {
    try {
      this.start(snapshot);
    } catch (err) {
      // A set-up error is the call's status, before the "ready" marker.
      this.finish(isCosiError(err) ? err : asCosiError(err));
    }
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Changes held that this watcher has not been sent (or skipped) yet. */
  lag(): number {
    const bootstrapLeft = this.bootstrapItems === undefined ? 0 : this.bootstrapItems.length - this.bootstrapIndex;
    return this.backlog.length + bootstrapLeft + this.history.countAfter(this.cursor);
  }

  /** History is forgetting `c`: skip it if this watcher would not deliver it, else this watch has lost its place. */
  forgotten(c: Change): void {
    if (this.ended || c.revision <= this.cursor) return;
    // Every older change has been forgotten already, so `c` is the next one after the cursor.
    if (this.deliverAs(c) === undefined) {
      this.cursor = c.revision;
      return;
    }
    if (this.backlog.length < this.hub.limits.maxBacklog) {
      this.backlog.push(c);
      this.cursor = c.revision;
      return;
    }
    this.backlog = [];
    this.hub.metrics.overrun();
    this.finish(new CosiError('too-old', `watch fell behind by more than ${this.hub.limits.maxBacklog} events beyond the kept history; list again and watch from there`));
  }

  /** Sends a NOOP with a fresh bookmark when nothing was sent since `idleSince` and the watch is caught up. */
  bookmarkIfIdle(idleSince: number): void {
    if (this.ended || this.parked || !this.readySent || !this.sendsAll || this.initial.length > 0 || this.bootstrapItems !== undefined || this.backlog.length > 0 || this.lastSentAt > idleSince) return;
    try {
      // Move the cursor over changes this watcher would not deliver; stop at the first it would.
      for (;;) {
        const batch = this.history.readChanges(this.cursor, 256);
        const next = batch.changes.find((c) => this.deliverAs(c) !== undefined);
        if (next !== undefined) {
          this.hub.schedule(this);
          return;
        }
        if (batch.through <= this.cursor) break;
        this.cursor = batch.through;
      }
    } catch (err) {
      this.finish(asCosiError(err));
      return;
    }
    this.write(Frames.watchResponse([this.hub.events.bookmark(this.cursor)]), 1, false);
  }

  /** Writes one WatchResponse as a gRPC message (see EncodedEvents.message); false: the stream is full. */
  private write(response: Buffer, events: number, shared: boolean): boolean {
    this.lastSentAt = Date.now();
    const message = this.hub.events.message(response, shared, this.plan.gzip);
    this.hub.metrics.sent(this.formLabel, events, message.length);
    const ok = this.sink.write(message);
    if (!ok) {
      this.parked = true;
      this.sink.onDrain(() => {
        this.parked = false;
        this.hub.schedule(this);
      });
    }
    return ok;
  }

  /** Aggregated and unfiltered: its change events are the same as every other such watcher's of the kind. */
  private get sharesBatches(): boolean {
    return this.plan.aggregated && this.plan.id === undefined && this.plan.selector.everything && this.sendsAll;
  }

  /** api_version 0 clients get no BOOTSTRAPPED, ERRORED or NOOP events. */
  private get sendsAll(): boolean {
    return this.plan.apiVersion >= 1;
  }

  private start(snapshot: Resource[] | undefined): void {
    const { frames } = this.hub;
    const history = this.history;
    const plan = this.plan;
    const now = history.revision;
    if (plan.resumeFrom !== undefined) {
      this.resume(plan.resumeFrom.revision, snapshot, plan.resumeFrom.bootstrapAfterId);
      return;
    }
    if (plan.id !== undefined) {
      // Single resource: its last changes, or its state now; then its changes. The NOOP's bookmark names where
      // what follows starts (the tail's start), so a resume from it misses nothing of the tail.
      this.cursor = plan.tailEvents > 0 ? this.tailStart(now) : now;
      if (plan.bootstrapBookmark && this.sendsAll) this.initial.push(this.hub.events.bookmark(this.cursor));
      if (plan.tailEvents > 0) return;
      const bookmark = encodeBookmark(this.hub.feed.instance, { revision: now });
      const current = history.current(plan.id);
      this.initial.push(
        current !== undefined
          ? frames.event(EventType.CREATED, current, undefined, bookmark, undefined, plan.form)
          : frames.event(EventType.DESTROYED, tombstone(plan.kind.namespace, plan.kind.type, plan.id), undefined, bookmark, undefined, plan.form),
      );
      return;
    }
    if (plan.bootstrapContents) {
      this.beginBootstrap(now, undefined, history.list());
      return;
    }
    this.cursor = plan.tailEvents > 0 ? this.tailStart(now) : now;
    if (plan.bootstrapBookmark && this.sendsAll) this.initial.push(this.hub.events.bookmark(this.cursor));
  }

  private resume(revision: number, snapshot: Resource[] | undefined, bootstrapAfterId: string | undefined): void {
    if (bootstrapAfterId !== undefined) {
      // Continue an interrupted bootstrap from the same snapshot (the feed rebuilt it for that revision).
      this.beginBootstrap(revision, bootstrapAfterId, snapshot ?? this.history.listAt(revision));
      return;
    }
    // Checks the position is still in history (too-old otherwise).
    this.history.readChanges(revision, 0);
    this.cursor = revision;
    if (this.plan.bootstrapBookmark && this.sendsAll) this.initial.push(this.hub.events.bookmark(this.cursor));
  }

  private beginBootstrap(revision: number, afterId: string | undefined, items: Resource[]): void {
    this.bootstrapRevision = revision;
    this.cursor = revision;
    this.bootstrapItems = items.filter((r) => (afterId === undefined || r.metadata.id > afterId) && this.plan.selector.matches(r.metadata));
  }

  /** The revision to start from so that the last `tailEvents` deliverable changes are replayed. */
  private tailStart(now: number): number {
    const history = this.history;
    const from = history.oldestRevision;
    const revisions: number[] = [];
    let after = from;
    for (;;) {
      const batch = history.readChanges(after, 4096);
      for (const c of batch.changes) if (this.deliverAs(c) !== undefined) revisions.push(c.revision);
      if (batch.through >= now || batch.changes.length === 0) break;
      after = batch.through;
    }
    const firstKept = revisions[Math.max(0, revisions.length - this.plan.tailEvents)];
    return firstKept === undefined ? now : firstKept - 1;
  }

  /** How a change reaches this watcher, if at all (label queries turn updates into creates/destroys). */
  private deliverAs(c: Change): EventType | undefined {
    const plan = this.plan;
    if (plan.id !== undefined && c.resource.metadata.id !== plan.id) return undefined;
    // A value that does not decode is reported, not skipped; api_version 0 clients cannot be told (cosid logs it).
    if (c.error !== undefined) return this.sendsAll ? EventType.ERRORED : undefined;
    const sel = plan.selector;
    if (c.type === 'created') return sel.matches(c.resource.metadata) ? EventType.CREATED : undefined;
    if (c.type === 'destroyed') return sel.matches(c.resource.metadata) ? EventType.DESTROYED : undefined;
    if (sel.everything) return EventType.UPDATED;
    const before = c.old !== undefined && sel.matches(c.old.metadata);
    const after = sel.matches(c.resource.metadata);
    if (before && after) return EventType.UPDATED;
    if (before) return EventType.DESTROYED;
    if (after) return EventType.CREATED;
    return undefined;
  }

  pump(): void {
    if (this.ended || this.parked) return;
    try {
      for (let turn = 0; turn < this.hub.limits.messagesPerTurn; turn++) {
        const next = this.nextMessage();
        if (next === undefined) return;
        if (!this.write(next.message, next.events, next.shared)) return;
      }
      // More to send: yield to the other sessions and come back.
      this.hub.schedule(this);
    } catch (err) {
      this.finish(asCosiError(err));
    }
  }

  /** The next WatchResponse: first the empty "ready" marker, then events; undefined when caught up. */
  private nextMessage(): { message: Buffer; events: number; shared: boolean } | undefined {
    if (!this.readySent) {
      this.readySent = true;
      return { message: Frames.watchResponse([]), events: 0, shared: false };
    }
    if (this.sharesBatches && this.initial.length === 0 && this.bootstrapItems === undefined && this.backlog.length === 0) {
      const { through, response, events } = this.hub.events.catchUp(this.history, this.cursor, this.plan.form);
      this.cursor = through;
      return response === undefined ? undefined : { message: response, events, shared: true };
    }
    const batch = this.nextBatch();
    if (batch.length === 0) return undefined;
    const [only] = batch;
    // The common case (one event, not aggregated) writes the same shared bytes to every watcher: no copy.
    const response = only !== undefined && batch.length === 1 ? this.hub.events.sharedResponse(only) : undefined;
    if (response !== undefined) return { message: response, events: 1, shared: true };
    return { message: Frames.watchResponse(batch), events: batch.length, shared: false };
  }

  /** The form and encoding, as metrics name them. */
  private get formLabel(): string {
    return this.plan.gzip ? `${this.plan.form}+gzip` : this.plan.form;
  }

  /** The events of the next WatchResponse (one unless aggregated); empty when caught up. */
  private nextBatch(): Buffer[] {
    const max = this.plan.aggregated ? this.hub.limits.maxBatchEvents : 1;
    const out: Buffer[] = [];
    let bytes = 0;
    const add = (b: Buffer): boolean => {
      out.push(b);
      bytes += b.length;
      return out.length < max && bytes < this.hub.limits.maxBatchBytes;
    };
    const addInitial = (): boolean => {
      while (this.initial.length > 0) {
        const b = this.initial.shift();
        if (b !== undefined && !add(b)) return false;
      }
      return true;
    };
    if (!addInitial()) return out;
    const { frames } = this.hub;
    const instance = this.hub.feed.instance;
    if (this.bootstrapItems !== undefined) {
      while (this.bootstrapIndex < this.bootstrapItems.length) {
        const r = this.bootstrapItems[this.bootstrapIndex++];
        if (r === undefined) continue;
        const bookmark = encodeBookmark(instance, { revision: this.bootstrapRevision, bootstrapAfterId: r.metadata.id });
        if (!add(frames.event(EventType.CREATED, r, undefined, bookmark, undefined, this.plan.form))) return out;
      }
      this.bootstrapItems = undefined;
      // Queued, so a batch that fills up at BOOTSTRAPPED still sends the bootstrap bookmark after it.
      if (this.sendsAll) {
        this.initial.push(frames.event(EventType.BOOTSTRAPPED, undefined, undefined, encodeBookmark(instance, { revision: this.bootstrapRevision })));
        if (this.plan.bootstrapBookmark) this.initial.push(this.hub.events.bookmark(this.bootstrapRevision));
      }
      if (!addInitial()) return out;
    }
    while (this.backlog.length > 0) {
      const c = this.backlog.shift();
      const type = c === undefined ? undefined : this.deliverAs(c);
      if (c !== undefined && type !== undefined && !add(this.hub.events.change(c, type, this.history, this.plan.form))) return out;
    }
    for (;;) {
      if (out.length >= max || bytes >= this.hub.limits.maxBatchBytes) return out;
      const batch = this.history.readChanges(this.cursor, max - out.length);
      for (const c of batch.changes) {
        this.cursor = c.revision;
        const type = this.deliverAs(c);
        if (type !== undefined && !add(this.hub.events.change(c, type, this.history, this.plan.form))) return out;
      }
      // Changes this watcher filters out still move its cursor.
      this.cursor = Math.max(this.cursor, batch.through);
      if (batch.changes.length === 0) return out;
    }
  }

  /** The client went away: stop at once, even if a drain or a flush still has this session scheduled. */
  close(): void {
    this.ended = true;
    this.hub.remove(this);
  }

  /** Ends the watch; a too-old cursor ends with an ERRORED event first (api_version >= 1). */
  finish(error?: CosiError): void {
    if (this.ended) return;
    this.ended = true;
    this.hub.remove(this);
    if (error !== undefined && this.readySent && this.sendsAll && error.kind === 'too-old') {
      // The one message written regardless of backpressure: the watch ends right after it.
      this.sink.write(Frames.watchResponse([this.hub.frames.event(EventType.ERRORED, undefined, undefined, undefined, error.message)]));
    }
    this.sink.end(error);
  }
}


function tombstone(namespace: string, type: string, id: string): Resource {
  const epoch = new Date(0);
  return {
    metadata: { namespace, type, id, version: 0, owner: '', phase: 'running', created: epoch, updated: epoch, labels: {}, annotations: {}, finalizers: [] },
    spec: null,
  };
}

function asCosiError(err: unknown): CosiError {
  if (isCosiError(err)) {
    if (err.kind === 'too-old') {
      return new CosiError('too-old', `watch fell behind: ${err.message}`);
    }
    return err;
  }
  return new CosiError('internal', err instanceof Error ? err.message : String(err));
}
