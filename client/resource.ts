// Resources and events as the client library hands them out. Only plain types: the conversions from the wire live
// in convert.ts, so that nothing of the wire shows in the library's published declarations.

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type Phase = 'running' | 'tearingDown';

export interface Metadata {
  readonly namespace: string;
  readonly type: string;
  readonly id: string;
  readonly version: number;
  readonly owner: string;
  readonly phase: Phase;
  readonly created: Date;
  readonly updated: Date;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly finalizers: readonly string[];
}

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
   * than its history): the difference between what the consumer saw and a fresh list.
   */
  readonly resync?: boolean;
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

/** One row of `containers -k`: a pod sandbox (id `<ns>/<pod>`, podId === id) or a container in it. */
export interface ContainerInfo {
  /** `<ns>/<pod>` for a sandbox, `<ns>/<pod>:<container>:<short id>` for a container. */
  readonly id: string;
  /** `<ns>/<pod>` */
  readonly podId: string;
  /** The container's name (the sandbox's: its ID). */
  readonly name: string;
  readonly image: string;
  /** 0 when not running. */
  readonly pid: number;
  /** The runtime's state: SANDBOX_READY, CONTAINER_RUNNING, CONTAINER_EXITED, ... */
  readonly status: string;
  readonly restartCount: number;
  /** A static pod (the kubelet's file or HTTP source), not one from the API server. */
  readonly staticPod: boolean;
  /** The pod's UID. */
  readonly podUid: string;
  /** The runtime's full ID. */
  readonly runtimeId: string;
}
