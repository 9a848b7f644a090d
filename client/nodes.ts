// Many nodes: one connection and one stream per node, merged; a node that fails is reported, not fatal.
import type { Observable } from 'rxjs';
import { observableClass } from './rx.js';
import { CosiError } from '../shared/errors.js';
import type { ConnectionState, CosiClient, ListOptions, ReadOptions, WatchOptions } from './client.js';
import type { CosiResource, WatchEvent } from './resource.js';

export interface NodeTarget {
  /** The name results are labelled with (the NODE column). */
  readonly node: string;
  readonly client: CosiClient;
}

export type NodeResult<T> = { node: string; value: T; error?: undefined } | { node: string; value?: undefined; error: CosiError };

export type NodeWatchEvent =
  | { node: string; kind: 'event'; event: WatchEvent }
  | { node: string; kind: 'state'; state: ConnectionState; detail?: string }
  | { node: string; kind: 'failed'; error: CosiError };

function asCosiError(err: unknown): CosiError {
  return err instanceof CosiError ? err : new CosiError('internal', err instanceof Error ? err.message : String(err));
}

async function perNode<T>(targets: readonly NodeTarget[], f: (t: NodeTarget) => Promise<T>): Promise<NodeResult<T>[]> {
  return Promise.all(
    targets.map(async (t): Promise<NodeResult<T>> => {
      try {
        return { node: t.node, value: await f(t) };
      } catch (err) {
        return { node: t.node, error: asCosiError(err) };
      }
    }),
  );
}

/** Lists on every node at once; each node's answer or error, in the order of `targets`. */
export function listNodes(targets: readonly NodeTarget[], type: string, opts: ListOptions = {}): Promise<NodeResult<CosiResource[]>[]> {
  return perNode(targets, (t) => t.client.list(type, opts));
}

export function getNodes(targets: readonly NodeTarget[], type: string, id: string, opts: ReadOptions = {}): Promise<NodeResult<CosiResource>[]> {
  return perNode(targets, (t) => t.client.get(type, id, opts));
}

/**
 * Watches every node; events, connection states and failures are labelled with their node. A node that fails
 * for good ('failed') ends only its own stream; the merged Observable completes when every node is done.
 */
export function watchNodes(targets: readonly NodeTarget[], type: string, opts: WatchOptions = {}): Observable<NodeWatchEvent> {
  return new (observableClass())<NodeWatchEvent>((subscriber) => {
    let open = targets.length;
    const done = () => {
      if (--open === 0) subscriber.complete();
    };
    const reconnect = opts.reconnect ?? true;
    const subs = targets.map((t) =>
      t.client
        .watch(type, {
          ...opts,
          reconnect:
            reconnect === false
              ? false
              : { ...(typeof reconnect === 'object' ? reconnect : {}), onState: (state, detail) => subscriber.next({ node: t.node, kind: 'state', state, ...(detail !== undefined ? { detail } : {}) }) },
        })
        .subscribe({
          next: (event) => subscriber.next({ node: t.node, kind: 'event', event }),
          error: (err: unknown) => {
            subscriber.next({ node: t.node, kind: 'failed', error: asCosiError(err) });
            done();
          },
          complete: done,
        }),
    );
    if (targets.length === 0) subscriber.complete();
    return () => {
      for (const s of subs) s.unsubscribe();
    };
  });
}
