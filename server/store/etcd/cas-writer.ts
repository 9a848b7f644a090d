// The etcd writer: read, decide (mutations.ts), then commit only if the key is still as read (compare-and-swap on
// its mod_revision); another writer in between: again.
import { CosiError } from '../../../shared/errors.js';
import { describePointer, type Pointer, type Resource } from '../../../shared/resource.js';
import type { KindCache } from '../kind-cache.js';
import { mutate, storedResource, storedSpecJson, type Mutation } from '../mutations.js';
import type { EtcdBackend } from './backend.js';
import { encodeValue } from './codec.js';

/** More compare-and-swap rounds than this for one write means a writer storm: the write gives up (aborted). */
const MAX_CAS_ATTEMPTS = 64;

/**
 * Decides and commits one write. The first attempt decides on the kind's watch cache, when it is open: the
 * compare-and-swap on the cached mod_revision proves the cache was current, so a write costs one round trip.
 * Anything but a successful swap (a conflict, an error, "unchanged") is decided again on an authoritative read, as
 * every later attempt is.
 */
export async function writeByCas(etcd: EtcdBackend, cached: KindCache | undefined, p: Pointer, m: Mutation): Promise<Resource> {
  const key = etcd.keyOf(p);
  const { client } = etcd;
  for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
    let current: Resource | undefined;
    let modRevision: string | undefined;
    let outcome: ReturnType<typeof mutate>;
    if (attempt === 0 && cached !== undefined && cached.log.unavailable === undefined) {
      current = cached.log.current(p.id);
      const mod = cached.modRevision(p.id);
      if ((current === undefined) !== (mod === undefined)) continue;
      modRevision = mod === undefined ? undefined : String(mod);
      try {
        outcome = mutate(current, m, new Date(), storedSpecJson);
      } catch {
        continue;
      }
      if (outcome === 'unchanged') continue;
    } else {
      const kv = await etcd.read(p);
      current = kv === undefined ? undefined : etcd.decodeOrThrow(p, kv);
      modRevision = kv?.mod_revision;
      outcome = mutate(current, m, new Date(), storedSpecJson);
      if (outcome === 'unchanged') return current as Resource;
    }
    // Absent: its create_revision is 0. Present: nobody has written it since it was read.
    const txn = modRevision === undefined ? client.if(key, 'Create', '==', 0) : client.if(key, 'Mod', '==', modRevision);
    let result: Resource;
    if (outcome === 'destroy') {
      txn.then(client.delete().key(key));
      result = current as Resource;
    } else {
      result = storedResource(outcome.put, outcome.specJson);
      txn.then(client.put(key).value(encodeValue(outcome.put, outcome.specJson)));
    }
    const res = await etcd.call(() => txn.commit());
    if (res.succeeded) return result;
  }
  throw new CosiError('aborted', `${describePointer(p)}: more than ${MAX_CAS_ATTEMPTS} concurrent writers in a row; try again`);
}
