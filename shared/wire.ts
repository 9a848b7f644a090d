// The protobuf messages of the COSI State API, loaded from proto/ (as compiled at build time) and typed for TypeScript.
// The .proto files are the single source of truth; these interfaces mirror them (protobufjs camelCase).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
// The light build: no .proto parser, which nothing here needs once the descriptor is compiled.
import protobuf from 'protobufjs/light.js';

export interface WireTimestamp {
  seconds: number | string;
  nanos: number;
}

export interface WireMetadata {
  namespace: string;
  type: string;
  id: string;
  version: string;
  owner: string;
  phase: string;
  created?: WireTimestamp | null;
  updated?: WireTimestamp | null;
  finalizers: string[];
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface WireSpec {
  protoSpec: Uint8Array;
  yamlSpec: string;
}

export interface WireResource {
  metadata?: WireMetadata | null;
  spec?: WireSpec | null;
}

export enum LabelOp {
  EXISTS = 0,
  EQUAL = 1,
  NOT_EXISTS = 2,
  IN = 3,
  LT = 4,
  LTE = 5,
  LT_NUMERIC = 6,
  LTE_NUMERIC = 7,
}

export interface WireLabelTerm {
  key: string;
  op: LabelOp;
  value: string[];
  invert: boolean;
}

export interface WireLabelQuery {
  terms: WireLabelTerm[];
}

export interface WireIdQuery {
  regexp: string;
}

export interface WireGetRequest {
  namespace: string;
  type: string;
  id: string;
}

export interface WireListRequest {
  namespace: string;
  type: string;
  options?: { labelQuery: WireLabelQuery[]; idQuery?: WireIdQuery | null } | null;
}

export interface WireWatchOptions {
  bootstrapContents: boolean;
  tailEvents: number;
  labelQuery: WireLabelQuery[];
  idQuery?: WireIdQuery | null;
  aggregated: boolean;
  startFromBookmark?: Uint8Array | null;
  bootstrapBookmark: boolean;
}

export interface WireWatchRequest {
  namespace: string;
  type: string;
  /** Present: watch one resource; absent: the kind. */
  id?: string;
  options?: WireWatchOptions | null;
  apiVersion: number;
}

export enum EventType {
  CREATED = 0,
  UPDATED = 1,
  DESTROYED = 2,
  BOOTSTRAPPED = 3,
  ERRORED = 4,
  NOOP = 5,
}

export interface WireEvent {
  resource?: WireResource | null;
  eventType: EventType;
  old?: WireResource | null;
  error?: string | null;
  bookmark?: Uint8Array | null;
}

export interface WireWatchResponse {
  event: WireEvent[];
}

function findProtoDir(): string {
  // Works both from the TypeScript sources and from dist/: walk up to the package root.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(candidate, 'cosi', 'resource', 'state.proto'))) return candidate;
    dir = dirname(dir);
  }
  throw new Error('cannot find the proto/ directory of cosi-pods');
}

export const PROTO_DIR = findProtoDir();

/**
 * The messages as protobufjs's JSON descriptor, written at build time from proto/ by scripts/build-descriptor.mjs:
 * loading it costs a few milliseconds where parsing the .proto text at start cost about 50 (every cosictl run).
 */
function loadRoot(): protobuf.Root {
  const path = join(PROTO_DIR, '..', 'dist', 'cosi-descriptor.json');
  let json: protobuf.INamespace;
  try {
    json = JSON.parse(readFileSync(path, 'utf8')) as protobuf.INamespace;
  } catch (err) {
    throw new Error(`cannot read the protobuf descriptor ${path} (run npm run build): ${err instanceof Error ? err.message : String(err)}`);
  }
  const root = protobuf.Root.fromJSON(json);
  root.resolveAll();
  return root;
}

const root = loadRoot();

/** A typed view of one protobuf message type. */
export interface Codec<T> {
  readonly type: protobuf.Type;
  encode(value: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: Number, bytes: Buffer, defaults: true, arrays: true, objects: true };

function codec<T>(name: string): Codec<T> {
  const type = root.lookupType(name);
  return {
    type,
    encode: (value) => type.encode(value as unknown as Record<string, unknown>).finish(),
    // Presence of proto3 optional fields survives: toObject only sets them when present on the wire.
    decode: (bytes) => type.toObject(type.decode(bytes), TO_OBJECT) as unknown as T,
  };
}

export const wire = {
  resource: codec<WireResource>('cosi.resource.Resource'),
  getRequest: codec<WireGetRequest>('cosi.resource.GetRequest'),
  getResponse: codec<{ resource?: WireResource | null }>('cosi.resource.GetResponse'),
  listRequest: codec<WireListRequest>('cosi.resource.ListRequest'),
  listResponse: codec<{ resource?: WireResource | null }>('cosi.resource.ListResponse'),
  watchRequest: codec<WireWatchRequest>('cosi.resource.WatchRequest'),
  watchResponse: codec<WireWatchResponse>('cosi.resource.WatchResponse'),
  event: codec<WireEvent>('cosi.resource.Event'),
  namespaceSpec: codec<{ description: string }>('cosi.resource.meta.NamespaceSpec'),
  resourceDefinitionSpec: codec<{
    resourceType: string;
    displayType: string;
    defaultNamespace: string;
    aliases: string[];
    allAliases: string[];
    printColumns: { name: string; jsonPath: string }[];
    sensitivity: number;
  }>('cosi.resource.meta.ResourceDefinitionSpec'),
  staticPodSpec: codec<{ pod?: WireStruct | null }>('talos.resource.definitions.k8s.StaticPodSpec'),
  staticPodStatusSpec: codec<{ podStatus?: WireStruct | null }>('talos.resource.definitions.k8s.StaticPodStatusSpec'),
  staticPodServerStatusSpec: codec<{ url: string }>('talos.resource.definitions.k8s.StaticPodServerStatusSpec'),
  machineConfigSpec: codec<{ yamlMarshalled: Uint8Array }>('talos.resource.definitions.config.MachineConfigSpec'),
} as const;

/** machine.MachineService as Talos defines it (Containers and Logs). */
export interface WireContainerInfo {
  namespace: string;
  id: string;
  image: string;
  pid: number;
  status: string;
  podId: string;
  name: string;
  networkNamespace: string;
  internalId: string;
  uid: string;
  restartCount: number;
  staticPod: boolean;
}

export enum ContainerDriver {
  CONTAINERD = 0,
  CRI = 1,
}

export interface WireNodeMetadata {
  hostname: string;
  error: string;
}

export const machineWire = {
  containersRequest: codec<{ namespace: string; driver: ContainerDriver }>('machine.ContainersRequest'),
  containersResponse: codec<{ messages: { metadata?: WireNodeMetadata | null; containers: WireContainerInfo[] }[] }>('machine.ContainersResponse'),
  logsRequest: codec<{ namespace: string; id: string; driver: ContainerDriver; follow: boolean; tailLines: number }>('machine.LogsRequest'),
  data: codec<{ metadata?: WireNodeMetadata | null; bytes: Buffer }>('common.Data'),
  applyConfigurationRequest: codec<WireApplyConfigurationRequest>('machine.ApplyConfigurationRequest'),
  applyConfigurationResponse: codec<{ messages: WireApplyConfiguration[] }>('machine.ApplyConfigurationResponse'),
} as const;

/** machine.ApplyConfigurationRequest.Mode: REBOOT is the zero value, so a client always sets one (talosctl: AUTO). */
export enum ApplyMode {
  REBOOT = 0,
  AUTO = 1,
  NO_REBOOT = 2,
  STAGED = 3,
  TRY = 4,
}

export interface WireApplyConfigurationRequest {
  data: Uint8Array;
  mode: ApplyMode;
  dryRun: boolean;
  tryModeTimeout?: { seconds: number | string; nanos: number } | null;
}

export interface WireApplyConfiguration {
  metadata?: WireNodeMetadata | null;
  warnings: string[];
  mode: ApplyMode;
  modeDetails: string;
}

/**
 * Request metadata of ApplyConfiguration, ours (generic clients never send it): the `metadata.version` of the
 * MachineConfig `v1alpha1` resource the new config was made from. When the running config has moved on since, the
 * apply is refused (FAILED_PRECONDITION, kind version-conflict) and nothing changes.
 */
export const CONFIG_VERSION_METADATA_KEY = 'cosi-config-version';

/** Generic access to any request/response type of the State service (writes included). */
export function codecFor(fullName: string): Codec<Record<string, unknown>> {
  return codec<Record<string, unknown>>(fullName);
}

export const stateService = root.lookupService('cosi.resource.State');

// google.protobuf.Struct as protobufjs sees it.
export interface WireStruct {
  fields: Record<string, WireValue>;
}
export interface WireValue {
  nullValue?: number;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: WireStruct;
  listValue?: { values: WireValue[] };
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Converts a JSON value to google.protobuf.Struct form (non-objects are rejected by the caller's types). */
export function toStruct(obj: { [key: string]: Json }): WireStruct {
  const fields: Record<string, WireValue> = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toValue(v);
  return { fields };
}

function toValue(v: Json): WireValue {
  if (v === null) return { nullValue: 0 };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}

export function fromStruct(s: WireStruct | null | undefined): { [key: string]: Json } {
  const out: { [key: string]: Json } = {};
  for (const [k, v] of Object.entries(s?.fields ?? {})) out[k] = fromValue(v);
  return out;
}

function fromValue(v: WireValue): Json {
  if (v.structValue != null) return fromStruct(v.structValue);
  if (v.listValue != null) return (v.listValue.values ?? []).map(fromValue);
  if (v.stringValue != null) return v.stringValue;
  if (v.numberValue != null) return v.numberValue;
  if (v.boolValue != null) return v.boolValue;
  return null;
}

/**
 * Request metadata with which a client asks a Watch for lean events (`lean`; `full` or absent: the reference's
 * form). Ours, so generic COSI clients (talosctl) never send it and always get the full form.
 */
export const EVENT_FORM_METADATA_KEY = 'cosi-event-form';

/**
 * Request metadata with which a client asks a Watch for a NOOP event with a fresh bookmark whenever the watch has
 * been idle for the server's bookmark interval (`on`), and for a last one when the server ends the watch. Ours: the
 * reference sends NOOP only for bootstrap_bookmark, so generic clients get none they did not ask for.
 */
export const IDLE_BOOKMARKS_METADATA_KEY = 'cosi-idle-bookmarks';
