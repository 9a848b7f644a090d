// When two states of a resource are the same to a consumer: the re-list diff of a watch and the informer's resync
// must agree on it, or one would report a change the other hides.
import type { CosiResource } from './resource.js';

/** Same version, owner, phase, spec, labels, annotations and finalizers (timestamps move only with a change). */
export function sameState(a: CosiResource, b: CosiResource): boolean {
  const ma = a.metadata;
  const mb = b.metadata;
  return (
    ma.version === mb.version &&
    ma.owner === mb.owner &&
    ma.phase === mb.phase &&
    a.yamlSpec === b.yamlSpec &&
    JSON.stringify(ma.labels) === JSON.stringify(mb.labels) &&
    JSON.stringify(ma.annotations) === JSON.stringify(mb.annotations) &&
    JSON.stringify(ma.finalizers) === JSON.stringify(mb.finalizers)
  );
}
