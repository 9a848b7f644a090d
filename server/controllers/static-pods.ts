// Machine config -> StaticPod resources: creates, updates (only when changed) and destroys to match.
import { isCosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { StaticPodEntry } from '../config/machine-config.js';
import { K8S_NAMESPACE, STATIC_POD_TYPE } from '../resources/k8s.js';
import type { ResourceStore } from '../store/store.js';

export const STATIC_POD_OWNER = 'k8s.StaticPodController';

export interface ReconcileResult {
  created: string[];
  updated: string[];
  destroyed: string[];
}

export function reconcileStaticPods(store: ResourceStore, pods: readonly StaticPodEntry[], log: Logger): ReconcileResult {
  const kind = { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE };
  const result: ReconcileResult = { created: [], updated: [], destroyed: [] };
  const wanted = new Set(pods.map((p) => p.id));
  for (const existing of store.list(kind)) {
    if (existing.metadata.owner === STATIC_POD_OWNER && !wanted.has(existing.metadata.id)) {
      store.destroy(existing.metadata, STATIC_POD_OWNER);
      result.destroyed.push(existing.metadata.id);
    }
  }
  for (const p of pods) {
    const input = { ...kind, id: p.id, spec: p.pod };
    try {
      const before = store.get(input).metadata.version;
      if (store.update(input, STATIC_POD_OWNER).metadata.version !== before) result.updated.push(p.id);
    } catch (err) {
      if (!isCosiError(err, 'not-found')) throw err;
      store.create(input, STATIC_POD_OWNER);
      result.created.push(p.id);
    }
  }
  if (result.created.length + result.updated.length + result.destroyed.length > 0) log.info('static pods reconciled', { ...result });
  return result;
}
