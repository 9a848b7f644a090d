// A node's changes on their way to the writer: under the node's rate (a token bucket, burst 10x) every change is
// its own write, so fleet watchers see each of them. Past it the node is throttled: its writes are coalesced per
// key (the latest state wins; each type's latest bookmark goes on that type's last write) and flushed once a
// second, until the node has stayed under its rate for 10 s. A flooding node costs the fleet one small batch a
// second, and the follower keeps pulling, so the node's own history never overruns on our account. Intermediate
// states of a flooding node are skipped on purpose (docs/design/fleet.md §4).
import type { NodeOp } from './contracts.js';

const BURST = 10;
const FLUSH_MS = 1000;
const CALM_MS = 10_000;

export type Flush = (ops: NodeOp[], oldestArrival: number) => Promise<void>;

export class Throttle {
  private tokens: number;
  private refilledAt = Date.now();
  private held = new Map<string, NodeOp>();
  private heldSince: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** When the node last went over its rate. */
  private overAt = 0;
  private closed = false;

  /** `calmed` is told when the node leaves the throttled state. */
  constructor(private readonly rate: number, private readonly flush: Flush, private readonly calmed: () => void) {
    this.tokens = rate * BURST;
  }

  get throttled(): boolean {
    return this.timer !== undefined;
  }

  /** Arrival time of the oldest change held back, if any. */
  get oldestHeld(): number | undefined {
    return this.heldSince;
  }

  add(ops: NodeOp[], arrival: number): void {
    if (this.closed) return;
    this.refill();
    if (!this.throttled && this.tokens >= ops.length) {
      this.tokens -= ops.length;
      void this.flush(ops, arrival);
      return;
    }
    this.tokens = Math.max(0, this.tokens - ops.length);
    this.overAt = Date.now();
    this.heldSince ??= arrival;
    for (const op of ops) {
      // Deleted first so that the key moves to the end: the order of the last writes is kept.
      this.held.delete(op.key);
      this.held.set(op.key, op);
    }
    this.timer ??= setInterval(() => this.tick(), FLUSH_MS);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.rate * BURST, this.tokens + ((now - this.refilledAt) / 1000) * this.rate);
    this.refilledAt = now;
  }

  private tick(): void {
    this.refill();
    if (this.held.size > 0) {
      const ops = withLatestBookmarks([...this.held.values()]);
      const since = this.heldSince ?? Date.now();
      this.held = new Map();
      this.heldSince = undefined;
      void this.flush(ops, since);
      return;
    }
    if (Date.now() - this.overAt >= CALM_MS) {
      clearInterval(this.timer);
      this.timer = undefined;
      this.calmed();
    }
  }
}

/** Each type's latest bookmark moved onto that type's last op (the coalesced ops may have lost it with a state). */
function withLatestBookmarks(ops: NodeOp[]): NodeOp[] {
  const latest = new Map<string, { readonly type: string; readonly value: Uint8Array }>();
  const lastIndex = new Map<string, number>();
  ops.forEach((op, i) => {
    if (op.bookmark === undefined) return;
    lastIndex.set(op.bookmark.type, i);
    latest.set(op.bookmark.type, op.bookmark);
  });
  // The held map keeps insertion order of last writes, so the op holding the newest bookmark of a type is its last.
  return ops.map((op, i) => {
    if (op.bookmark === undefined) return op;
    const { bookmark, ...rest } = op;
    return lastIndex.get(bookmark.type) === i ? { ...rest, bookmark: latest.get(bookmark.type) ?? bookmark } : rest;
  });
}
