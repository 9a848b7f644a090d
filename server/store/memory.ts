// The in-memory store: resources by kind, plus one ordered, bounded history of changes.
import { randomBytes } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { CosiError } from '../../shared/errors.js';
import { describePointer, kindKey, type Kind, type Metadata, type Pointer, type Resource } from '../../shared/resource.js';
import type { Json } from '../../shared/wire.js';
import { MAX_SPEC_DEPTH, specDepth, type Change, type ChangeBatch, type ResourceInput, type ResourceStore } from './store.js';

export interface MemoryStoreOptions {
  /** History keeps at least this many changes (default 16384)... */
  historySize?: number;
  /** ...and at least the changes of this long ago (default 75 s, as the Kubernetes watch cache)... */
  historyAgeMs?: number;
  /** ...but never more than this many (default 8 x historySize), so memory stays bounded under any write rate. */
  historyMaxSize?: number;
  /** Injectable clock for times and history age. */
  now?: () => number;
}

export class MemoryStore implements ResourceStore {
  readonly instance = randomBytes(8).toString('hex');
  private readonly kinds = new Map<string, Map<string, Resource>>();
  private readonly history: Change[] = [];
  private historyStart = 0;
  private rev = 0;
  private readonly listeners = new Set<(change: Change) => void>();
  private readonly trimListeners = new Set<(change: Change) => void>();
  private readonly historySize: number;
  private readonly historyAgeMs: number;
  private readonly historyMaxSize: number;
  private readonly now: () => number;

  constructor(opts: MemoryStoreOptions = {}) {
    this.historySize = Math.max(1, opts.historySize ?? 16384);
    this.historyAgeMs = opts.historyAgeMs ?? 75_000;
    this.historyMaxSize = Math.max(this.historySize, opts.historyMaxSize ?? this.historySize * 8);
    this.now = opts.now ?? Date.now;
  }

  get revision(): number {
    return this.rev;
  }

  get oldestRevision(): number {
    const first = this.history[this.historyStart];
    return first === undefined ? this.rev : first.revision - 1;
  }

  get(p: Pointer): Resource {
    const r = this.kinds.get(kindKey(p))?.get(p.id);
    if (r === undefined) throw new CosiError('not-found', `${describePointer(p)} doesn't exist`);
    return r;
  }

  list(k: Kind): Resource[] {
    return sortById([...(this.kinds.get(kindKey(k))?.values() ?? [])]);
  }

  create(input: ResourceInput, owner: string): Resource {
    const items = this.itemsOf(input);
    if (items.has(input.id)) throw new CosiError('already-exists', `${describePointer(input)} already exists`);
    checkSpec(input);
    const at = new Date(this.now());
    const r = storedResource(
      Object.freeze({
        namespace: input.namespace,
        type: input.type,
        id: input.id,
        version: 1,
        owner,
        phase: 'running',
        created: at,
        updated: at,
        labels: Object.freeze({ ...input.labels }),
        annotations: Object.freeze({ ...input.annotations }),
        finalizers: Object.freeze([]),
      }),
      JSON.stringify(input.spec),
    );
    items.set(input.id, r);
    this.commit('created', r, undefined);
    return r;
  }

  update(input: ResourceInput, owner: string): Resource {
    const items = this.itemsOf(input);
    const old = items.get(input.id);
    if (old === undefined) throw new CosiError('not-found', `${describePointer(input)} doesn't exist`);
    checkOwner(old, owner);
    checkSpec(input);
    const labels = input.labels ?? old.metadata.labels;
    const annotations = input.annotations ?? old.metadata.annotations;
    const specJson = JSON.stringify(input.spec);
    const sameSpec = specJson === specJsonOf(old) || isDeepStrictEqual(old.spec, input.spec);
    if (sameSpec && isDeepStrictEqual(old.metadata.labels, labels) && isDeepStrictEqual(old.metadata.annotations, annotations)) {
      return old;
    }
    const r = storedResource(
      Object.freeze({
        ...old.metadata,
        version: old.metadata.version + 1,
        updated: new Date(this.now()),
        labels: Object.freeze({ ...labels }),
        annotations: Object.freeze({ ...annotations }),
      }),
      specJson,
    );
    items.set(input.id, r);
    this.commit('updated', r, old);
    return r;
  }

  destroy(p: Pointer, owner: string): void {
    const items = this.kinds.get(kindKey(p));
    const old = items?.get(p.id);
    if (items === undefined || old === undefined) throw new CosiError('not-found', `${describePointer(p)} doesn't exist`);
    checkOwner(old, owner);
    items.delete(p.id);
    this.commit('destroyed', old, old);
  }

  listAt(k: Kind, revision: number): Resource[] {
    this.checkReplayable(revision);
    const state = new Map(this.kinds.get(kindKey(k)) ?? []);
    // Undo the kind's changes newer than `revision`, newest first.
    for (let i = this.history.length - 1; i >= this.historyStart; i--) {
      const c = this.history[i];
      if (c === undefined || c.revision <= revision) break;
      const md = c.resource.metadata;
      if (md.namespace !== k.namespace || md.type !== k.type) continue;
      if (c.type === 'created') state.delete(md.id);
      else if (c.old !== undefined) state.set(md.id, c.old);
    }
    return sortById([...state.values()]);
  }

  readChanges(after: number, max: number, kind?: Kind): ChangeBatch {
    this.checkReplayable(after);
    const changes: Change[] = [];
    let through = after;
    const first = this.history[this.historyStart];
    if (first === undefined) return { changes, through: this.rev };
    for (let i = this.historyStart + (after + 1 - first.revision); i < this.history.length; i++) {
      const c = this.history[i];
      if (c === undefined) break;
      if (kind === undefined || (c.resource.metadata.namespace === kind.namespace && c.resource.metadata.type === kind.type)) {
        if (changes.length >= max) break;
        changes.push(c);
      }
      through = c.revision;
    }
    return { changes, through };
  }

  onCommit(listener: (change: Change) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onTrim(listener: (change: Change) => void): () => void {
    this.trimListeners.add(listener);
    return () => this.trimListeners.delete(listener);
  }

  private checkReplayable(revision: number): void {
    if (revision > this.rev) throw new CosiError('invalid-bookmark', `revision ${revision} is in the future (current ${this.rev})`);
    if (revision < this.oldestRevision) {
      throw new CosiError('too-old', `revision ${revision} is too old: history starts after revision ${this.oldestRevision}; list again`);
    }
  }

  private itemsOf(k: Kind): Map<string, Resource> {
    const key = kindKey(k);
    let items = this.kinds.get(key);
    if (items === undefined) {
      items = new Map();
      this.kinds.set(key, items);
    }
    return items;
  }

  private trim(now: number): void {
    for (;;) {
      const kept = this.history.length - this.historyStart;
      const oldest = this.history[this.historyStart];
      if (oldest === undefined || kept <= this.historySize) return;
      if (kept <= this.historyMaxSize && now - oldest.committedAt < this.historyAgeMs) return;
      for (const l of this.trimListeners) l(oldest);
      this.historyStart++;
    }
  }

  private commit(type: Change['type'], resource: Resource, old: Resource | undefined): void {
    this.rev++;
    const change: Change = Object.freeze({ revision: this.rev, type, resource, old, committedAt: this.now() });
    this.history.push(change);
    this.trim(change.committedAt);
    // Compact the array now and then rather than shifting on every commit.
    if (this.historyStart > this.historyMaxSize) {
      this.history.splice(0, this.historyStart);
      this.historyStart = 0;
    }
    for (const l of this.listeners) l(change);
  }
}

function checkSpec(input: ResourceInput): void {
  if (specDepth(input.spec) > MAX_SPEC_DEPTH) {
    throw new CosiError('invalid-argument', `${describePointer(input)}: spec is nested deeper than ${MAX_SPEC_DEPTH} levels, which the API cannot encode`);
  }
}

function checkOwner(r: Resource, owner: string): void {
  if (r.metadata.owner !== owner) {
    throw new CosiError('owner-conflict', `${describePointer(r.metadata)} is owned by ${JSON.stringify(r.metadata.owner)}, not ${JSON.stringify(owner)}`);
  }
}

function sortById(items: Resource[]): Resource[] {
  return items.sort((a, b) => (a.metadata.id < b.metadata.id ? -1 : a.metadata.id > b.metadata.id ? 1 : 0));
}

const SPEC_JSON = Symbol('spec as JSON text');

function specJsonOf(r: Resource): string | undefined {
  return (r as { [SPEC_JSON]?: string })[SPEC_JSON];
}

/**
 * A stored resource keeps its spec as JSON text: a 2 KB PodStatus takes about 5 KB of heap as objects and 2 KB as
 * text, and history holds many versions. The spec is parsed (and frozen) when read; the parsed value is kept only
 * while a reader still holds it, so hot readers do not parse twice and cold versions cost only their text.
 */
function storedResource(metadata: Metadata, specJson: string): Resource {
  let parsed: WeakRef<object> | undefined;
  const r = {} as Resource;
  Object.defineProperty(r, 'metadata', { value: metadata, enumerable: true });
  Object.defineProperty(r, 'spec', {
    enumerable: true,
    get(): Json {
      const cached = parsed?.deref();
      if (cached !== undefined) return cached as Json;
      const value = deepFreeze(JSON.parse(specJson) as Json);
      if (value !== null && typeof value === 'object') parsed = new WeakRef(value);
      return value;
    },
  });
  Object.defineProperty(r, SPEC_JSON, { value: specJson });
  return Object.freeze(r);
}

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object') {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}
