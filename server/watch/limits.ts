// How much the watch layer may send at once, keep for slow watchers and cache: one set of limits per hub.

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
