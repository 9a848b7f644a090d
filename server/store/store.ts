// The store contract: the only way anything above reaches resources. Two sides:
// - ResourceStore: the authoritative reads and the writes, async because a backend may be remote (etcd.ts) or not
//   (memory.ts). Writers (controllers) use it.
// - ChangeFeed: each kind's current state and recent ordered changes, kept in memory and fed in revision order by
//   the backend (etcd: the watch cache over it, cacher.ts, one watch per kind; memory: its own per-kind logs,
//   MemoryFeed). The watch hub and the API's reads are served from it, synchronously, like the Kubernetes watch
//   cache.
// The contract has no multi-resource transaction: a writer of several resources plans its writes so that none fails
// for a reason it can foresee (see controllers/static-pods.ts).
import { isCosiError, type CosiError } from '../../shared/errors.js';
import type { Kind, Phase, Pointer, Resource } from '../../shared/resource.js';
import type { Json } from '../../shared/wire.js';

export type ChangeType = 'created' | 'updated' | 'destroyed';

/**
 * The deepest spec a store accepts. On the wire a JSON level is two protobuf messages (Struct, Value), and protobuf
 * implementations stop at 100 nested messages (protoc's default; protobufjs too): a deeper spec could be stored but
 * never encoded for a client. Kubernetes objects stay far below this.
 */
export const MAX_SPEC_DEPTH = 32;

/** The nesting depth of a JSON value, counted without recursion (a hostile value may be very deep). */
export function specDepth(value: Json): number {
  let max = 0;
  const stack: [Json, number][] = [[value, 0]];
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [v, depth] = next;
    if (v === null || typeof v !== 'object') continue;
    max = Math.max(max, depth + 1);
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return max;
}

/**
 * One committed change. Revisions grow with every change of the store, each change its own (memory: by one per
 * change; etcd: the cluster revision times 1024 plus the change's place in its transaction, etcd/backend.ts, so a
 * kind's changes are numbered with gaps).
 */
export interface Change {
  readonly revision: number;
  readonly type: ChangeType;
  /** The new state, or for 'destroyed' the last state. */
  readonly resource: Resource;
  /** The state before an update or destroy. */
  readonly old: Resource | undefined;
  /** Wall-clock time in ms this process learnt of the change (history retention by age). */
  readonly committedAt: number;
  /**
   * Set when the backend holds a value here that does not decode: `resource` then carries only the pointer. Watches
   * report it (ERRORED) instead of skipping it; the kind's state no longer holds the resource.
   */
  readonly error?: string;
}

/** What a writer supplies; versions, times and phase are the store's business. */
export interface ResourceInput extends Pointer {
  readonly spec: Json;
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface UpdateOptions {
  /** Refuse (version-conflict) unless the resource is at this version. */
  readonly expectedVersion?: number;
  /** Refuse (phase-conflict) unless the resource is in this phase (default 'running', as COSI's runtime). */
  readonly expectedPhase?: Phase;
}

export interface ChangeBatch {
  readonly changes: readonly Change[];
  /** The last revision examined; resume reading after it. */
  readonly through: number;
}

export interface ResourceStore {
  /** 'memory' or 'etcd': for logs and errors. */
  readonly backend: string;
  /** The watch side: every kind's state and recent changes, in memory. */
  readonly feed: ChangeFeed;

  /** The resource as the backend holds it now. Throws not-found, unavailable. */
  get(p: Pointer): Promise<Resource>;
  /** The kind's resources as the backend holds them now, sorted by ID. Throws unavailable. */
  list(k: Kind): Promise<Resource[]>;

  /** Throws already-exists, or invalid-argument for a spec nested deeper than MAX_SPEC_DEPTH. */
  create(input: ResourceInput, owner: string): Promise<Resource>;
  /**
   * Throws not-found, owner-conflict, version-conflict, phase-conflict, or invalid-argument (spec too deep). An
   * update that changes nothing keeps the version and commits nothing. Phase and finalizers are kept.
   */
  update(input: ResourceInput, owner: string, opts?: UpdateOptions): Promise<Resource>;
  /**
   * Moves the resource to phase 'tearingDown' (once; a second teardown changes nothing). `destroyReady`: no
   * finalizer is left, so destroy() will succeed. Throws not-found, owner-conflict.
   */
  teardown(p: Pointer, owner: string): Promise<{ resource: Resource; destroyReady: boolean }>;
  /** Adds finalizers it does not have yet (any writer may). Throws not-found, phase-conflict while tearing down. */
  addFinalizers(p: Pointer, finalizers: readonly string[]): Promise<Resource>;
  /** Removes the given finalizers it has (any writer may). Throws not-found. */
  removeFinalizers(p: Pointer, finalizers: readonly string[]): Promise<Resource>;
  /** Throws not-found, owner-conflict, or pending-finalizers while finalizers are left. */
  destroy(p: Pointer, owner: string): Promise<void>;

  /** Releases connections and watches; pending calls fail with unavailable. */
  close(): Promise<void>;
}

/** Listeners of a kind's history: called synchronously, in revision order; keep them cheap. */
export interface HistoryListener {
  /** A change was committed (and is now in history). */
  committed?(change: Change): void;
  /** History is about to forget this change (oldest first). */
  trimmed?(change: Change): void;
  /**
   * The history can no longer be trusted to continue in order: the backend is unreachable ('unavailable': watchers
   * reconnect and resume later) or its history was cut ('too-old': watchers list again).
   */
  lost?(error: CosiError): void;
}

/** One kind's current state and ordered recent changes, read synchronously. */
export interface KindHistory {
  readonly kind: Kind;
  /** Every change of the kind up to this revision is in history (or already forgotten). */
  readonly revision: number;
  /** readChanges(after) works for after >= this. */
  readonly oldestRevision: number;
  /** Changes held in history now. */
  readonly size: number;
  /** Resources held now. */
  readonly count: number;
  /** Why the kind cannot be read now (the backend is unreachable), or undefined. */
  readonly unavailable: CosiError | undefined;
  /** The resource now, or undefined. */
  current(id: string): Resource | undefined;
  /** The resources now, sorted by ID. */
  list(): Resource[];
  /** The resources as they were at `revision`, sorted by ID. Throws too-old, invalid-bookmark (future). */
  listAt(revision: number): Resource[];
  /** Changes after `after`, oldest first, at most `max`. Throws too-old, invalid-bookmark (future). */
  readChanges(after: number, max: number): ChangeBatch;
  /** How many changes held come after `revision` (a watcher's lag). */
  countAfter(revision: number): number;
  /** Returns the unsubscribe function. */
  subscribe(listener: HistoryListener): () => void;
}

export interface ChangeFeed {
  /**
   * Names this history in bookmarks: a bookmark of another history is refused as too old. Memory: one per process.
   * etcd: the cluster and the prefix, so a bookmark survives a restart and works on every cosid of that etcd.
   */
  readonly instance: string;
  /** The kind's history, opened when first asked (etcd: its watch). Throws unavailable. */
  history(kind: Kind): Promise<KindHistory>;
  /** The histories opened so far (metrics). */
  opened(): KindHistory[];
  /**
   * Makes a resume after `after` servable from the kind's history: a backend that still holds older history than
   * the kind's window fetches it (etcd); one in the future is waited for (etcd: until the kind's watch has delivered
   * it) or refused. Throws too-old, invalid-bookmark, unavailable.
   */
  reach(kind: Kind, after: number): Promise<void>;
  /** The kind's resources at `revision` (resuming an interrupted bootstrap), sorted by ID. Throws too-old. */
  listAt(kind: Kind, revision: number): Promise<Resource[]>;
}

/** The kind's history for a reader that needs it live: unavailable while the backend cannot be reached. */
export async function readableHistory(feed: ChangeFeed, kind: Kind): Promise<KindHistory> {
  const history = await feed.history(kind);
  if (history.unavailable !== undefined) throw history.unavailable;
  return history;
}

/** One resource by pointer, or undefined when it does not exist (without listing its whole kind). */
export async function getOrUndefined(store: ResourceStore, p: Pointer): Promise<Resource | undefined> {
  try {
    return await store.get(p);
  } catch (err) {
    if (isCosiError(err, 'not-found')) return undefined;
    throw err;
  }
}
