// watchIter and watch: a watch that survives failures, as an async iterable with backpressure. The list-watch-resume
// core (client/reflector.ts) reconnects, resumes from the last bookmark, and when the server cannot resume ("too
// old", a restart) lists again; a watch that keeps a view holds it in the one store (client/resource-cache.ts),
// which turns a re-list into only the difference (events marked `resync`) and fills in the old resource of a lean
// event. The consumer's view converges with no gap and no duplicate. The rxjs Observable is built on it.
import './dispose.js';
import type { Observable } from 'rxjs';
import type { WatchOptions, WatchStream } from './client.js';
import type { WatchEvent } from './resource.js';
import { leanEvents, Reflector, relistable, type Delta, type WatchTransport } from './reflector.js';
import { ResourceCache } from './resource-cache.js';
import { observableClass } from './rx.js';

export type { WatchTransport } from './reflector.js';

/** The WatchStream: the core's steps as events, handed out one per pull. */
class ResilientWatchStream implements WatchStream {
  private readonly reflector: Reflector;
  private readonly source: AsyncGenerator<readonly WatchEvent[], void, undefined>;
  /**
   * The watch's view: kept by a watch that starts from a full picture (to diff a re-list against) or that gets
   * lean events (to fill in their old resource). Any other watch passes the events on as they come.
   */
  private readonly view: ResourceCache | undefined;
  private readonly lean: boolean;
  private batch: readonly WatchEvent[] = [];
  private index = 0;

  constructor(t: WatchTransport, type: string, opts: WatchOptions) {
    this.lean = leanEvents(opts);
    this.view = relistable(opts) || this.lean ? new ResourceCache() : undefined;
    this.reflector = new Reflector(t, type, opts, this);
    this.source = this.events();
  }

  private async *events(): AsyncGenerator<readonly WatchEvent[], void, undefined> {
    for await (const steps of this.reflector.steps()) {
      const out = steps.flatMap((d) => this.eventsOf(d));
      if (out.length > 0) yield out;
    }
  }

  /** What the consumer gets of one step, the view changed. */
  private eventsOf(d: Delta): WatchEvent[] {
    if (d.op === 'marker') return [d.event];
    if (d.op === 'replaced') {
      const changes = (this.view ?? new ResourceCache()).replace(d.items);
      return changes.map((c) => ({ ...c, resync: true }));
    }
    let e = d.event;
    // A lean event carries no old resource: the view has it.
    if (this.lean && e.type === 'updated' && e.old === undefined) {
      const old = this.view?.get(d.resource.metadata.id);
      if (old !== undefined) e = { ...e, old };
    }
    this.view?.apply(d.op, d.resource);
    return [e];
  }

  /** Whole batches, for the Observable (it hands them on synchronously). */
  batches(): AsyncGenerator<readonly WatchEvent[], void, undefined> {
    return this.source;
  }

  async next(): Promise<IteratorResult<WatchEvent, undefined>> {
    for (;;) {
      const e = this.batch[this.index];
      if (e !== undefined) {
        this.index++;
        return { done: false, value: e };
      }
      const r = await this.source.next();
      if (r.done === true) return { done: true, value: undefined };
      this.batch = r.value;
      this.index = 0;
    }
  }

  async return(): Promise<IteratorResult<WatchEvent, undefined>> {
    await this.close();
    return { done: true, value: undefined };
  }

  async close(): Promise<void> {
    this.batch = [];
    await this.reflector.close();
    await this.source.return(undefined);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

export function openWatchStream(t: WatchTransport, type: string, opts: WatchOptions): WatchStream {
  return new ResilientWatchStream(t, type, opts);
}

/** The same watch as an rxjs Observable: each subscription opens its own WatchStream and pulls it as fast as it can. */
export function observeWatch(t: WatchTransport, type: string, opts: WatchOptions): Observable<WatchEvent> {
  return new (observableClass())<WatchEvent>((subscriber) => {
    let stream: ResilientWatchStream;
    try {
      stream = new ResilientWatchStream(t, type, opts);
    } catch (err) {
      subscriber.error(err);
      return undefined;
    }
    void (async () => {
      try {
        for await (const batch of stream.batches()) {
          for (const e of batch) {
            if (subscriber.closed) return;
            subscriber.next(e);
          }
        }
        subscriber.complete();
      } catch (err) {
        subscriber.error(err);
      }
    })();
    return () => void stream.close();
  });
}
