// A watch that survives failures, as an async iterable with backpressure: reconnect with backoff and jitter, resume
// from the last bookmark, and when the server cannot resume ("too old", a restart) list again and yield only the
// difference. The consumer's view converges with no gap and no duplicate. The rxjs Observable is built on it.
import './dispose.js';
import type { Observable } from 'rxjs';
import { CosiError, StatusCode, type ErrorKind } from '../shared/errors.js';
import { checkMs } from './call.js';
import type { CallOptions, ClientLogger, ConnectionState, ReconnectOptions, Timers, WatchOptions, WatchStream } from './client.js';
import type { WatchRequest } from './convert.js';
import type { CosiResource, ResourceDefinition, WatchEvent } from './resource.js';
import { rxjs } from './rx.js';
import { sameState } from './resource-state.js';

/** What the watch needs from a client (grpc-client.ts implements it; tests can script one). */
export interface WatchTransport {
  readonly endpoint: string;
  readonly log: ClientLogger | undefined;
  /** Aborted when the client is closed. */
  readonly closed: AbortSignal;
  resolveType(type: string, opts: CallOptions): Promise<ResourceDefinition>;
  /**
   * One Watch call, no reconnects: each message's events, pulled ([] is the server's "ready" marker). Ends when the
   * server ends the call with OK or when `signal` aborts; any other end is thrown as a CosiError.
   */
  watchOnce(req: WatchRequest, signal: AbortSignal): AsyncIterable<readonly WatchEvent[]>;
  /** Registers an open watch so that closing the client can wait for it; returns the unregistration. */
  trackWatch(w: WatchStream): () => void;
}

// Failures worth retrying: the server or the network went away, or asked us to come back later. Anything else
// (a bad request, a missing role, bad credentials, an unknown type) would fail the same way again.
const RETRYABLE: ReadonlySet<ErrorKind> = new Set<ErrorKind>(['unavailable', 'cancelled', 'deadline-exceeded', 'internal', 'unknown', 'resource-exhausted', 'aborted']);

const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** The reconnect settings with their defaults applied and checked. */
interface Policy {
  readonly enabled: boolean;
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  readonly jitter: number;
  readonly maxRetries: number;
  readonly maxElapsedMs: number;
  readonly onState: ((state: ConnectionState, detail?: string) => void) | undefined;
  readonly timers: Timers;
  readonly random: () => number;
}

function policyOf(reconnect: boolean | ReconnectOptions | undefined): Policy {
  const ro: ReconnectOptions = typeof reconnect === 'object' ? reconnect : {};
  const jitter = ro.jitter ?? 0.5;
  if (typeof jitter !== 'number' || !(jitter >= 0 && jitter <= 1)) throw new CosiError('invalid-argument', `reconnect.jitter must be between 0 and 1, not ${String(jitter)}`);
  const maxRetries = ro.maxRetries ?? Infinity;
  if (typeof maxRetries !== 'number' || !(maxRetries >= 0)) throw new CosiError('invalid-argument', `reconnect.maxRetries must be 0 or more, not ${String(maxRetries)}`);
  const initialDelayMs = checkMs('reconnect.initialDelayMs', ro.initialDelayMs, 1000);
  const maxDelayMs = checkMs('reconnect.maxDelayMs', ro.maxDelayMs, 30_000);
  if (!Number.isFinite(initialDelayMs) || !Number.isFinite(maxDelayMs)) throw new CosiError('invalid-argument', 'reconnect delays must be finite');
  return {
    enabled: reconnect !== false,
    initialDelayMs,
    maxDelayMs: Math.max(initialDelayMs, maxDelayMs),
    jitter,
    maxRetries,
    maxElapsedMs: checkMs('reconnect.maxElapsedMs', ro.maxElapsedMs, Infinity),
    onState: ro.onState,
    timers: ro.timers ?? realTimers,
    random: ro.random ?? Math.random,
  };
}

/** Waits `ms` on the policy's clock; an abort ends the wait early. */
function sleep(timers: Timers, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      timers.clearTimeout(handle);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const handle = timers.setTimeout(done, ms);
    signal.addEventListener('abort', done);
  });
}

/**
 * The resilient watch: message batches of events for the consumer (each non-empty). Returns when `stop` aborts or
 * the server ends the watch; throws a CosiError when it gives up.
 */
async function* resilientBatches(t: WatchTransport, type: string, opts: WatchOptions, p: Policy, stop: AbortSignal): AsyncGenerator<readonly WatchEvent[], void, undefined> {
  // Only a watch that starts from a full picture (bootstrap, or one resource) can be re-listed and diffed.
  const tracksView = opts.bootstrap === true || opts.id !== undefined;
  let bookmark: Uint8Array | undefined;
  let bootstrapped = false;
  let state: ConnectionState | undefined;
  const view = new Map<string, CosiResource>();
  // While resyncing: the fresh picture being collected, yielded as a difference once complete.
  let resync: Map<string, CosiResource> | undefined;
  // Failures in a row, and when the row began. A success ends the row: events handed to the consumer, a resync
  // completed, or a stream that stayed up maxDelayMs (a quiet watch hands out nothing).
  let failures = 0;
  let failingSince: number | undefined;
  // Whether the last failure was "cannot resume": only a second one in a row waits (a resync is not a tight loop).
  let lastLostPlace = false;
  // When the current attempt reached 'streaming'.
  let healthySince: number | undefined;
  const succeeded = () => {
    failures = 0;
    failingSince = undefined;
    lastLostPlace = false;
  };

  const setState = (s: ConnectionState, detail?: string) => {
    if (s === state && detail === undefined) return;
    state = s;
    t.log?.debug(`watch ${s}`, { endpoint: t.endpoint, type, ...(detail !== undefined ? { detail } : {}) });
    p.onState?.(s, detail);
  };
  const streaming = () => {
    healthySince = p.timers.now();
    setState('streaming');
  };

  const lean = opts.eventForm === undefined ? tracksView : opts.eventForm === 'lean';
  const record = (e: WatchEvent, out: WatchEvent[]) => {
    // A lean event carries no old resource: the view has it (a lean watch without a view has none to give).
    if (lean && e.type === 'updated' && e.old === undefined && e.resource !== undefined) {
      const old = view.get(e.resource.metadata.id);
      if (old !== undefined) e = { ...e, old };
    }
    if ((tracksView || lean) && e.resource !== undefined) {
      if (e.type === 'destroyed') view.delete(e.resource.metadata.id);
      else if (e.type === 'created' || e.type === 'updated') view.set(e.resource.metadata.id, e.resource);
    }
    if (e.type === 'bootstrapped') bootstrapped = true;
    out.push(e);
  };

  const finishResync = (fresh: Map<string, CosiResource>, out: WatchEvent[]) => {
    resync = undefined;
    for (const [id, old] of [...view]) if (!fresh.has(id)) record({ type: 'destroyed', resource: old, resync: true }, out);
    for (const [id, r] of fresh) {
      const old = view.get(id);
      if (old === undefined) record({ type: 'created', resource: r, resync: true }, out);
      else if (!sameState(old, r)) record({ type: 'updated', resource: r, old, resync: true }, out);
    }
    if (opts.id === undefined && !bootstrapped) record({ type: 'bootstrapped', resync: true }, out);
  };

  /** The events of one message the consumer gets, after the bookkeeping. */
  const consume = (events: readonly WatchEvent[]): WatchEvent[] => {
    const out: WatchEvent[] = [];
    for (const e of events) {
      if (e.bookmark !== undefined) bookmark = e.bookmark;
      if (resync !== undefined) {
        // Collect the fresh picture: a kind's bootstrap up to BOOTSTRAPPED, or a single resource's first event.
        if (e.type === 'created' && e.resource !== undefined) resync.set(e.resource.metadata.id, e.resource);
        if (e.type === 'bootstrapped' || (opts.id !== undefined && (e.type === 'created' || e.type === 'destroyed'))) {
          finishResync(resync, out);
          succeeded();
          streaming();
        }
        continue;
      }
      // A server-side "fell behind" ends the call right after; the resync that follows is the consumer's answer.
      if (e.type === 'errored' && p.enabled) continue;
      record(e, out);
    }
    return out;
  };

  /** The request of the next attempt: a resync starts from a fresh picture, a reconnect resumes from the bookmark. */
  const request = (def: ResourceDefinition): WatchRequest => {
    const base = {
      namespace: opts.namespace ?? def.defaultNamespace,
      type: def.type,
      ...(opts.id !== undefined ? { id: opts.id } : {}),
      ...(opts.labelQuery !== undefined ? { labelQuery: opts.labelQuery } : {}),
      ...(opts.idRegexp !== undefined ? { idRegexp: opts.idRegexp } : {}),
      // Events that piled up come in one message (shared by every such watcher); a caught-up watch still gets each
      // event at once. The consumer sees the same events one by one either way.
      aggregated: opts.aggregated ?? true,
      bootstrapBookmark: opts.bootstrapBookmark ?? false,
      lean,
    };
    if (resync !== undefined) return { ...base, bootstrap: opts.id === undefined, tailEvents: 0 };
    if (bookmark !== undefined) return { ...base, bootstrap: false, tailEvents: 0, fromBookmark: bookmark };
    return { ...base, bootstrap: opts.bootstrap ?? false, tailEvents: opts.tailEvents ?? 0, ...(opts.fromBookmark !== undefined ? { fromBookmark: opts.fromBookmark } : {}) };
  };

  try {
    setState('connecting');
    for (;;) {
      if (stop.aborted) return;
      healthySince = undefined;
      let fromBookmark = false;
      try {
        const def = await t.resolveType(type, { signal: stop });
        if (stop.aborted) return;
        const req = request(def);
        fromBookmark = req.fromBookmark !== undefined;
        for await (const events of t.watchOnce(req, stop)) {
          if (stop.aborted) return;
          if (events.length === 0) {
            if (resync === undefined) streaming();
            continue;
          }
          const out = consume(events);
          if (out.length > 0) {
            succeeded();
            yield out;
          }
          if (stop.aborted) return;
        }
        // The server ended the watch: it is over.
        return;
      } catch (caught) {
        if (stop.aborted) return;
        const err = caught instanceof CosiError ? caught : new CosiError('internal', caught instanceof Error ? caught.message : String(caught));
        if (!p.enabled) throw err;
        const now = p.timers.now();
        if (healthySince !== undefined && now - healthySince >= p.maxDelayMs) succeeded();
        failures++;
        failingSince ??= now;
        // The server no longer has our place. A foreign COSI server says so with a bare FAILED_PRECONDITION (its
        // "invalid bookmark"): on a read-only watch that started from a bookmark, nothing else can be meant.
        const lostPlace = err.kind === 'too-old' || err.kind === 'invalid-bookmark' || (fromBookmark && err.code === StatusCode.FAILED_PRECONDITION);
        if (lostPlace && !tracksView) {
          throw new CosiError(err.kind, `${err.message} (this watch has no bootstrap to re-list from: watch with bootstrap to survive this)`, { cause: err });
        }
        if (!lostPlace && !RETRYABLE.has(err.kind)) throw err;
        // Backoff for everything but a first "cannot resume": the server answered, so it is back (a restarted cosid
        // says "too old" to the first reconnect that reaches it), and the re-list goes at once however many
        // attempts failed while it was away. A resync that fails that way again waits, as any failure does.
        const base = Math.min(p.maxDelayMs, p.initialDelayMs * 2 ** Math.min(failures - 1, 52));
        const delay = lostPlace && !lastLostPlace ? 0 : Math.round(base * (1 - p.jitter * p.random()));
        lastLostPlace = lostPlace;
        if (failures > p.maxRetries || now + delay - failingSince > p.maxElapsedMs) {
          throw new CosiError(err.kind, `${err.message} (gave up after ${failures} failed attempt${failures === 1 ? '' : 's'} in ${now - failingSince} ms)`, { cause: err });
        }
        if (lostPlace) {
          bookmark = undefined;
          resync = new Map();
          setState('resyncing', err.message);
        } else {
          setState('reconnecting', err.message);
          // A resync interrupted by a failure starts over from a fresh list.
          if (resync !== undefined) resync = new Map();
        }
        t.log?.debug('watch retrying', { endpoint: t.endpoint, type, attempt: failures, delayMs: delay, reason: err.message });
        if (delay > 0) await sleep(p.timers, delay, stop);
      }
    }
  } finally {
    setState('closed');
  }
}

/** The WatchStream: the resilient batches handed out one event per pull. */
class ResilientWatchStream implements WatchStream {
  private readonly stop = new AbortController();
  private readonly source: AsyncGenerator<readonly WatchEvent[], void, undefined>;
  private batch: readonly WatchEvent[] = [];
  private index = 0;
  private timedOut = false;
  private deadlineTimer: unknown;
  private readonly detach: () => void;

  constructor(
    t: WatchTransport,
    private readonly type: string,
    opts: WatchOptions,
  ) {
    const policy = policyOf(opts.reconnect);
    const timeoutMs = checkMs('timeoutMs', opts.timeoutMs, Infinity);
    const abort = () => this.stop.abort();
    opts.signal?.addEventListener('abort', abort);
    t.closed.addEventListener('abort', abort);
    if (opts.signal?.aborted === true || t.closed.aborted) abort();
    if (Number.isFinite(timeoutMs)) {
      this.deadlineTimer = policy.timers.setTimeout(() => {
        this.timedOut = true;
        abort();
      }, timeoutMs);
    }
    const untrack = t.trackWatch(this);
    let detached = false;
    this.detach = () => {
      if (detached) return;
      detached = true;
      opts.signal?.removeEventListener('abort', abort);
      t.closed.removeEventListener('abort', abort);
      if (this.deadlineTimer !== undefined) policy.timers.clearTimeout(this.deadlineTimer);
      untrack();
    };
    this.source = this.run(resilientBatches(t, type, opts, policy, this.stop.signal), timeoutMs);
  }

  private async *run(batches: AsyncGenerator<readonly WatchEvent[], void, undefined>, timeoutMs: number): AsyncGenerator<readonly WatchEvent[], void, undefined> {
    try {
      yield* batches;
      if (this.timedOut) throw new CosiError('deadline-exceeded', `the watch of ${this.type} reached its deadline of ${timeoutMs} ms`);
    } finally {
      this.detach();
    }
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
    this.stop.abort();
    this.batch = [];
    // A stream never iterated has no running generator whose `finally` would let go of the listeners and timer.
    this.detach();
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
  return new (rxjs().Observable)<WatchEvent>((subscriber) => {
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

