// The etcd writer: decide (mutations.ts) on the state the writer knows, then commit only if the key is still in
// that state (compare-and-swap on its mod_revision, swap-batcher.ts); another writer in between: decide again on
// the state the failed swap read, and swap again.
import type { IKeyValue } from 'etcd3';
import { CosiError } from '../../../shared/errors.js';
import { describePointer, type Pointer, type Resource } from '../../../shared/resource.js';
import type { KindCache } from '../kind-cache.js';
import { mutate, storedResource, storedSpecJson, type Mutation } from '../mutations.js';
import { etcdRevisionOf, type EtcdBackend } from './backend.js';
import { encodeValue } from './codec.js';

/** More compare-and-swap rounds than this for one write means a writer storm: the write gives up (aborted). */
const MAX_CAS_ATTEMPTS = 64;

/** A key's state to decide on: its resource and mod_revision (both undefined: absent), and whether etcd said so. */
interface KeyState {
  readonly current: Resource | undefined;
  readonly modRevision: string | undefined;
  readonly authoritative: boolean;
}

/**
 * Decides and commits one write. The first attempt decides on the kind's watch cache, when it is open: the
 * compare-and-swap on the cached mod_revision proves the cache was current, so a write costs one round trip. A
 * failed swap reads the key in the same round trip, and the next attempt decides on that. A decision the cache
 * alone cannot be trusted with (an error, "unchanged") is made again on an authoritative read.
 */
export async function writeByCas(etcd: EtcdBackend, cached: KindCache | undefined, p: Pointer, m: Mutation): Promise<Resource> {
  const key = Buffer.from(etcd.keyOf(p));
  let state = cached === undefined ? undefined : cachedState(cached, p.id);
  for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
    state ??= stateOf(etcd, p, await etcd.read(p));
    let outcome: ReturnType<typeof mutate>;
    try {
      outcome = mutate(state.current, m, new Date(), storedSpecJson);
    } catch (err) {
      if (state.authoritative) throw err;
      state = undefined;
      continue;
    }
    if (outcome === 'unchanged') {
      if (state.authoritative) return state.current as Resource;
      state = undefined;
      continue;
    }
    const result = outcome === 'destroy' ? (state.current as Resource) : storedResource(outcome.put, outcome.specJson);
    const value = outcome === 'destroy' ? undefined : Buffer.from(encodeValue(outcome.put, outcome.specJson));
    // The first attempt may share a transaction with other writes; a retry goes alone.
    const swap = await etcd.swap({ key, expectedMod: state.modRevision, value }, result, attempt > 0);
    if (swap.swapped) return result;
    state = stateOf(etcd, p, swap.current);
  }
  throw new CosiError('aborted', `${describePointer(p)}: more than ${MAX_CAS_ATTEMPTS} concurrent writers in a row; try again`);
}

/** The resource as the kind's cache holds it, or undefined when the cache cannot say (unavailable, or half known). */
function cachedState(cached: KindCache, id: string): KeyState | undefined {
  if (cached.log.unavailable !== undefined) return undefined;
  const current = cached.log.current(id);
  const mod = cached.modRevision(id);
  if ((current === undefined) !== (mod === undefined)) return undefined;
  return { current, modRevision: mod === undefined ? undefined : String(etcdRevisionOf(mod)), authoritative: false };
}

function stateOf(etcd: EtcdBackend, p: Pointer, kv: IKeyValue | undefined): KeyState {
  return { current: kv === undefined ? undefined : etcd.decodeOrThrow(p, kv), modRevision: kv?.mod_revision, authoritative: true };
}
