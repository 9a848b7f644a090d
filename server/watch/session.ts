// One watcher: a cursor in its kind's history and the phase its stream is in. It pulls from history when its
// stream can take more (grpc-js backpressure), so a slow watcher costs no memory and slows nobody.
import { CosiError, isCosiError } from '../../shared/errors.js';
import type { Resource } from '../../shared/resource.js';
import { EventType } from '../../shared/wire.js';
import type { Change, KindHistory } from '../store/store.js';
import type { WatchMetrics } from '../metrics.js';
import { encodeBookmark } from './bookmark.js';
import type { EncodedEvents } from './events.js';
import { Frames } from './frames.js';
import type { WatchLimits } from './limits.js';
import { deliveredAs, sendsAll, tailStart, type WatchPlan } from './plan.js';

/** One WatchResponse for one watcher. */
export interface WatchMessage {
  /** The encoded WatchResponse, as protobuf (the sink frames it for its transport). */
  readonly payload: Buffer;
  /** Events in it. */
  readonly events: number;
  /** Other watchers send these very bytes (a sink may frame and compress them once for all). */
  readonly shared: boolean;
}

/** Where a session writes: a server stream with grpc-js write()/'drain' semantics. */
export interface WatchSink {
  /** false: the stream is full; wait for onDrain before writing again. */
  write(message: WatchMessage): boolean;
  onDrain(callback: () => void): void;
  /** Ends the stream: OK without error, else with the error's status. */
  end(error?: CosiError): void;
  /** Messages accepted but not yet sent (grpc-js writableLength). */
  buffered(): number;
  /** Bytes of those messages. */
  bufferedBytes(): number;
}

/** What a session needs of its hub: the shared encodings, the limits, and turns to send in. */
export interface SessionContext {
  readonly instance: string;
  readonly frames: Frames;
  readonly events: EncodedEvents;
  readonly limits: WatchLimits;
  readonly metrics: Pick<WatchMetrics, 'overrun'>;
  /** Asks for a turn to pump. */
  schedule(session: WatchSession): void;
  /** The session has ended: no more turns, no more news of its kind. */
  remove(session: WatchSession): void;
}

/**
 * Where a watch's stream stands, in the order it goes through them: the empty "ready" marker; events queued ahead
 * of the changes (the bookmark a request asked for, a single resource's state, a bootstrap's BOOTSTRAPPED and
 * bookmark) or a bootstrap's snapshot; the changes history forgot before this watcher sent them; the changes read
 * from history as they come. Each phase before "live" holds the forgotten changes that follow it (`backlog`).
 */
type Phase =
  | { readonly kind: 'ready'; next: Opening }
  | { readonly kind: 'initial'; readonly events: Buffer[]; readonly backlog: Change[] }
  | { readonly kind: 'bootstrap'; readonly items: readonly Resource[]; index: number; readonly revision: number; readonly backlog: Change[] }
  | { readonly kind: 'backlog'; readonly changes: Change[] }
  | { readonly kind: 'live' }
  | { readonly kind: 'ended'; readonly reason: 'closed' | 'finished' };

/** The phases a stream can be in after the "ready" marker and before its end. */
type Opening = Extract<Phase, { kind: 'initial' | 'bootstrap' | 'backlog' | 'live' }>;

const LIVE: Opening = { kind: 'live' };

/** The phase that sends `backlog` and then follows history. */
function changes(backlog: Change[]): Opening {
  return backlog.length > 0 ? { kind: 'backlog', changes: backlog } : LIVE;
}

/** The events of one WatchResponse (one unless aggregated). */
class Batch {
  readonly events: Buffer[] = [];
  private bytes = 0;

  constructor(
    private readonly maxEvents: number,
    private readonly maxBytes: number,
  ) {}

  get full(): boolean {
    return this.events.length >= this.maxEvents || this.bytes >= this.maxBytes;
  }

  /** Events it may still take. */
  get room(): number {
    return this.maxEvents - this.events.length;
  }

  /** Adds an event; false once the batch is full. */
  add(event: Buffer): boolean {
    this.events.push(event);
    this.bytes += event.length;
    return !this.full;
  }
}

export class WatchSession {
  private phase: Phase = { kind: 'ready', next: LIVE };
  /** The tail position: every change up to this revision has been delivered, skipped or put in a backlog. */
  private cursor = 0;
  private lastSentAt = Date.now();
  /** Waiting for its stream to drain. */
  parked = false;

  constructor(
    private readonly ctx: SessionContext,
    private readonly history: KindHistory,
    readonly plan: WatchPlan,
    readonly sink: WatchSink,
    snapshot: Resource[] | undefined,
  ) {
    try {
      this.phase = { kind: 'ready', next: this.opening(snapshot) };
    } catch (err) {
      // A set-up error is the call's status, before the "ready" marker.
      this.finish(isCosiError(err) ? err : asCosiError(err));
    }
  }

  get isEnded(): boolean {
    return this.phase.kind === 'ended';
  }

  /** Changes held that this watcher has not been sent (or skipped) yet. */
  lag(): number {
    const p = this.phase.kind === 'ready' ? this.phase.next : this.phase;
    const held = p.kind === 'bootstrap' ? p.backlog.length + p.items.length - p.index : p.kind === 'initial' ? p.backlog.length : p.kind === 'backlog' ? p.changes.length : 0;
    return held + this.history.countAfter(this.cursor);
  }

  /** History is forgetting `c`: skip it if this watcher would not deliver it, else keep it in a backlog or end. */
  forgotten(c: Change): void {
    if (this.phase.kind === 'ended' || c.revision <= this.cursor) return;
    // Every older change has been forgotten already, so `c` is the next one after the cursor.
    if (deliveredAs(this.plan, c) === undefined) {
      this.cursor = c.revision;
      return;
    }
    const backlog = this.backlog();
    if (backlog.length < this.ctx.limits.maxBacklog) {
      backlog.push(c);
      this.cursor = c.revision;
      return;
    }
    this.ctx.metrics.overrun();
    this.finish(new CosiError('too-old', `watch fell behind by more than ${this.ctx.limits.maxBacklog} events beyond the kept history; list again and watch from there`));
  }

  /** The backlog forgotten changes join: the current phase's (the next one's before "ready"); a live watch gets one. */
  private backlog(): Change[] {
    const ready = this.phase.kind === 'ready' ? this.phase : undefined;
    const p = ready?.next ?? this.phase;
    if (p.kind === 'initial' || p.kind === 'bootstrap') return p.backlog;
    if (p.kind === 'backlog') return p.changes;
    const phase: Opening = { kind: 'backlog', changes: [] };
    if (ready !== undefined) ready.next = phase;
    else this.phase = phase;
    return phase.changes;
  }

  /**
   * Sends a NOOP with a fresh bookmark when nothing was sent since `idleSince` and the watch is caught up: only to
   * clients that asked for idle bookmarks (the reference sends NOOP only for bootstrap_bookmark).
   */
  bookmarkIfIdle(idleSince: number): void {
    if (this.plan.idleBookmarks) this.bookmarkIfCaughtUp(idleSince);
  }

  private bookmarkIfCaughtUp(idleSince: number): void {
    if (this.phase.kind !== 'live' || this.parked || this.lastSentAt > idleSince) return;
    try {
      // Move the cursor over changes this watcher would not deliver; stop at the first it would.
      for (;;) {
        const batch = this.history.readChanges(this.cursor, 256);
        const next = batch.changes.find((c) => deliveredAs(this.plan, c) !== undefined);
        if (next !== undefined) {
          this.ctx.schedule(this);
          return;
        }
        if (batch.through <= this.cursor) break;
        this.cursor = batch.through;
      }
    } catch (err) {
      this.finish(asCosiError(err));
      return;
    }
    this.write({ payload: Frames.watchResponse([this.ctx.events.bookmark(this.plan.kind, this.cursor)]), events: 1, shared: false });
  }

  /** Writes one WatchResponse; false: the stream is full. */
  private write(message: WatchMessage): boolean {
    this.lastSentAt = Date.now();
    const ok = this.sink.write(message);
    if (!ok) {
      this.parked = true;
      this.sink.onDrain(() => {
        this.parked = false;
        this.ctx.schedule(this);
      });
    }
    return ok;
  }

  /** Aggregated and unfiltered: its change events are the same as every other such watcher's of the kind. */
  private get sharesBatches(): boolean {
    return this.plan.aggregated && this.plan.id === undefined && this.plan.selector.everything && this.sendsAll;
  }

  private get sendsAll(): boolean {
    return sendsAll(this.plan);
  }

  /** The phase after the "ready" marker, and the cursor its changes start from. */
  private opening(snapshot: Resource[] | undefined): Opening {
    const { history, plan } = this;
    const now = history.revision;
    const from = plan.resumeFrom;
    if (from?.bootstrapAfterId !== undefined) {
      // Continue an interrupted bootstrap from the same snapshot (the feed rebuilt it for that revision).
      return this.bootstrap(from.revision, from.bootstrapAfterId, snapshot ?? history.listAt(from.revision));
    }
    if (from !== undefined) {
      // Checks the position is still in history (too-old otherwise).
      history.readChanges(from.revision, 0);
      return this.following(from.revision, []);
    }
    if (plan.id === undefined && plan.bootstrapContents) return this.bootstrap(now, undefined, history.list());
    // The last changes (the NOOP's bookmark names where they start, so a resume from it misses nothing of them), or
    // from now on.
    if (plan.tailEvents > 0) return this.following(tailStart(this.plan, history, now), []);
    if (plan.id === undefined) return this.following(now, []);
    // Single resource: its state now, then its changes.
    const bookmark = encodeBookmark(this.ctx.instance, { revision: now });
    const current = history.current(plan.id);
    const { frames } = this.ctx;
    const state =
      current !== undefined
        ? frames.event(EventType.CREATED, current, undefined, bookmark, undefined, plan.form)
        : frames.event(EventType.DESTROYED, Frames.placeholder(plan.kind.namespace, plan.kind.type, plan.id), undefined, bookmark, undefined, plan.form);
    return this.following(now, [state]);
  }

  /** Changes after `revision`, preceded by the bookmark the request asked for and `first`. */
  private following(revision: number, first: Buffer[]): Opening {
    this.cursor = revision;
    // NOOP reaches api_version 0 clients too, as the reference's (only BOOTSTRAPPED and ERRORED are held back).
    const events = this.plan.bootstrapBookmark ? [this.ctx.events.bookmark(this.plan.kind, revision), ...first] : first;
    return events.length > 0 ? { kind: 'initial', events, backlog: [] } : LIVE;
  }

  /** The snapshot at `revision` (after `afterId` on a resume) as CREATED events, then the changes after it. */
  private bootstrap(revision: number, afterId: string | undefined, items: Resource[]): Opening {
    this.cursor = revision;
    const selected = items.filter((r) => (afterId === undefined || r.metadata.id > afterId) && this.plan.selector.matches(r.metadata));
    return { kind: 'bootstrap', items: selected, index: 0, revision, backlog: [] };
  }

  /** Sends what it can this turn: up to messagesPerTurn messages, until caught up or the stream is full. */
  pump(): void {
    if (this.phase.kind === 'ended' || this.parked) return;
    try {
      for (let turn = 0; turn < this.ctx.limits.messagesPerTurn; turn++) {
        const next = this.nextMessage();
        if (next === undefined) return;
        if (!this.write(next)) return;
      }
      // More to send: yield to the other sessions and come back.
      this.ctx.schedule(this);
    } catch (err) {
      this.finish(asCosiError(err));
    }
  }

  /** The next WatchResponse: first the empty "ready" marker, then events; undefined when caught up. */
  private nextMessage(): WatchMessage | undefined {
    const p = this.phase;
    if (p.kind === 'ready') {
      this.phase = p.next;
      return { payload: Frames.watchResponse([]), events: 0, shared: false };
    }
    if (p.kind === 'live' && this.sharesBatches) {
      const { through, response, events } = this.ctx.events.catchUp(this.history, this.cursor, this.plan.form);
      this.cursor = through;
      return response === undefined ? undefined : { payload: response, events, shared: true };
    }
    const batch = this.nextBatch();
    if (batch.length === 0) return undefined;
    const [only] = batch;
    // The common case (one event, not aggregated) writes the same shared bytes to every watcher: no copy.
    const response = only !== undefined && batch.length === 1 ? this.ctx.events.sharedResponse(only) : undefined;
    if (response !== undefined) return { payload: response, events: 1, shared: true };
    return { payload: Frames.watchResponse(batch), events: batch.length, shared: false };
  }

  /** The events of the next WatchResponse: each phase adds what it has, in order, until the batch is full. */
  private nextBatch(): Buffer[] {
    const batch = new Batch(this.plan.aggregated ? this.ctx.limits.maxBatchEvents : 1, this.ctx.limits.maxBatchBytes);
    while (!batch.full) {
      const p = this.phase;
      switch (p.kind) {
        case 'initial':
          this.sendInitial(p, batch);
          break;
        case 'bootstrap':
          this.sendBootstrap(p, batch);
          break;
        case 'backlog':
          this.sendBacklog(p, batch);
          break;
        case 'live':
          if (!this.sendLive(batch)) return batch.events;
          break;
        default:
          return batch.events;
      }
    }
    return batch.events;
  }

  /** Initial: the queued events, then the changes. */
  private sendInitial(p: Extract<Phase, { kind: 'initial' }>, batch: Batch): void {
    for (let open = true; open; ) {
      const event = p.events.shift();
      if (event === undefined) break;
      open = batch.add(event);
    }
    if (p.events.length === 0) this.phase = changes(p.backlog);
  }

  /** Bootstrap: the snapshot's items, each with the bookmark to resume after it; then BOOTSTRAPPED (api_version 1). */
  private sendBootstrap(p: Extract<Phase, { kind: 'bootstrap' }>, batch: Batch): void {
    const { frames, instance } = this.ctx;
    for (let open = true; open && p.index < p.items.length; ) {
      const r = p.items[p.index++];
      if (r === undefined) continue;
      const bookmark = encodeBookmark(instance, { revision: p.revision, bootstrapAfterId: r.metadata.id });
      open = batch.add(frames.event(EventType.CREATED, r, undefined, bookmark, undefined, this.plan.form));
    }
    if (p.index < p.items.length) return;
    const { namespace, type } = this.plan.kind;
    const done = this.sendsAll ? [frames.event(EventType.BOOTSTRAPPED, Frames.placeholder(namespace, type), undefined, encodeBookmark(instance, { revision: p.revision }))] : [];
    const events = this.plan.bootstrapBookmark ? [...done, this.ctx.events.bookmark(this.plan.kind, p.revision)] : done;
    this.phase = events.length > 0 ? { kind: 'initial', events, backlog: p.backlog } : changes(p.backlog);
  }

  /** Backlog: the forgotten changes this watcher delivers, then live. */
  private sendBacklog(p: Extract<Phase, { kind: 'backlog' }>, batch: Batch): void {
    for (let open = true; open; ) {
      const c = p.changes.shift();
      if (c === undefined) break;
      const type = deliveredAs(this.plan, c);
      if (type !== undefined) open = batch.add(this.ctx.events.change(c, type, this.history, this.plan.form));
    }
    if (p.changes.length === 0) this.phase = LIVE;
  }

  /** Live: changes read from history after the cursor. false: caught up. */
  private sendLive(batch: Batch): boolean {
    const read = this.history.readChanges(this.cursor, batch.room);
    for (const c of read.changes) {
      this.cursor = c.revision;
      const type = deliveredAs(this.plan, c);
      if (type !== undefined && !batch.add(this.ctx.events.change(c, type, this.history, this.plan.form))) return true;
    }
    // Changes this watcher filters out still move its cursor.
    this.cursor = Math.max(this.cursor, read.through);
    return read.changes.length > 0;
  }

  /** The client went away: stop at once, even if a drain or a flush still has this session scheduled. */
  close(): void {
    this.phase = { kind: 'ended', reason: 'closed' };
    this.ctx.remove(this);
  }

  /** Ends the watch from the server's side: after a last bookmark, so the client resumes from exactly here, unless too old. */
  stop(error: CosiError | undefined): void {
    // To clients that understand bookmarks (they asked for one); others just see the stream end.
    if (error?.kind !== 'too-old' && (this.plan.idleBookmarks || this.plan.bootstrapBookmark)) this.bookmarkIfCaughtUp(Number.POSITIVE_INFINITY);
    this.finish(error);
  }

  /** Ends the watch; a too-old cursor ends with an ERRORED event first (api_version >= 1). */
  finish(error?: CosiError): void {
    if (this.phase.kind === 'ended') return;
    const readySent = this.phase.kind !== 'ready';
    this.phase = { kind: 'ended', reason: 'finished' };
    this.ctx.remove(this);
    if (error !== undefined && readySent && this.sendsAll && error.kind === 'too-old') {
      // The one message written regardless of backpressure: the watch ends right after it.
      this.sink.write({ payload: Frames.watchResponse([this.ctx.frames.event(EventType.ERRORED, undefined, undefined, undefined, error.message)]), events: 1, shared: false });
    }
    this.sink.end(error);
  }
}

/** A failure as the watch's status: a CosiError as it is (too-old says the watch fell behind), anything else internal. */
export function asCosiError(err: unknown): CosiError {
  if (isCosiError(err)) {
    if (err.kind === 'too-old') {
      return new CosiError('too-old', `watch fell behind: ${err.message}`);
    }
    return err;
  }
  return new CosiError('internal', err instanceof Error ? err.message : String(err));
}
