// The list-watch-resume core, as client-go's Reflector: it holds no resources of its own. It reconnects with
// backoff and jitter, resumes from the last bookmark, and when the server cannot resume ("too old", a restart) it
// lists again and hands the complete picture on as one `replaced` step; otherwise each event as an `added`,
// `updated` or `deleted` step. Whoever pulls it keeps the one store (client/resource-cache.ts): a watch stream
// (client/watch.ts), an informer's node (client/informer.ts), or the fleet's follower (it keeps what it wrote).
//
// What a consumer of `new Reflector(t, type, opts).steps()` sees, for a kind (each pull: the steps of one message).
// With cosid every created/updated/destroyed step carries `event.bookmark` (resuming from it goes on right after that
// event), and the library asks for idle bookmarks: a quiet, caught-up watch gets `noop` markers with a fresh one.
// `onState`: 'connecting' once at the start; 'streaming' when a call's first message (the server's "ready") arrives,
// or, during a re-list, when the re-list is complete; 'reconnecting' (detail: the error) before the backoff of a
// failure worth retrying; 'resyncing' (detail) when the server cannot resume; 'closed' once at the end.
//  (a) `bootstrap: true`, no `fromBookmark`: 'streaming', then `created` for each current resource (its bookmark
//      resumes inside that bootstrap, on the same snapshot), then a `bootstrapped` marker (bookmark: the snapshot's
//      point), then each change. Should the bootstrap itself become too old before its `bootstrapped`, as in (c), but
//      the `replaced` step is followed by a `bootstrapped` marker with `resync: true` carrying the same bookmark.
//  (b) `bootstrap: true` with `fromBookmark` that the server can resume: the call sends only the bookmark;
//      'streaming', then only the changes after the bookmark, as created/updated/destroyed. No `created` for what
//      exists and no `bootstrapped` marker (unless the bookmark was inside a bootstrap: the rest of it, then its marker).
//  (c) the server cannot resume (too-old, invalid-bookmark, a bookmark from another server instance, or a bare
//      FAILED_PRECONDITION to a resume), on the first call or later: 'resyncing', then at once a bootstrap call whose
//      events are collected, not handed out; once complete, one `replaced` step with the whole picture (`items`) and
//      `bookmark` (the re-list's BOOTSTRAPPED event's), then 'streaming' and the changes after it. No `bootstrapped`
//      marker follows (the watch had its picture before). A re-list cut off by any failure starts over.
//  (d) a reconnect in the middle: 'reconnecting', the backoff, a call from the last bookmark handed out (of any
//      event or marker), 'streaming', and the next change. No step at all marks it: nothing repeats, nothing is lost.
// Markers (`noop`, `bootstrapped`) change no state; a server-side "fell behind" (`errored`) is not handed out when
// reconnecting is on, its too-old leads to (c). For one resource (`id`), (c)'s picture is the resource's first event
// (`created`, or `destroyed` if it does not exist) and its bookmark, and there are no `bootstrapped` markers.
import { CosiError, StatusCode, type ErrorKind } from '../shared/errors.js';
import { checkMs } from './call.js';
import type { CallOptions, ClientLogger, ConnectionState, ReconnectOptions, Timers, WatchOptions } from './client.js';
import type { WatchRequest } from './convert.js';
import type { CosiResource, ResourceDefinition, WatchEvent } from './resource.js';

/** Something a client can close when it is disposed of (an open watch). */
export interface Closable {
  close(): Promise<void>;
}

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
  trackWatch(w: Closable): () => void;
}

/** The library's own clients carry their WatchTransport; any other CosiClient does not. */
export function isWatchTransport(client: object): client is WatchTransport {
  const c = client as Partial<Record<keyof WatchTransport, unknown>>;
  return typeof c.watchOnce === 'function' && typeof c.trackWatch === 'function' && typeof c.resolveType === 'function' && c.closed instanceof AbortSignal;
}

/**
 * One step for the store: an event that adds, updates or deletes one resource (the event as the server sent it,
 * for the consumer), a re-list's complete picture that replaces the store, or a marker that changes nothing in it
 * (`bootstrapped`, `noop`, `errored`, an event without a resource).
 */
export type Delta =
  | { readonly op: 'created' | 'updated' | 'destroyed'; readonly event: WatchEvent; readonly resource: CosiResource }
  /** `bookmark`: the re-list's BOOTSTRAPPED event's (one resource: its first event's): resume from it after `items`. */
  | { readonly op: 'replaced'; readonly items: ReadonlyMap<string, CosiResource>; readonly bookmark?: Uint8Array }
  | { readonly op: 'marker'; readonly event: WatchEvent };

/** Only a watch that starts from a full picture (bootstrap, or one resource) can be listed again and diffed. */
export function relistable(opts: WatchOptions): boolean {
  return opts.bootstrap === true || opts.id !== undefined;
}

/**
 * Where a watch that keeps a picture of its own resumes: `bootstrap` with `fromBookmark` is "my picture is the one
 * this bookmark names; list again only if the server cannot resume from it". The server refuses the two together on
 * the wire, so the first call sends only the bookmark.
 */
function resumePoint(opts: WatchOptions): Uint8Array | undefined {
  return opts.bootstrap === true ? opts.fromBookmark : undefined;
}

/** Whether the server is asked for lean events (WatchOptions.eventForm, and its default). */
export function leanEvents(opts: WatchOptions): boolean {
  return opts.eventForm === undefined ? relistable(opts) : opts.eventForm === 'lean';
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

/** What an event is to the store. */
function deltaOf(e: WatchEvent): Delta {
  if (e.resource !== undefined && (e.type === 'created' || e.type === 'updated' || e.type === 'destroyed')) return { op: e.type, event: e, resource: e.resource };
  return { op: 'marker', event: e };
}

/**
 * The resilient list-watch-resume loop: the steps of each message (each batch non-empty). Returns when `stop`
 * aborts or the server ends the watch; throws a CosiError when it gives up.
 */
async function* reflect(t: WatchTransport, type: string, opts: WatchOptions, p: Policy, stop: AbortSignal): AsyncGenerator<readonly Delta[], void, undefined> {
  const canRelist = relistable(opts);
  const lean = leanEvents(opts);
  let bookmark = resumePoint(opts);
  // A watch that resumes had its bootstrap before: a re-list is then a resync, with no BOOTSTRAPPED marker after it.
  let bootstrapped = bookmark !== undefined;
  let state: ConnectionState | undefined;
  // While listing again: the list so far, handed on whole as one `replaced` step once complete (a list in
  // progress, as client-go's Reflector lists before it calls Replace; nothing is kept after).
  let relist: Map<string, CosiResource> | undefined;
  // Failures in a row, and when the row began. A success ends the row: steps handed out, a re-list completed, or
  // a stream that stayed up maxDelayMs (a quiet watch hands out nothing).
  let failures = 0;
  let failingSince: number | undefined;
  // Whether the last failure was "cannot resume": only a second one in a row waits (a re-list is not a tight loop).
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

  /** The steps of one message, after the bookkeeping. */
  const stepsOf = (events: readonly WatchEvent[]): Delta[] => {
    const out: Delta[] = [];
    for (const e of events) {
      if (e.bookmark !== undefined) bookmark = e.bookmark;
      if (relist !== undefined) {
        // Collect the fresh picture: a kind's bootstrap up to BOOTSTRAPPED, or a single resource's first event.
        if (e.type === 'created' && e.resource !== undefined) relist.set(e.resource.metadata.id, e.resource);
        if (e.type === 'bootstrapped' || (opts.id !== undefined && (e.type === 'created' || e.type === 'destroyed'))) {
          // The bookmark of the event that completed the picture: a resume from it follows on from `items`.
          const at = e.bookmark !== undefined ? { bookmark: e.bookmark } : {};
          out.push({ op: 'replaced', items: relist, ...at });
          relist = undefined;
          if (opts.id === undefined && !bootstrapped) {
            bootstrapped = true;
            out.push({ op: 'marker', event: { type: 'bootstrapped', resync: true, ...at } });
          }
          succeeded();
          streaming();
        }
        continue;
      }
      // A server-side "fell behind" ends the call right after; the re-list that follows is the consumer's answer.
      if (e.type === 'errored' && p.enabled) continue;
      if (e.type === 'bootstrapped') bootstrapped = true;
      out.push(deltaOf(e));
    }
    return out;
  };

  /** The request of the next attempt: a re-list starts from a fresh picture, a reconnect resumes from the bookmark. */
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
    if (relist !== undefined) return { ...base, bootstrap: opts.id === undefined, tailEvents: 0 };
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
            if (relist === undefined) streaming();
            continue;
          }
          const out = stepsOf(events);
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
        if (lostPlace && !canRelist) {
          throw new CosiError(err.kind, `${err.message} (this watch has no bootstrap to re-list from: watch with bootstrap to survive this)`, { cause: err });
        }
        if (!lostPlace && !RETRYABLE.has(err.kind)) throw err;
        // Backoff for everything but a first "cannot resume": the server answered, so it is back (a restarted cosid
        // says "too old" to the first reconnect that reaches it), and the re-list goes at once however many
        // attempts failed while it was away. A re-list that fails that way again waits, as any failure does.
        const base = Math.min(p.maxDelayMs, p.initialDelayMs * 2 ** Math.min(failures - 1, 52));
        const delay = lostPlace && !lastLostPlace ? 0 : Math.round(base * (1 - p.jitter * p.random()));
        lastLostPlace = lostPlace;
        if (failures > p.maxRetries || now + delay - failingSince > p.maxElapsedMs) {
          throw new CosiError(err.kind, `${err.message} (gave up after ${failures} failed attempt${failures === 1 ? '' : 's'} in ${now - failingSince} ms)`, { cause: err });
        }
        if (lostPlace) {
          bookmark = undefined;
          relist = new Map();
          setState('resyncing', err.message);
        } else {
          setState('reconnecting', err.message);
          // A re-list interrupted by a failure starts over from a fresh list.
          if (relist !== undefined) relist = new Map();
        }
        t.log?.debug('watch retrying', { endpoint: t.endpoint, type, attempt: failures, delayMs: delay, reason: err.message });
        if (delay > 0) await sleep(p.timers, delay, stop);
      }
    }
  } finally {
    setState('closed');
  }
}

/**
 * One running list-watch-resume: the options checked at once (a bad option throws here), stopped by the caller's
 * signal, the client's close, the watch's deadline (`timeoutMs`, over all reconnects) or close(); registered with
 * the client (as `owner`) so that disposing of the client closes it.
 */
export class Reflector {
  private readonly stop = new AbortController();
  private readonly source: AsyncGenerator<readonly Delta[], void, undefined>;
  private timedOut = false;
  private readonly detach: () => void;

  constructor(t: WatchTransport, private readonly type: string, opts: WatchOptions, owner?: Closable) {
    const policy = policyOf(opts.reconnect);
    // A resume replays nothing: the server would refuse tail_events with a bookmark, so refuse it here too.
    if (opts.fromBookmark !== undefined && (opts.tailEvents ?? 0) > 0) throw new CosiError('invalid-argument', 'tailEvents and fromBookmark cannot be combined');
    const timeoutMs = checkMs('timeoutMs', opts.timeoutMs, Infinity);
    const abort = () => this.stop.abort();
    opts.signal?.addEventListener('abort', abort);
    t.closed.addEventListener('abort', abort);
    if (opts.signal?.aborted === true || t.closed.aborted) abort();
    let deadlineTimer: unknown;
    if (Number.isFinite(timeoutMs)) {
      deadlineTimer = policy.timers.setTimeout(() => {
        this.timedOut = true;
        abort();
      }, timeoutMs);
    }
    const untrack = t.trackWatch(owner ?? this);
    let detached = false;
    this.detach = () => {
      if (detached) return;
      detached = true;
      opts.signal?.removeEventListener('abort', abort);
      t.closed.removeEventListener('abort', abort);
      if (deadlineTimer !== undefined) policy.timers.clearTimeout(deadlineTimer);
      untrack();
    };
    this.source = this.run(reflect(t, type, opts, policy, this.stop.signal), timeoutMs);
  }

  private async *run(steps: AsyncGenerator<readonly Delta[], void, undefined>, timeoutMs: number): AsyncGenerator<readonly Delta[], void, undefined> {
    try {
      yield* steps;
      if (this.timedOut) throw new CosiError('deadline-exceeded', `the watch of ${this.type} reached its deadline of ${timeoutMs} ms`);
    } finally {
      this.detach();
    }
  }

  /** The steps, a message's at a time; one consumer. */
  steps(): AsyncGenerator<readonly Delta[], void, undefined> {
    return this.source;
  }

  /** Ends it: the stream is cancelled, a pending retry given up, a pending pull resolves as done. */
  async close(): Promise<void> {
    this.stop.abort();
    // One never pulled has no running generator whose `finally` would let go of the listeners and timer.
    this.detach();
    await this.source.return(undefined);
  }
}
