// Watch events as bytes: each change encoded once for every watcher, kept within a budget, and the catch-up batches
// that unfiltered aggregated watchers share. The hub decides who gets what; this decides how it is encoded and kept.
import { kindKey, type Kind, type Resource } from '../../shared/resource.js';
import { EventType } from '../../shared/wire.js';
import type { Change, KindHistory } from '../store/store.js';
import { encodeBookmark } from './bookmark.js';
import { Frames, type EventForm } from './frames.js';

export interface EncodingLimits {
  /** Events per aggregated WatchResponse. */
  readonly maxBatchEvents: number;
  /** Bytes per aggregated WatchResponse (a single larger event still goes alone). */
  readonly maxBatchBytes: number;
  /** Bytes of catch-up batches kept for other watchers to send as they are (oldest dropped first). */
  readonly sharedBatchBytes: number;
  /** Bytes of encoded events kept (oldest dropped first; older ones are encoded again when needed). */
  readonly eventCacheBytes: number;
}

export interface CatchUpBatch {
  /** The watcher's cursor after sending it. */
  readonly through: number;
  readonly response?: Buffer;
  /** Events in the response. */
  readonly events: number;
}

/** How a change reaches a watcher that filters nothing (a value that does not decode is an ERRORED event). */
export function unfiltered(c: Change): EventType {
  if (c.error !== undefined) return EventType.ERRORED;
  return c.type === 'created' ? EventType.CREATED : c.type === 'updated' ? EventType.UPDATED : EventType.DESTROYED;
}

export class EncodedEvents {
  /** Encoded events by change, oldest first, by event type and form; each entry's bytes count the single-event responses. */
  private readonly cache = new Map<Change, { byShape: Map<string, Buffer>; bytes: number }>();
  private cacheBytes = 0;
  private readonly responses = new WeakMap<Buffer, Buffer>();
  private readonly sharedBatches = new Map<string, CatchUpBatch>();
  private sharedBytes = 0;

  constructor(
    private readonly instance: string,
    private readonly frames: Frames,
    private readonly limits: EncodingLimits,
  ) {}

  /** Bytes of encoded events kept now. */
  get cachedBytes(): number {
    return this.cacheBytes;
  }

  /**
   * A change was committed: with watchers of its kind it is encoded now, while the old version's encoding is still
   * cached, which is then dropped (the event has a copy). A failure must not reach the writer, whose change is
   * committed: the sessions meet it again and end with it.
   */
  committed(change: Change, forms: Iterable<EventForm>, history: KindHistory): void {
    let encoded = false;
    try {
      // In each form the kind's watchers use (none watched: nothing to encode).
      for (const form of forms) {
        this.change(change, unfiltered(change), history, form);
        encoded = true;
      }
    } catch {
      // Left to the sessions.
    }
    if (!encoded) this.forgetSuperseded(change, history);
  }

  /** A NOOP event carrying the bookmark of `revision` of the kind (and, as the reference's, a placeholder resource). */
  bookmark(kind: Kind, revision: number): Buffer {
    return this.frames.event(EventType.NOOP, Frames.placeholder(kind.namespace, kind.type), undefined, encodeBookmark(this.instance, { revision }));
  }

  /** The shared single-event WatchResponse of an event encoded by change(), or undefined for any other bytes. */
  sharedResponse(event: Buffer): Buffer | undefined {
    return this.responses.get(event);
  }

  /** A WatchResponse holding just this encoded event; shared by every watcher that sends it alone. */
  response(event: Buffer): Buffer {
    return this.responses.get(event) ?? Frames.watchResponse([event]);
  }

  /**
   * The next WatchResponse from `from` for an aggregated watch that filters nothing: the same bytes for every such
   * watcher of the kind at that cursor. Building one stops at a cursor another batch starts from, so watchers that
   * fell behind at different points follow the same cuts after one short batch and share every batch after it.
   * Without a response the watch is caught up (through: the last revision examined).
   */
  catchUp(history: KindHistory, from: number, form: EventForm): CatchUpBatch {
    const prefix = `${kindKey(history.kind)}\n${form}\n`;
    const cached = this.sharedBatches.get(prefix + from);
    if (cached !== undefined) return cached;
    const { maxBatchEvents, maxBatchBytes } = this.limits;
    const events: Buffer[] = [];
    let bytes = 0;
    let through = from;
    fill: for (;;) {
      const batch = history.readChanges(through, maxBatchEvents - events.length);
      if (batch.changes.length === 0) {
        // Past the last change of the kind only when there is nothing to send: a batch ends at its last change,
        // so every watcher that sent it stands at the same cursor.
        if (events.length === 0) through = batch.through;
        break;
      }
      for (const c of batch.changes) {
        const event = this.change(c, unfiltered(c), history, form);
        events.push(event);
        bytes += event.length;
        through = c.revision;
        if (events.length >= maxBatchEvents || bytes >= maxBatchBytes || this.sharedBatches.has(prefix + through)) break fill;
      }
    }
    const [only] = events;
    if (only === undefined) return { through, events: 0 };
    const result = { through, events: events.length, response: events.length === 1 ? this.response(only) : Frames.watchResponse(events) };
    this.sharedBatches.set(prefix + from, result);
    this.sharedBytes = dropOldest(this.sharedBatches, (b) => b.response?.length ?? 0, this.sharedBytes + result.response.length, this.limits.sharedBatchBytes, prefix + from);
    return result;
  }

  /** The encoded event for a change as delivered with the given type; shared by all watchers. */
  change(change: Change, type: EventType, history: KindHistory, form: EventForm): Buffer {
    let entry = this.cache.get(change);
    if (entry === undefined) {
      entry = { byShape: new Map(), bytes: 0 };
      this.cache.set(change, entry);
    }
    const shape = `${type}${form}`;
    let bytes = entry.byShape.get(shape);
    if (bytes === undefined) {
      const bookmark = encodeBookmark(this.instance, { revision: change.revision });
      const event =
        type === EventType.ERRORED
          ? this.frames.event(type, undefined, undefined, bookmark, change.error)
          : this.frames.event(type, change.resource, change.type === 'updated' ? change.old : undefined, bookmark, undefined, form);
      this.forgetSuperseded(change, history);
      // One buffer: the single-event WatchResponse; the event bytes (for aggregated batches) are a view into it.
      const response = Frames.watchResponse([event]);
      bytes = response.subarray(response.length - event.length);
      this.responses.set(bytes, response);
      entry.byShape.set(shape, bytes);
      entry.bytes += response.length;
      this.cacheBytes = dropOldest(this.cache, (e) => e.bytes, this.cacheBytes + response.length, this.limits.eventCacheBytes, change);
    }
    return bytes;
  }

  /** Versions that are no longer current keep no wire encoding of their own (Get and List read current ones). */
  private forgetSuperseded(change: Change, history: KindHistory): void {
    if (change.old !== undefined) this.frames.forget(change.old);
    if (change.type === 'destroyed' || !isCurrent(change.resource, history)) this.frames.forget(change.resource);
  }
}

function isCurrent(r: Resource, history: KindHistory): boolean {
  return history.current(r.metadata.id) === r;
}

/**
 * Drops the oldest entries of an insertion-ordered map until `total` bytes fit `budget`, never `keep` (the entry
 * just added). Returns the new total.
 */
function dropOldest<K, V>(map: Map<K, V>, bytesOf: (v: V) => number, total: number, budget: number, keep: K): number {
  for (const [key, value] of map) {
    if (total <= budget || key === keep) break;
    map.delete(key);
    total -= bytesOf(value);
  }
  return total;
}
