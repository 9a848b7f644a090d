// Resources and events as the client library hands them out.
import YAML from 'yaml';
import { fromWireMetadata, type Metadata } from '../shared/resource.js';
import type { Json, WireResource } from '../shared/wire.js';

export interface CosiResource {
  readonly metadata: Metadata;
  /** The spec parsed from its YAML form. */
  readonly spec: Json;
  /** The spec as the server rendered it (what `-o yaml` prints). */
  readonly yamlSpec: string;
  /** The type-specific protobuf encoding of the spec. */
  readonly protoSpec: Uint8Array;
}

export type WatchEventType = 'created' | 'updated' | 'destroyed' | 'bootstrapped' | 'errored' | 'noop';

export interface WatchEvent {
  readonly type: WatchEventType;
  /** The resource (for destroyed: its last state). Absent on bootstrapped, errored and noop events. */
  readonly resource?: CosiResource;
  readonly old?: CosiResource;
  /** Pass as `fromBookmark` to resume right after this event. */
  readonly bookmark?: Uint8Array;
  readonly error?: string;
  /**
   * Set on events the client made up after the server lost its place (a restart, or a resume point older
   * than its history): the difference between what the subscriber saw and a fresh list.
   */
  readonly resync?: boolean;
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

/** A resource definition as the client sees it (from ResourceDefinitions.meta.cosi.dev). */
export interface ResourceDefinition {
  readonly type: string;
  readonly displayType: string;
  readonly defaultNamespace: string;
  readonly aliases: readonly string[];
  readonly allAliases: readonly string[];
  readonly printColumns: readonly { name: string; jsonPath: string }[];
  readonly sensitive: boolean;
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
