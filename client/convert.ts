// Between the wire (shared/wire.ts) and the library's own types (resource.ts, client.ts). Internal: nothing here is
// exported by the package, so no wire type reaches its declarations.
import YAML from 'yaml';
import type * as Shared from '../shared/resource.js';
import { fromWireMetadata } from '../shared/resource.js';
import { EventType, LabelOp, type Json as WireJson, type WireEvent, type WireLabelQuery, type WireResource, type WireWatchRequest } from '../shared/wire.js';
import type { LabelOperator, LabelQuery } from './client.js';
import type { CosiResource, Json, Metadata, ResourceDefinition, WatchEvent, WatchEventType } from './resource.js';

// The library declares its model types itself (resource.ts) so that its declarations name nothing of shared/: these
// fail to compile the day the two copies drift apart.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const sameMetadata: Same<Metadata, Shared.Metadata> = true;
const sameJson: Same<Json, WireJson> = true;
void [sameMetadata, sameJson];

const OPS: Record<LabelOperator, LabelOp> = {
  exists: LabelOp.EXISTS,
  equal: LabelOp.EQUAL,
  in: LabelOp.IN,
  lt: LabelOp.LT,
  lte: LabelOp.LTE,
  ltNumeric: LabelOp.LT_NUMERIC,
  lteNumeric: LabelOp.LTE_NUMERIC,
};

const EVENT_TYPES: Record<EventType, WatchEventType> = {
  [EventType.CREATED]: 'created',
  [EventType.UPDATED]: 'updated',
  [EventType.DESTROYED]: 'destroyed',
  [EventType.BOOTSTRAPPED]: 'bootstrapped',
  [EventType.ERRORED]: 'errored',
  [EventType.NOOP]: 'noop',
};

export function toWireQueries(q: readonly LabelQuery[] | undefined): WireLabelQuery[] {
  return (q ?? []).map((query) => ({
    terms: query.terms.map((t) => ({ key: t.key, op: OPS[t.op], value: t.values ?? [], invert: t.invert ?? false })),
  }));
}

/** One Watch call as the watch core asks for it (watch.ts); toWireWatchRequest encodes it. */
export interface WatchRequest {
  readonly namespace: string;
  readonly type: string;
  readonly id?: string;
  readonly bootstrap: boolean;
  readonly tailEvents: number;
  readonly fromBookmark?: Uint8Array;
  readonly labelQuery?: readonly LabelQuery[];
  readonly idRegexp?: string;
  readonly aggregated: boolean;
  readonly bootstrapBookmark: boolean;
  /** Ask for lean events (request metadata, not a request field: generic clients never send it). */
  readonly lean?: boolean;
}

export function toWireWatchRequest(r: WatchRequest): WireWatchRequest {
  return {
    namespace: r.namespace,
    type: r.type,
    ...(r.id !== undefined ? { id: r.id } : {}),
    apiVersion: 1,
    options: {
      bootstrapContents: r.bootstrap,
      tailEvents: r.tailEvents,
      ...(r.fromBookmark !== undefined ? { startFromBookmark: r.fromBookmark } : {}),
      labelQuery: toWireQueries(r.labelQuery),
      idQuery: r.idRegexp !== undefined ? { regexp: r.idRegexp } : null,
      aggregated: r.aggregated,
      bootstrapBookmark: r.bootstrapBookmark,
    },
  };
}

export function fromWireResource(w: WireResource): CosiResource {
  const yamlSpec = w.spec?.yamlSpec ?? '';
  let spec: Json = null;
  try {
    spec = (YAML.parse(yamlSpec) ?? null) as Json;
  } catch {
    // A spec the server could not render as YAML stays visible as text.
    spec = yamlSpec;
  }
  return { metadata: fromWireMetadata(w.metadata), spec, yamlSpec, protoSpec: w.spec?.protoSpec ?? new Uint8Array() };
}

/** Events about no resource: the reference puts a placeholder in them, which the library's users never see. */
const WITHOUT_RESOURCE: ReadonlySet<WatchEventType> = new Set(['bootstrapped', 'noop', 'errored']);

export function toWatchEvent(e: WireEvent): WatchEvent {
  const type = EVENT_TYPES[e.eventType] ?? 'errored';
  return {
    type,
    ...(e.resource != null && !WITHOUT_RESOURCE.has(type) ? { resource: fromWireResource(e.resource) } : {}),
    ...(e.old != null ? { old: fromWireResource(e.old) } : {}),
    ...(e.bookmark != null ? { bookmark: new Uint8Array(e.bookmark) } : {}),
    ...(e.error != null ? { error: e.error } : {}),
  };
}

export function toDefinition(r: CosiResource): ResourceDefinition {
  const s = r.spec !== null && typeof r.spec === 'object' && !Array.isArray(r.spec) ? r.spec : {};
  const strings = (v: Json | undefined): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  const str = (v: Json | undefined): string => (typeof v === 'string' ? v : '');
  const columns = Array.isArray(s['printColumns']) ? s['printColumns'] : [];
  return {
    type: str(s['type']),
    displayType: str(s['displayType']),
    defaultNamespace: str(s['defaultNamespace']),
    aliases: strings(s['aliases']),
    allAliases: strings(s['allAliases']),
    printColumns: columns.flatMap((c) =>
      c !== null && typeof c === 'object' && !Array.isArray(c) ? [{ name: str(c['name']), jsonPath: str(c['jsonPath']) }] : [],
    ),
    sensitive: s['sensitivity'] === 1 || s['sensitivity'] === 'SENSITIVE',
  };
}
