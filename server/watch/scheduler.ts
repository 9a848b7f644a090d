// Turns for the watch sessions that have something to send, in slices of the event loop: writers (controllers,
// the kubelet poller) and other calls share this loop with a thousand busy watchers.

/** The longest one flush keeps the event loop (see Scheduler.flush). */
const FLUSH_SLICE_MS = 5;

/** What the scheduler gives turns to: pump() sends what it can and asks for another turn if more is left. */
export interface Pumped {
  pump(): void;
}

export class Scheduler<T extends Pumped> {
  /** Sessions waiting for a turn, in the order they get it. */
  private readonly waiting = new Set<T>();
  private flushScheduled = false;

  /** Gives `session` a turn soon (once, however often it asks before then). */
  schedule(session: T): void {
    this.waiting.add(session);
    this.flushSoon();
  }

  /** Takes back a turn not yet given (the session ended). */
  cancel(session: T): void {
    this.waiting.delete(session);
  }

  private flushSoon(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  /**
   * Pumps the waiting sessions for at most FLUSH_SLICE_MS: with a thousand busy watchers one pass can take far
   * longer. Sessions left over go first next turn; timers and I/O run in between.
   */
  private flush(): void {
    this.flushScheduled = false;
    const sessions = [...this.waiting];
    this.waiting.clear();
    const deadline = performance.now() + FLUSH_SLICE_MS;
    let next = 0;
    while (next < sessions.length) {
      sessions[next++]?.pump();
      if (performance.now() >= deadline) break;
    }
    if (next < sessions.length) {
      // The ones not reached go first, then those that asked again during this slice.
      const later = [...sessions.slice(next), ...this.waiting];
      this.waiting.clear();
      for (const s of later) this.waiting.add(s);
    }
    if (this.waiting.size > 0) this.flushSoon();
  }
}
