// etcd client failures as the store's typed errors (shared/errors.ts), in one place.
import { CosiError, isCosiError } from '../../../shared/errors.js';

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** An etcd client failure as the store's error: compaction is too-old, everything else means etcd is out of reach. */
export function asStoreError(err: unknown, endpoints: readonly string[]): CosiError {
  if (isCosiError(err)) return err;
  const text = errorText(err);
  // etcd cancels a watch whose start was compacted without saying why: etcd3 reports "Watcher canceled: ".
  if (/compacted/i.test(text) || /^Watcher canceled:\s*$/.test(text)) return new CosiError('too-old', `etcd no longer holds that revision (${text}); list again`, { cause: err });
  if (/permission denied|not capable|authentication/i.test(text)) return new CosiError('internal', `etcd refused the request: ${text}`, { cause: err });
  const where = endpoints.length > 0 ? ` at ${endpoints.join(',')}` : '';
  return new CosiError('unavailable', `etcd${where} is unreachable: ${text}`, { cause: err });
}
