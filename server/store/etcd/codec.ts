// How a resource is held in etcd: its key (`<prefix><namespace>/<type>/<id>`, segments escaped) and its value (a
// format line, the metadata as JSON, the spec's JSON text). The key's etcd version is the resource's version, except
// in a fleet's copy of a node's resource (fleet/mirror.ts: `cosi-mirror/1`), which keeps the node's version.
import type { IKeyValue } from 'etcd3';
import type { Kind, Metadata, Pointer, Resource } from '../../../shared/resource.js';
import type { Json } from '../../../shared/wire.js';
import { storedResource } from '../mutations.js';
import { errorText } from './errors.js';

/** First line of a fleet's copy of a node's resource (server/fleet/mirror.ts), then the owner's fence token. */
export const MIRROR_FORMAT = 'cosi-mirror/1';
/** The label the fleet view puts on every mirrored resource: which node it came from. */
export const NODE_LABEL = 'cosi-pods.dev/node';

/** The node a fleet id names (`<node>/<id>`), and the node's own id. */
export function splitFleetId(id: string): { node: string; id: string } | undefined {
  const slash = id.indexOf('/');
  return slash <= 0 ? undefined : { node: id.slice(0, slash), id: id.slice(slash + 1) };
}

/** The fleet view's labels: the node's own, with the node label set (it overrides a node's label of that name). */
function fleetLabels(labels: Readonly<Record<string, string>>, node: string): Record<string, string> {
  return { ...labels, [NODE_LABEL]: node };
}

/** First line of a stored value: its format. The metadata line and the spec's JSON text follow. */
const FORMAT = 'cosi-resource/1';

/** The key prefix of a kind under the store's prefix: a kind's watch and list cover exactly its keys. */
export function kindPrefixOf(prefix: string, k: Kind): string {
  return `${prefix}${escapeSegment(k.namespace)}/${escapeSegment(k.type)}/`;
}

/** The metadata line's fields (namespace, type and id are in the key; the version is the key's, or mirrored). */
function metaOf(md: Omit<Metadata, 'namespace' | 'type' | 'id' | 'version'>): Record<string, unknown> {
  return {
    owner: md.owner,
    phase: md.phase,
    created: md.created.getTime(),
    updated: md.updated.getTime(),
    labels: md.labels,
    annotations: md.annotations,
    finalizers: md.finalizers,
  };
}

export function encodeValue(md: Metadata, specJson: string): string {
  // JSON text never holds a raw newline, so the three parts split unambiguously.
  return `${FORMAT}\n${JSON.stringify(metaOf(md))}\n${specJson}`;
}

/**
 * A node's resource as the fleet stores it (fleet/mirror.ts): the format line names the fence token it was written
 * under, and the metadata keeps the node's own version.
 */
export function encodeMirrored(md: Omit<Metadata, 'namespace' | 'type' | 'id'>, specJson: string, token: string): string {
  return `${MIRROR_FORMAT} ${token}\n${JSON.stringify({ version: md.version, ...metaOf(md) })}\n${specJson}`;
}

/** The resource a key holds, or why it does not decode. */
export function decodeValue(p: Pointer, kv: IKeyValue): Resource | string {
  const text = kv.value.toString('utf8');
  const first = text.indexOf('\n');
  const second = first < 0 ? -1 : text.indexOf('\n', first + 1);
  const format = first < 0 ? '' : text.slice(0, first);
  const mirrored = format.startsWith(`${MIRROR_FORMAT} `);
  if (second < 0 || (format !== FORMAT && !mirrored)) return `not a ${FORMAT} value`;
  let meta: unknown;
  const specJson = text.slice(second + 1);
  try {
    meta = JSON.parse(text.slice(first + 1, second));
    JSON.parse(specJson) as Json;
  } catch (err) {
    return `invalid JSON: ${errorText(err)}`;
  }
  if (meta === null || typeof meta !== 'object') return 'metadata is not an object';
  const m = meta as Record<string, unknown>;
  const strings = (v: unknown): v is Record<string, string> => v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
  const finalizers = m['finalizers'];
  if (
    typeof m['owner'] !== 'string' ||
    (m['phase'] !== 'running' && m['phase'] !== 'tearingDown') ||
    typeof m['created'] !== 'number' ||
    typeof m['updated'] !== 'number' ||
    !strings(m['labels']) ||
    !strings(m['annotations']) ||
    !Array.isArray(finalizers) ||
    !finalizers.every((f) => typeof f === 'string')
  ) {
    return 'metadata fields are missing or of the wrong type';
  }
  let version = Number(kv.version);
  let labels = m['labels'];
  if (mirrored) {
    const fleetId = splitFleetId(p.id);
    if (typeof m['version'] !== 'number' || fleetId === undefined) return 'a mirrored value needs a version and a key <node>/<id>';
    version = m['version'];
    labels = fleetLabels(labels, fleetId.node);
  }
  const md: Metadata = {
    namespace: p.namespace,
    type: p.type,
    id: p.id,
    version,
    owner: m['owner'],
    phase: m['phase'],
    created: new Date(m['created']),
    updated: new Date(m['updated']),
    labels,
    annotations: m['annotations'],
    finalizers: finalizers as string[],
  };
  return storedResource(md, specJson);
}

/** Namespaces and types may not hold "/" or "%" in a key segment: escaped, so two kinds never share a prefix. */
function escapeSegment(s: string): string {
  return s.replace(/%/g, '%25').replace(/\//g, '%2F');
}
