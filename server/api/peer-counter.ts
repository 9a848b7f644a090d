// What is open per connection or per remote address (calls, watches, log streams), with a limit: grpc-js names a
// connection "ip:port". A key whose count drops to zero is forgotten, so the map holds only what is open.
import { CosiError } from '../../shared/errors.js';

export class PeerCounter {
  private readonly counts = new Map<string, number>();

  get(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  up(key: string): void {
    this.counts.set(key, this.get(key) + 1);
  }

  /** Returns the new count. */
  down(key: string): number {
    const n = this.get(key) - 1;
    if (n > 0) this.counts.set(key, n);
    else this.counts.delete(key);
    return Math.max(0, n);
  }

  /**
   * Counts one more against `key`, refused (RESOURCE_EXHAUSTED, with `refusal` as the message) when `limit` are open
   * already; returns its release, which counts it down once however often it is called.
   */
  admit(key: string, limit: number, refusal: string): () => void {
    if (this.get(key) >= limit) throw new CosiError('resource-exhausted', refusal);
    this.up(key);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.down(key);
    };
  }
}
