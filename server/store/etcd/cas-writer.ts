// The etcd writer: read, decide (mutations.ts), then commit only if the key is still as read (compare-and-swap on
// its mod_revision); another writer in between: again.
import type { Etcd3, IKeyValue } from 'etcd3';
import { CosiError } from '../../../shared/errors.js';
import { describePointer, type Pointer, type Resource } from '../../../shared/resource.js';
import { mutate, storedResource, storedSpecJson, type Mutation } from '../mutations.js';
import { decodeOrThrow, encodeValue } from './codec.js';
import type { KindCache } from './kind-cache.js';

/** More compare-and-swap rounds than this for one write means a writer storm: the write gives up (aborted). */
const MAX_CAS_ATTEMPTS = 64;

/** What the writer needs of the store. */
export interface CasTarget {
  readonly client: Etcd3;
  keyOf(p: Pointer): string;
  /** Runs an etcd call; its failure becomes a CosiError. */
  call<T>(f: () => Promise<T>): Promise<T>;
}

/**
 * Decides and commits one write. The first attempt decides on the kind's watch cache, when it is open: the
 * compare-and-swap on the cached mod_revision proves the cache was current, so a write costs one round trip.
 * Anything but a successful swap (a conflict, an error, "unchanged") is decided again on an authoritative read, as
 * every later attempt is.
 */
export async function writeByCas(etcd: CasTarget, cached: KindCache | undefined, p: Pointer, m: Mutation): Promise<Resource> {
  const key = etcd.keyOf(p);
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
      const kv = await etcd.call(() => readKey(etcd.client, key));
      current = kv === undefined ? undefined : decodeOrThrow(p, kv);
      modRevision = kv?.mod_revision;
      outcome = mutate(current, m, new Date(), storedSpecJson);
      if (outcome === 'unchanged') return current as Resource;
    }
    // Absent: its create_revision is 0. Present: nobody has written it since it was read.
    const txn = modRevision === undefined ? etcd.client.if(key, 'Create', '==', 0) : etcd.client.if(key, 'Mod', '==', modRevision);
    let result: Resource;
    if (outcome === 'destroy') {
      txn.then(etcd.client.delete().key(key));
      result = current as Resource;
    } else {
      result = storedResource(outcome.put, outcome.specJson);
      txn.then(etcd.client.put(key).value(encodeValue(outcome.put, outcome.specJson)));
    }
    const res = await etcd.call(() => txn.commit());
    if (res.succeeded) return result;
  }
  throw new CosiError('aborted', `${describePointer(p)}: more than ${MAX_CAS_ATTEMPTS} concurrent writers in a row; try again`);
}

/** The key as etcd holds it now, or undefined. */
export async function readKey(client: Etcd3, key: string): Promise<IKeyValue | undefined> {
  const res = await client.get(key).exec();
  return res.kvs[0];
}
