// A watch that survives failures: reconnect with backoff, resume from the last bookmark, and when the server
// cannot resume ("too old", a restart), list again and emit only the difference. The subscriber's view
// converges with no gap and no duplicate.
import type { Observable } from 'rxjs';
import { rxjs } from './rx.js';
import { CosiError } from '../shared/errors.js';
import type { CosiClient, WatchOptions } from './client.js';
import { toWireQueries } from './client.js';
import type { CosiResource, WatchEvent } from './resource.js';

export type ConnectionState = 'connecting' | 'streaming' | 'reconnecting' | 'resyncing' | 'closed';

export interface ReconnectOptions {
  /** First delay after a failure (default 1 s); doubles per failed attempt... */
  initialDelayMs?: number;
  /** ...up to this (default 30 s). */
  maxDelayMs?: number;
  /** Told of every change of connection state (with the reason for reconnecting/resyncing). */
  onState?: (state: ConnectionState, detail?: string) => void;
}

// Failures worth retrying: the server or the network went away, or asked us to come back later.
const RETRYABLE = new Set(['unavailable', 'cancelled', 'deadline-exceeded', 'internal', 'resource-exhausted', 'unauthenticated']);

export function resilientWatch(client: CosiClient, type: string, opts: WatchOptions): Observable<WatchEvent> {
  const reconnect = opts.reconnect ?? true;
  const ro: ReconnectOptions = typeof reconnect === 'object' ? reconnect : {};
  const initialDelay = ro.initialDelayMs ?? 1000;
  const maxDelay = ro.maxDelayMs ?? 30_000;
  // Only a watch that starts from a full picture (bootstrap, or one resource) can be re-listed and diffed.
  const tracksView = opts.bootstrap === true || opts.id !== undefined;

  return new (rxjs().Observable)<WatchEvent>((subscriber) => {
    let closed = false;
    let current: { cancel(): void } | undefined;
    let timer: NodeJS.Timeout | undefined;
    let delay = initialDelay;
    let bookmark: Uint8Array | undefined;
    let bootstrapped = false;
    let state: ConnectionState | undefined;
    const view = new Map<string, CosiResource>();
    // While resyncing: the fresh picture being collected, emitted as a difference once complete.
    let resync: Map<string, CosiResource> | undefined;

    const setState = (s: ConnectionState, detail?: string) => {
      if (s === state && detail === undefined) return;
      state = s;
      ro.onState?.(s, detail);
    };

    const emit = (e: WatchEvent) => {
      if (tracksView && e.resource !== undefined) {
        if (e.type === 'destroyed') view.delete(e.resource.metadata.id);
        else if (e.type === 'created' || e.type === 'updated') view.set(e.resource.metadata.id, e.resource);
      }
      if (e.type === 'bootstrapped') bootstrapped = true;
      subscriber.next(e);
    };

    const finishResync = (fresh: Map<string, CosiResource>) => {
      resync = undefined;
      for (const [id, old] of [...view]) if (!fresh.has(id)) emit({ type: 'destroyed', resource: old, resync: true });
      for (const [id, r] of fresh) {
        const old = view.get(id);
        if (old === undefined) emit({ type: 'created', resource: r, resync: true });
        else if (!same(old, r)) emit({ type: 'updated', resource: r, old, resync: true });
      }
      if (opts.id === undefined && !bootstrapped) emit({ type: 'bootstrapped', resync: true });
    };

    const onReady = () => {
      delay = initialDelay;
      if (resync === undefined) setState('streaming');
    };

    const onEvents = (events: WatchEvent[]) => {
      for (const e of events) {
        if (e.bookmark !== undefined) bookmark = e.bookmark;
        if (resync !== undefined) {
          // Collect the fresh picture: a kind's bootstrap up to BOOTSTRAPPED, or a single resource's first event.
          if (e.type === 'created' && e.resource !== undefined) resync.set(e.resource.metadata.id, e.resource);
          if (e.type === 'bootstrapped' || (opts.id !== undefined && (e.type === 'created' || e.type === 'destroyed'))) {
            finishResync(resync);
            setState('streaming');
          }
          continue;
        }
        // A server-side "fell behind" is handled below (resync); it is not the subscriber's business.
        if (e.type === 'errored' && reconnect !== false) continue;
        emit(e);
      }
    };

    const onError = (err: CosiError) => {
      current = undefined;
      if (closed) return;
      const lostPlace = err.kind === 'too-old' || err.kind === 'invalid-bookmark';
      if (reconnect === false) return subscriber.error(err);
      if (lostPlace) {
        if (!tracksView) {
          return subscriber.error(new CosiError('too-old', `${err.message} (this watch has no bootstrap to re-list from: watch with bootstrap to survive this)`));
        }
        bookmark = undefined;
        resync = new Map();
        setState('resyncing', err.message);
        return start();
      }
      if (!RETRYABLE.has(err.kind)) return subscriber.error(err);
      setState('reconnecting', err.message);
      // A resync interrupted by a failure starts over from a fresh list.
      if (resync !== undefined) resync = new Map();
      timer = setTimeout(start, delay);
      delay = Math.min(delay * 2, maxDelay);
    };

    const start = () => {
      if (closed) return;
      if (state === undefined) setState('connecting');
      client.resolveType(type).then(
        (def) => {
          if (closed) return;
          // A resync starts from a fresh picture; a reconnect resumes from the last bookmark; the first
          // attempt is what the caller asked for.
          const options =
            resync !== undefined
              ? { bootstrapContents: opts.id === undefined, tailEvents: 0 }
              : bookmark !== undefined
                ? { bootstrapContents: false, tailEvents: 0, startFromBookmark: bookmark }
                : {
                    bootstrapContents: opts.bootstrap ?? false,
                    tailEvents: opts.tailEvents ?? 0,
                    ...(opts.fromBookmark !== undefined ? { startFromBookmark: opts.fromBookmark } : {}),
                  };
          const req = {
            namespace: opts.namespace ?? def.defaultNamespace,
            type: def.type,
            ...(opts.id !== undefined ? { id: opts.id } : {}),
            apiVersion: 1,
            options: {
              ...options,
              labelQuery: toWireQueries(opts.labelQuery),
              idQuery: opts.idRegexp !== undefined ? { regexp: opts.idRegexp } : null,
              aggregated: opts.aggregated ?? false,
              bootstrapBookmark: opts.bootstrapBookmark ?? false,
            },
          };
          current = client.openWatch(req, { ready: onReady, events: onEvents, error: onError, end: () => subscriber.complete() });
        },
        (err: unknown) => onError(err instanceof CosiError ? err : new CosiError('unavailable', String(err))),
      );
    };

    start();
    return () => {
      closed = true;
      clearTimeout(timer);
      current?.cancel();
      setState('closed');
    };
  });
}

function same(a: CosiResource, b: CosiResource): boolean {
  const ma = a.metadata;
  const mb = b.metadata;
  return (
    ma.version === mb.version &&
    ma.owner === mb.owner &&
    ma.phase === mb.phase &&
    a.yamlSpec === b.yamlSpec &&
    JSON.stringify(ma.labels) === JSON.stringify(mb.labels) &&
    JSON.stringify(ma.annotations) === JSON.stringify(mb.annotations)
  );
}
