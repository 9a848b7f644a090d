// What the watch cache (cacher.ts) needs of an authoritative store that lives elsewhere: a kind read at one
// revision, a watch of the kind from a revision, the kind's older changes, and a fence. A backend decodes its own
// values and maps its own failures to the store's typed errors; it keeps no state of the kinds. etcd implements it
// (etcd/backend.ts); the memory store needs none of it, its logs being its storage (memory.ts).
import type { Kind, Resource } from '../../shared/resource.js';

/** A stored value that does not decode: watchers are told (ERRORED) instead of the change being skipped. */
export class Undecodable {
  /** Says which resource, at which revision, and why. */
  constructor(readonly message: string) {}
}

/** A resource as stored: decoded, or why not. */
export type StoredValue = Resource | Undecodable;

/** One event of a kind's watch, decoded by the backend. */
export type BackendEvent =
  | { readonly type: 'put'; readonly id: string; readonly revision: number; readonly value: StoredValue }
  | { readonly type: 'delete'; readonly id: string; readonly revision: number }
  /** Nothing of the kind changed up to this revision that is not already delivered (a fence came back). */
  | { readonly type: 'progress'; readonly revision: number };

/** A change from the backend's history, with the state before it as stored (undefined: there was none). */
export interface PastChange {
  readonly id: string;
  readonly revision: number;
  /** undefined: deleted. */
  readonly value: StoredValue | undefined;
  readonly old: StoredValue | undefined;
}

/** A kind at one revision: the resources that decode, and the revision each was last written at. */
export interface KindSnapshot {
  readonly revision: number;
  readonly items: readonly Resource[];
  readonly modRevisions: ReadonlyMap<string, number>;
}

/** Where a kind's watch delivers; called in revision order, one backend response at a time. */
export interface WatchSink {
  events(events: readonly BackendEvent[]): void;
  /** Every event up to this revision has been taken: a watch that reconnects resumes after it. */
  position(): number;
  /** The connection broke; the backend reconnects the watch by itself and resumes after position(). */
  disconnected(err: Error): void;
  /** The watch is connected again after disconnected(). */
  reconnected(): void;
  /** The backend ended the watch for good (its history was cut past the watch): the kind is read again. */
  ended(err: Error): void;
}

export interface BackendWatch {
  cancel(): void;
}

export interface Backend {
  /** 'etcd': for logs and errors. */
  readonly name: string;
  /** Names the history in bookmarks (ChangeFeed.instance). */
  readonly instance: string;
  /** The kind as the backend holds it now. Throws unavailable. */
  snapshot(kind: Kind): Promise<KindSnapshot>;
  /**
   * Watches the kind's changes after `after`; resolves once the backend has confirmed the watch. Events may reach
   * the sink before it resolves; the connection callbacks only after. Throws unavailable, too-old.
   */
  watch(kind: Kind, after: number, sink: WatchSink): Promise<BackendWatch>;
  /**
   * The kind's changes after `after`, oldest first, through a revision at least the backend's own when called.
   * Throws too-old (history compacted, or more than `max` changes), unavailable.
   */
  history(kind: Kind, after: number, max: number): Promise<{ readonly changes: readonly PastChange[]; readonly through: number }>;
  /** A revision at least the backend's current one, which the kind's watch delivers (as progress if nothing else). */
  fence(kind: Kind): Promise<number>;
  /** The kind's resources at `revision`, from the backend's own history. Throws too-old, unavailable. */
  listAt(kind: Kind, revision: number): Promise<Resource[]>;
}
