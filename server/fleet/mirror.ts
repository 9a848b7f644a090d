// A node's resource as the fleet stores it: format line `cosi-mirror/1 <token>` (the fence token of the owner that
// wrote it: for the fence test and debugging, never served), the node's metadata as JSON (its own version
// included: the etcd key's version restarts whenever the fleet's copy is rebuilt, and a per-node read must answer
// the node's number), the spec's JSON text. Encoded and decoded by the etcd codec (store/etcd/codec.ts), which adds
// the fleet id `<node>/<id>` and the node label; here the digest the fleet compares such values by. docs/design/fleet.md §2.
import { createHash } from 'node:crypto';

/**
 * What a stored value says of the resource, without the token: two writes of the same state by different owners
 * have the same digest, so a state sent again after a takeover is not written twice.
 */
export function mirrorDigest(value: string | Buffer): string {
  const text = typeof value === 'string' ? value : value.toString('utf8');
  return createHash('sha1').update(text.slice(text.indexOf('\n') + 1)).digest('base64').slice(0, 16);
}
