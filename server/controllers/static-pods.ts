// Machine config -> StaticPod resources: creates, updates (only when changed) and destroys to match.
// Each pod is validated as a kubelet would; an invalid one is kept visible with its reason, never served.
// All or nothing: the whole change is planned and checked before the first write, and should a write still fail,
// the writes already made are undone; what the store then holds is said exactly (ReconcileError).
import { isCosiError } from '../../shared/errors.js';
import { namesForLog, namesForText, type Logger } from '../../shared/log.js';
import type { Pointer, Resource } from '../../shared/resource.js';
import type { Json } from '../../shared/wire.js';
import type { JsonObject, StaticPodEntry } from '../config/machine-config.js';
import { validateStaticPod } from '../config/pod-validation.js';
import { INVALID_LABEL, K8S_NAMESPACE, STATIC_POD_TYPE } from '../resources/k8s.js';
import { getOrUndefined, MAX_SPEC_DEPTH, specDepth, type ResourceInput, type ResourceStore } from '../store/store.js';

export const STATIC_POD_OWNER = 'k8s.StaticPodController';

export interface ReconcileResult {
  created: string[];
  updated: string[];
  destroyed: string[];
  invalid: { id: string; origin: string; message: string }[];
}

/** What a reconcile changed in the store, by StaticPod ID. */
export interface AppliedChanges {
  created: string[];
  updated: string[];
  destroyed: string[];
}

/**
 * A reconcile that was not applied. `applied` is what it left changed in the store: empty when the plan was refused
 * before any write, or when a write failed and every write before it was undone; otherwise (undoing failed too) the
 * changes that stayed, and the store holds neither the old set nor the new one.
 */
export class ReconcileError extends Error {
  override readonly name = 'ReconcileError';
  constructor(
    message: string,
    readonly applied: AppliedChanges,
    /** The ID of a failed write the store could not be asked about afterwards: it may have reached the store. */
    readonly uncertain?: string,
  ) {
    super(message);
  }

  /** True when the store holds the StaticPods it held before the reconcile (their content; undone writes move versions on). */
  get unchanged(): boolean {
    return this.uncertain === undefined && this.applied.created.length + this.applied.updated.length + this.applied.destroyed.length === 0;
  }
}

type Step =
  | { op: 'create'; id: string; input: ResourceInput; problem: string | undefined; origin: string }
  | { op: 'update'; id: string; input: ResourceInput; problem: string | undefined; origin: string; before: Resource }
  | { op: 'destroy'; id: string; before: Resource };

/** A step that changed the store, with what undoes it. */
interface Done {
  readonly step: Step;
  readonly undo: () => Promise<unknown>;
}

const KIND = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };

/**
 * Makes the StaticPods owned by this controller match `pods`. Throws ReconcileError when it cannot: the plan is
 * refused before any write (a StaticPod of that ID owned by someone else, a duplicate ID, a spec the store would
 * refuse), or a write fails unexpectedly and the writes before it are undone.
 */
export async function reconcileStaticPods(store: ResourceStore, pods: readonly StaticPodEntry[], log: Logger): Promise<ReconcileResult> {
  const steps = await plan(store, pods);
  const done: Done[] = [];
  const result: ReconcileResult = { created: [], updated: [], destroyed: [], invalid: [] };
  for (const step of steps) {
    if (step.op !== 'destroy' && step.problem !== undefined) result.invalid.push({ id: step.id, origin: step.origin, message: step.problem });
  }
  for (const step of steps) {
    try {
      const d = await apply(store, step);
      if (d !== undefined) done.push(d);
    } catch (err) {
      // The store went away at the first write, and nothing else was changed: the store's own error, so the caller
      // waits for the store and runs the reconcile again (which plans from what the store then holds, so a write
      // that landed after all is not made twice) instead of giving the config up.
      if (done.length === 0 && isCosiError(err, 'unavailable')) throw err;
      // A store may throw after committing (a listener failing): then the write is undone too.
      const partial = await tookEffect(store, step);
      throw await rollBack(step, err, partial !== undefined && partial !== 'unknown' ? [...done, partial] : done, partial === 'unknown');
    }
  }
  for (const { step } of done) {
    result[step.op === 'create' ? 'created' : step.op === 'update' ? 'updated' : 'destroyed'].push(step.id);
    // Logged when it changes, not on every reload: the resource keeps saying it.
    if (step.op !== 'destroy' && step.problem !== undefined) {
      log.warn('invalid static pod: not served to the kubelet', { id: step.id, origin: step.origin, error: step.problem });
    }
  }
  if (done.length > 0) log.info('static pods reconciled', { created: namesForLog(result.created), updated: namesForLog(result.updated), destroyed: namesForLog(result.destroyed) });
  return result;
}

/** Every write the reconcile needs, checked against what the store would refuse. Writes nothing. */
async function plan(store: ResourceStore, pods: readonly StaticPodEntry[]): Promise<Step[]> {
  const refuse = (message: string) => new ReconcileError(`${message}; no static pod was changed`, { created: [], updated: [], destroyed: [] });
  const wanted = new Set(pods.map((p) => p.id));
  // Destroys first, as watchers have always seen a pod move: its old ID goes, then the new one comes.
  const steps: Step[] = [];
  const stored = await store.list(KIND);
  const byId = new Map(stored.map((r) => [r.metadata.id, r]));
  for (const existing of stored) {
    if (existing.metadata.owner === STATIC_POD_OWNER && !wanted.has(existing.metadata.id)) {
      steps.push({ op: 'destroy', id: existing.metadata.id, before: existing });
    }
  }
  const seen = new Set<string>();
  for (const p of pods) {
    if (seen.has(p.id)) throw refuse(`${p.origin}: duplicate static pod ${p.id}`);
    seen.add(p.id);
    const problem = specDepth(p.pod) > MAX_SPEC_DEPTH ? `invalid pod: nested deeper than ${MAX_SPEC_DEPTH} levels` : validateStaticPod(p.pod)?.message;
    const labels: Record<string, string> = problem === undefined ? {} : { [INVALID_LABEL]: 'true' };
    const input: ResourceInput = { ...KIND, id: p.id, spec: problem === undefined ? p.pod : invalidPodSpec(p.pod, problem), labels };
    if (specDepth(input.spec) > MAX_SPEC_DEPTH) throw refuse(`${p.origin}: static pod ${p.id} is nested deeper than ${MAX_SPEC_DEPTH} levels`);
    const before = byId.get(p.id);
    if (before === undefined) {
      steps.push({ op: 'create', id: p.id, input, problem, origin: p.origin });
    } else if (before.metadata.owner !== STATIC_POD_OWNER) {
      throw refuse(`${p.origin}: static pod ${p.id} exists and is owned by ${JSON.stringify(before.metadata.owner)}, not ${JSON.stringify(STATIC_POD_OWNER)}`);
    } else {
      steps.push({ op: 'update', id: p.id, input, problem, origin: p.origin, before });
    }
  }
  return steps;
}

/** One write; what undoes it, or undefined when it changed nothing. */
async function apply(store: ResourceStore, step: Step): Promise<Done | undefined> {
  const pointer: Pointer = { ...KIND, id: step.id };
  switch (step.op) {
    case 'create':
      await store.create(step.input, STATIC_POD_OWNER);
      return { step, undo: () => store.destroy(pointer, STATIC_POD_OWNER) };
    case 'update': {
      const after = await store.update(step.input, STATIC_POD_OWNER);
      if (after.metadata.version === step.before.metadata.version) return undefined;
      return { step, undo: () => store.update(inputOf(step.before), STATIC_POD_OWNER) };
    }
    case 'destroy':
      await store.destroy(pointer, STATIC_POD_OWNER);
      return { step, undo: () => store.create(inputOf(step.before), STATIC_POD_OWNER) };
  }
}

/** For a write that threw: what undoes it if it reached the store all the same ('unknown': the store cannot tell). */
async function tookEffect(store: ResourceStore, step: Step): Promise<Done | undefined | 'unknown'> {
  const pointer: Pointer = { ...KIND, id: step.id };
  let now: Resource | undefined;
  try {
    now = await getOrUndefined(store, pointer);
  } catch {
    return 'unknown';
  }
  switch (step.op) {
    case 'create':
      return now === undefined ? undefined : { step, undo: () => store.destroy(pointer, STATIC_POD_OWNER) };
    case 'update':
      return now === undefined || now.metadata.version === step.before.metadata.version ? undefined : { step, undo: () => store.update(inputOf(step.before), STATIC_POD_OWNER) };
    case 'destroy':
      return now !== undefined ? undefined : { step, undo: () => store.create(inputOf(step.before), STATIC_POD_OWNER) };
  }
}

/** Undoes `done`, newest first, after `failed` threw `err`; the error to throw says what the store holds now. */
async function rollBack(failed: Step, err: unknown, done: Done[], failedUncertain: boolean): Promise<ReconcileError> {
  const failure = `cannot ${failed.op} static pod ${failed.id}: ${err instanceof Error ? err.message : String(err)}`;
  const why = failedUncertain ? `${failure} (and the store cannot tell whether that ${failed.op} took effect)` : failure;
  const uncertain = failedUncertain ? failed.id : undefined;
  const stayed: Done[] = [];
  const undoErrors: string[] = [];
  for (const d of [...done].reverse()) {
    try {
      await d.undo();
    } catch (undoErr) {
      stayed.unshift(d);
      undoErrors.push(`cannot undo the ${d.step.op} of ${d.step.id}: ${undoErr instanceof Error ? undoErr.message : String(undoErr)}`);
    }
  }
  const applied: AppliedChanges = { created: [], updated: [], destroyed: [] };
  for (const { step } of stayed) applied[step.op === 'create' ? 'created' : step.op === 'update' ? 'updated' : 'destroyed'].push(step.id);
  if (stayed.length === 0) {
    const undone = done.length > 0 ? `the ${done.length} change(s) made were undone` : failedUncertain ? 'no other static pod had been changed' : 'no static pod had been changed yet';
    return new ReconcileError(`${why}; ${undone}`, applied, uncertain);
  }
  const list = (['created', 'updated', 'destroyed'] as const).filter((k) => applied[k].length > 0).map((k) => `${k} ${namesForText(applied[k])}`);
  return new ReconcileError(`${why}; ${undoErrors.join('; ')}; the store keeps these changes of the new config: ${list.join('; ')}`, applied, uncertain);
}

/** A stored StaticPod as the input that writes it again. */
function inputOf(r: Resource): ResourceInput {
  return { ...KIND, id: r.metadata.id, spec: r.spec, labels: r.metadata.labels, annotations: r.metadata.annotations };
}

/** An invalid pod as stored: the pod with a Failed status saying why; only what names it if it is too deep to store. */
function invalidPodSpec(pod: JsonObject, message: string): JsonObject {
  const status = { phase: 'Failed', reason: 'InvalidPod', message };
  const whole = { ...pod, status };
  if (specDepth(whole) <= MAX_SPEC_DEPTH) return whole;
  const md = pod['metadata'];
  const named = md !== null && typeof md === 'object' && !Array.isArray(md) ? md : {};
  // Strings only: any of these could be the deep part.
  const text = (v: Json | undefined) => (typeof v === 'string' ? v : null);
  return {
    apiVersion: text(pod['apiVersion']),
    kind: text(pod['kind']),
    metadata: { name: text(named['name']), namespace: text(named['namespace']) },
    status,
  };
}
