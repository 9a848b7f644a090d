// Watches over each kind's shared history (the store's ChangeFeed): opens sessions (session.ts) once their kind's
// history is ready, fans each kind's news out to its sessions (subscriptions.ts), gives them turns to send in
// (scheduler.ts) and bookmarks the idle ones. How events become bytes is events.ts.
import { CosiError } from '../../shared/errors.js';
import type { Resource } from '../../shared/resource.js';
import { readableHistory, type ChangeFeed, type KindHistory } from '../store/store.js';
import type { WatchMetrics } from '../metrics.js';
import { EncodedEvents } from './events.js';
import type { Frames } from './frames.js';
import { DEFAULT_WATCH_LIMITS, type WatchLimits } from './limits.js';
import type { WatchPlan } from './plan.js';
import { Scheduler } from './scheduler.js';
import { asCosiError, WatchSession, type SessionContext, type WatchSink } from './session.js';
import { Subscriptions } from './subscriptions.js';

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

const NO_METRICS: Pick<WatchMetrics, 'overrun'> = { overrun() {} };

export class WatchHub {
  private readonly scheduler = new Scheduler<WatchSession>();
  private readonly subscriptions: Subscriptions;
  private readonly context: SessionContext;
  private closed = false;
  readonly events: EncodedEvents;
  private readonly bookmarkTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly feed: ChangeFeed,
    readonly frames: Frames,
    readonly limits: WatchLimits = DEFAULT_WATCH_LIMITS,
    readonly metrics: Pick<WatchMetrics, 'overrun'> = NO_METRICS,
  ) {
    this.events = new EncodedEvents(feed.instance, frames, limits);
    const schedule = (s: WatchSession) => this.scheduler.schedule(s);
    this.subscriptions = new Subscriptions(this.events, schedule);
    this.context = {
      instance: feed.instance,
      frames,
      events: this.events,
      limits,
      metrics,
      schedule,
      remove: (s) => {
        this.subscriptions.delete(s);
        this.scheduler.cancel(s);
      },
    };
    if (limits.bookmarkIntervalMs > 0) {
      this.bookmarkTimer = setInterval(() => this.bookmarkIdle(), limits.bookmarkIntervalMs);
      this.bookmarkTimer.unref();
    }
  }

  private bookmarkIdle(): void {
    const idleSince = Date.now() - this.limits.bookmarkIntervalMs;
    for (const s of this.subscriptions.sessions()) s.bookmarkIfIdle(idleSince);
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
        const fanOut = this.subscriptions.of(history);
        session = new WatchSession(this.context, history, plan, sink, snapshot);
        if (session.isEnded) return;
        fanOut.add(session);
        this.scheduler.schedule(session);
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
    if (from?.bootstrapAfterId !== undefined) snapshot = await this.feed.listAt(plan.kind, from.revision);
    if (from !== undefined) await this.feed.reach(plan.kind, from.revision);
    return { history, snapshot };
  }

  stats(): WatchStats {
    let sessions = 0;
    let parked = 0;
    let maxBuffered = 0;
    let maxBufferedBytes = 0;
    let lagMax = 0;
    let lagTotal = 0;
    for (const s of this.subscriptions.sessions()) {
      sessions++;
      if (s.parked) parked++;
      const lag = s.lag();
      lagMax = Math.max(lagMax, lag);
      lagTotal += lag;
      maxBuffered = Math.max(maxBuffered, s.sink.buffered());
      maxBufferedBytes = Math.max(maxBufferedBytes, s.sink.bufferedBytes());
    }
    return { sessions, parked, lagMax, lagTotal, maxBuffered, maxBufferedBytes, cachedEventBytes: this.events.cachedBytes };
  }

  /** Ends every watch with the given status (graceful shutdown), each after a last bookmark to resume from. */
  endAll(error?: CosiError): void {
    this.closed = true;
    this.subscriptions.stopAll(error);
    clearInterval(this.bookmarkTimer);
  }
}
