// A helper every controller needs, written once on top of the store contract.
import { isCosiError } from '../../shared/errors.js';
import type { ResourceInput, ResourceStore } from './store.js';

/**
 * Creates the resource, or updates it when it exists. 'unchanged' means the update changed nothing and the store
 * kept the version. Errors other than "not found" (an owner conflict, say) are thrown, not papered over by a create.
 */
export async function upsert(store: ResourceStore, input: ResourceInput, owner: string): Promise<'created' | 'updated' | 'unchanged'> {
  let before: number;
  try {
    before = (await store.get(input)).metadata.version;
  } catch (err) {
    if (!isCosiError(err, 'not-found')) throw err;
    try {
      await store.create(input, owner);
      return 'created';
    } catch (createErr) {
      // Another writer of a shared store (a second fleet replica starting on the same etcd) created it meanwhile.
      if (!isCosiError(createErr, 'already-exists')) throw createErr;
      before = (await store.get(input)).metadata.version;
    }
  }
  return (await store.update(input, owner)).metadata.version === before ? 'unchanged' : 'updated';
}
