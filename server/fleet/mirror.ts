// A node's resource as the fleet stores it: format line `cosi-mirror/1 <token>` (the fence token of the owner that
// wrote it: for the fence test and debugging, never served), the node's metadata as JSON (its own version
// included: the etcd key's version restarts whenever the fleet's copy is rebuilt, and a per-node read must answer
// the node's number), the spec's JSON text. Encoded and decoded by the etcd codec (store/etcd/codec.ts), which adds
// the fleet id `<node>/<id>` and the node label; here what the fleet needs of such values. docs/design/fleet.md §2.
import { createHash } from 'node:crypto';

export const MIRROR_FORMAT = 'cosi-mirror/1';
/** The label the fleet view puts on every mirrored resource: which node it came from. */
export const NODE_LABEL = 'cosi-pods.dev/node';

/**
 * What a stored value says of the resource, without the token: two writes of the same state by different owners
 * have the same digest, so a state sent again after a takeover is not written twice.
 */
export function mirrorDigest(value: string | Buffer): string {
  const text = typeof value === 'string' ? value : value.toString('utf8');
  return createHash('sha1').update(text.slice(text.indexOf('\n') + 1)).digest('base64').slice(0, 16);
}

/** The token a mirrored value was written under, or undefined for any other value. */
export function mirrorToken(value: string | Buffer): string | undefined {
  const text = typeof value === 'string' ? value : value.toString('utf8');
  const line = text.slice(0, Math.max(0, text.indexOf('\n')));
  return line.startsWith(`${MIRROR_FORMAT} `) ? line.slice(MIRROR_FORMAT.length + 1) : undefined;
}

/** The node a fleet id names (`<node>/<id>`), and the node's own id. */
export function splitFleetId(id: string): { node: string; id: string } | undefined {
  const slash = id.indexOf('/');
  return slash <= 0 ? undefined : { node: id.slice(0, slash), id: id.slice(slash + 1) };
}

/** The fleet view's labels: the node's own, with the node label set (it overrides a node's label of that name). */
export function fleetLabels(labels: Readonly<Record<string, string>>, node: string): Record<string, string> {
  return { ...labels, [NODE_LABEL]: node };
}
