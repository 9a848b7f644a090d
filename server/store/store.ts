// The store contract: the only way anything above reaches resources. One backend implements it today, in memory
// (memory.ts); an etcd backend is issue 12. The contract has no transaction: a writer of several resources plans
// its writes so that none fails for a reason it can foresee (see controllers/static-pods.ts).
import { isCosiError } from '../../shared/errors.js';
import type { Kind, Pointer, Resource } from '../../shared/resource.js';
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

/** One committed change. Revisions are global, start at 1 and grow by one per change. */
export interface Change {
  readonly revision: number;
  readonly type: ChangeType;
  /** The new state, or for 'destroyed' the last state. */
  readonly resource: Resource;
  /** The state before an update or destroy. */
  readonly old: Resource | undefined;
  /** Wall-clock commit time in ms (history retention by age). */
  readonly committedAt: number;
}

/** What a writer supplies; versions, times and phase are the store's business. */
export interface ResourceInput extends Pointer {
  readonly spec: Json;
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface ChangeBatch {
  readonly changes: readonly Change[];
  /** The last revision examined; resume reading after it. */
  readonly through: number;
}

export interface ResourceStore {
  /** Identifies this store's history: bookmarks from another instance are refused. */
  readonly instance: string;
  /** The revision of the last commit (0 when empty). */
  readonly revision: number;
  /** The oldest revision history can replay from: readChanges(after >= this) works. */
  readonly oldestRevision: number;

  /** Throws CosiError not-found. */
  get(p: Pointer): Resource;
  /** The current resources of a kind, sorted by ID. */
  list(k: Kind): Resource[];

  /** Throws already-exists, or invalid-argument for a spec nested deeper than MAX_SPEC_DEPTH. */
  create(input: ResourceInput, owner: string): Resource;
  /**
   * Throws not-found, owner-conflict, or invalid-argument for a spec nested deeper than MAX_SPEC_DEPTH. An update
   * that changes nothing keeps the version and commits nothing.
   */
  update(input: ResourceInput, owner: string): Resource;
  /** Throws not-found or owner-conflict. */
  destroy(p: Pointer, owner: string): void;

  /** The resources of a kind as they were at `revision`, sorted by ID. Throws too-old. */
  listAt(k: Kind, revision: number): Resource[];
  /** Changes after `after`, oldest first, at most `max` matching ones (all kinds when `kind` is undefined). Throws too-old. */
  readChanges(after: number, max: number, kind?: Kind): ChangeBatch;

  /** Called after every commit, synchronously; keep it cheap. Returns the unsubscribe function. */
  onCommit(listener: (change: Change) => void): () => void;
  /** Called for each change just before history forgets it (oldest first). Returns the unsubscribe function. */
  onTrim(listener: (change: Change) => void): () => void;
}

/** One resource by pointer, or undefined when it does not exist (without listing its whole kind). */
export function getOrUndefined(store: ResourceStore, p: Pointer): Resource | undefined {
  try {
    return store.get(p);
  } catch (err) {
    if (isCosiError(err, 'not-found')) return undefined;
    throw err;
  }
}
