// What each write does to a resource, decided once for every backend: checks (owner, phase, version, finalizers,
// spec depth), the next version and times, and "nothing to write". The backends only commit the outcome.
import { isDeepStrictEqual } from 'node:util';
import { CosiError } from '../../shared/errors.js';
import { describePointer, type Metadata, type Pointer, type Resource } from '../../shared/resource.js';
import type { Json } from '../../shared/wire.js';
import { MAX_SPEC_DEPTH, specDepth, type ResourceInput, type UpdateOptions } from './store.js';

export type Mutation =
  | { readonly op: 'create'; readonly input: ResourceInput; readonly owner: string }
  | { readonly op: 'update'; readonly input: ResourceInput; readonly owner: string; readonly opts?: UpdateOptions | undefined }
  | { readonly op: 'teardown'; readonly pointer: Pointer; readonly owner: string }
  | { readonly op: 'add-finalizers'; readonly pointer: Pointer; readonly finalizers: readonly string[] }
  | { readonly op: 'remove-finalizers'; readonly pointer: Pointer; readonly finalizers: readonly string[] }
  | { readonly op: 'destroy'; readonly pointer: Pointer; readonly owner: string };

/** The next state to commit: a resource (create or put), 'destroy', or 'unchanged' (commit nothing). */
export type Outcome = { readonly put: Metadata; readonly spec: Json; readonly specJson: string } | 'destroy' | 'unchanged';

/**
 * The contract's writes, each as the Mutation it is. A backend implements write(): decide with mutate() on the state
 * it holds, then commit the outcome its own way.
 */
export abstract class MutatingStore {
  protected abstract write(p: Pointer, m: Mutation): Promise<Resource>;

  create(input: ResourceInput, owner: string): Promise<Resource> {
    return this.write(input, { op: 'create', input, owner });
  }

  update(input: ResourceInput, owner: string, opts?: UpdateOptions): Promise<Resource> {
    return this.write(input, { op: 'update', input, owner, opts });
  }

  async teardown(p: Pointer, owner: string): Promise<{ resource: Resource; destroyReady: boolean }> {
    const resource = await this.write(p, { op: 'teardown', pointer: p, owner });
    return { resource, destroyReady: resource.metadata.finalizers.length === 0 };
  }

  addFinalizers(p: Pointer, finalizers: readonly string[]): Promise<Resource> {
    return this.write(p, { op: 'add-finalizers', pointer: p, finalizers });
  }

  removeFinalizers(p: Pointer, finalizers: readonly string[]): Promise<Resource> {
    return this.write(p, { op: 'remove-finalizers', pointer: p, finalizers });
  }

  async destroy(p: Pointer, owner: string): Promise<void> {
    await this.write(p, { op: 'destroy', pointer: p, owner });
  }
}

/** Applies a mutation to the current state (undefined: absent). Throws the typed error the contract names. */
export function mutate(current: Resource | undefined, m: Mutation, now: Date, specJsonOf: (r: Resource) => string | undefined = () => undefined): Outcome {
  if (m.op === 'create') {
    if (current !== undefined) throw new CosiError('already-exists', `${describePointer(m.input)} already exists`);
    checkSpec(m.input);
    const put: Metadata = {
      namespace: m.input.namespace,
      type: m.input.type,
      id: m.input.id,
      version: 1,
      owner: m.owner,
      phase: 'running',
      created: now,
      updated: now,
      labels: { ...m.input.labels },
      annotations: { ...m.input.annotations },
      finalizers: [],
    };
    return { put, spec: m.input.spec, specJson: JSON.stringify(m.input.spec) };
  }
  const pointer = m.op === 'update' ? m.input : m.pointer;
  if (current === undefined) throw new CosiError('not-found', `${describePointer(pointer)} doesn't exist`);
  const md = current.metadata;
  const next = (changes: Partial<Metadata>, spec: Json = current.spec, specJson?: string): Outcome => ({
    put: { ...md, ...changes, version: md.version + 1, updated: now },
    spec,
    specJson: specJson ?? specJsonOf(current) ?? JSON.stringify(current.spec),
  });
  switch (m.op) {
    case 'update': {
      checkOwner(md, m.owner);
      const expectedPhase = m.opts?.expectedPhase ?? 'running';
      if (md.phase !== expectedPhase) throw new CosiError('phase-conflict', `${describePointer(md)} is ${md.phase}, not ${expectedPhase}`);
      if (m.opts?.expectedVersion !== undefined && m.opts.expectedVersion !== md.version) {
        throw new CosiError('version-conflict', `${describePointer(md)} is at version ${md.version}, not ${m.opts.expectedVersion}`);
      }
      checkSpec(m.input);
      const labels = m.input.labels ?? md.labels;
      const annotations = m.input.annotations ?? md.annotations;
      const specJson = JSON.stringify(m.input.spec);
      const sameSpec = specJson === specJsonOf(current) || isDeepStrictEqual(current.spec, m.input.spec);
      if (sameSpec && isDeepStrictEqual(md.labels, labels) && isDeepStrictEqual(md.annotations, annotations)) return 'unchanged';
      return next({ labels: { ...labels }, annotations: { ...annotations } }, m.input.spec, specJson);
    }
    case 'teardown':
      checkOwner(md, m.owner);
      return md.phase === 'tearingDown' ? 'unchanged' : next({ phase: 'tearingDown' });
    case 'add-finalizers': {
      const add = m.finalizers.filter((f, i) => !md.finalizers.includes(f) && m.finalizers.indexOf(f) === i);
      if (add.length === 0) return 'unchanged';
      if (md.phase === 'tearingDown') throw new CosiError('phase-conflict', `${describePointer(md)} is tearing down: no finalizer can be added`);
      return next({ finalizers: [...md.finalizers, ...add] });
    }
    case 'remove-finalizers': {
      const kept = md.finalizers.filter((f) => !m.finalizers.includes(f));
      return kept.length === md.finalizers.length ? 'unchanged' : next({ finalizers: kept });
    }
    case 'destroy':
      checkOwner(md, m.owner);
      if (md.finalizers.length > 0) {
        throw new CosiError('pending-finalizers', `${describePointer(md)} has pending finalizers: ${md.finalizers.join(', ')}`);
      }
      return 'destroy';
  }
}

function checkSpec(input: ResourceInput): void {
  if (specDepth(input.spec) > MAX_SPEC_DEPTH) {
    throw new CosiError('invalid-argument', `${describePointer(input)}: spec is nested deeper than ${MAX_SPEC_DEPTH} levels, which the API cannot encode`);
  }
}

function checkOwner(md: Metadata, owner: string): void {
  if (md.owner !== owner) {
    throw new CosiError('owner-conflict', `${describePointer(md)} is owned by ${JSON.stringify(md.owner)}, not ${JSON.stringify(owner)}`);
  }
}

const SPEC_JSON = Symbol('spec as JSON text');

/** The spec's JSON text a stored resource keeps, if it is one. */
export function storedSpecJson(r: Resource): string | undefined {
  return (r as { [SPEC_JSON]?: string })[SPEC_JSON];
}

/**
 * A stored resource keeps its spec as JSON text: a 2 KB PodStatus takes about 5 KB of heap as objects and 2 KB as
 * text, and history holds many versions. The spec is parsed (and frozen) when read; the parsed value is kept only
 * while a reader still holds it, so hot readers do not parse twice and cold versions cost only their text.
 */
export function storedResource(metadata: Metadata, specJson: string): Resource {
  const md = Object.freeze({
    ...metadata,
    labels: Object.freeze({ ...metadata.labels }),
    annotations: Object.freeze({ ...metadata.annotations }),
    finalizers: Object.freeze([...metadata.finalizers]),
  });
  let parsed: WeakRef<object> | undefined;
  const r = {} as Resource;
  Object.defineProperty(r, 'metadata', { value: md, enumerable: true });
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
