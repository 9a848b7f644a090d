// Machine config -> StaticPod resources: creates, updates (only when changed) and destroys to match.
// Each pod is validated as a kubelet would; an invalid one is kept visible with its reason, never served.
import type { Logger } from '../../shared/log.js';
import type { Json } from '../../shared/wire.js';
import type { JsonObject, StaticPodEntry } from '../config/machine-config.js';
import { validateStaticPod } from '../config/pod-validation.js';
import { INVALID_LABEL, K8S_NAMESPACE, STATIC_POD_TYPE } from '../resources/k8s.js';
import { MAX_SPEC_DEPTH, specDepth, type ResourceInput, type ResourceStore } from '../store/store.js';
import { upsert } from '../store/upsert.js';

export const STATIC_POD_OWNER = 'k8s.StaticPodController';

export interface ReconcileResult {
  created: string[];
  updated: string[];
  destroyed: string[];
  invalid: { id: string; origin: string; message: string }[];
}

export function reconcileStaticPods(store: ResourceStore, pods: readonly StaticPodEntry[], log: Logger): ReconcileResult {
  const kind = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };
  const result: ReconcileResult = { created: [], updated: [], destroyed: [], invalid: [] };
  const wanted = new Set(pods.map((p) => p.id));
  for (const existing of store.list(kind)) {
    if (existing.metadata.owner === STATIC_POD_OWNER && !wanted.has(existing.metadata.id)) {
      store.destroy(existing.metadata, STATIC_POD_OWNER);
      result.destroyed.push(existing.metadata.id);
    }
  }
  for (const p of pods) {
    const problem = specDepth(p.pod) > MAX_SPEC_DEPTH ? { message: `invalid pod: nested deeper than ${MAX_SPEC_DEPTH} levels` } : validateStaticPod(p.pod);
    if (problem !== undefined) result.invalid.push({ id: p.id, origin: p.origin, message: problem.message });
    const labels: Record<string, string> = problem === undefined ? {} : { [INVALID_LABEL]: 'true' };
    const input: ResourceInput = { ...kind, id: p.id, spec: problem === undefined ? p.pod : invalidPodSpec(p.pod, problem.message), labels };
    const changed = upsert(store, input, STATIC_POD_OWNER);
    if (changed !== 'unchanged') {
      result[changed].push(p.id);
      // Logged when it changes, not on every reload: the resource keeps saying it.
      if (problem !== undefined) log.warn('invalid static pod: not served to the kubelet', { id: p.id, origin: p.origin, error: problem.message });
    }
  }
  if (result.created.length + result.updated.length + result.destroyed.length > 0) {
    log.info('static pods reconciled', { created: result.created, updated: result.updated, destroyed: result.destroyed });
  }
  return result;
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
