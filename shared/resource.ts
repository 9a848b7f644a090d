// The resource model both sides share: identity, metadata, and conversion to and from the wire.
import type { Json, WireMetadata, WireTimestamp } from './wire.js';

export type Phase = 'running' | 'tearingDown';

/** Namespace + type: what a List or a kind Watch addresses. */
export interface Kind {
  readonly namespace: string;
  readonly type: string;
}

/** Namespace + type + id: one resource. */
export interface Pointer extends Kind {
  readonly id: string;
}

export interface Metadata extends Pointer {
  readonly version: number;
  readonly owner: string;
  readonly phase: Phase;
  readonly created: Date;
  readonly updated: Date;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly finalizers: readonly string[];
}

/** A resource: metadata and a JSON spec (the spec's YAML form is what users see). */
export interface Resource {
  readonly metadata: Metadata;
  readonly spec: Json;
}

export function kindKey(k: Kind): string {
  return `${k.namespace}\u0000${k.type}`;
}

export function describePointer(p: Pointer): string {
  return `resource ${p.type}(${p.namespace}/${p.id})`;
}

export function toWireTimestamp(d: Date): WireTimestamp {
  const ms = d.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 };
}

export function fromWireTimestamp(t: WireTimestamp | null | undefined): Date {
  if (t == null) return new Date(0);
  return new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1_000_000));
}

export function toWireMetadata(m: Metadata): WireMetadata {
  return {
    namespace: m.namespace,
    type: m.type,
    id: m.id,
    version: String(m.version),
    owner: m.owner,
    phase: m.phase,
    created: toWireTimestamp(m.created),
    updated: toWireTimestamp(m.updated),
    finalizers: [...m.finalizers],
    labels: { ...m.labels },
    annotations: { ...m.annotations },
  };
}

export function fromWireMetadata(w: WireMetadata | null | undefined): Metadata {
  const version = Number(w?.version ?? '0');
  return {
    namespace: w?.namespace ?? '',
    type: w?.type ?? '',
    id: w?.id ?? '',
    version: Number.isFinite(version) ? version : 0,
    owner: w?.owner ?? '',
    phase: w?.phase === 'tearingDown' ? 'tearingDown' : 'running',
    created: fromWireTimestamp(w?.created),
    updated: fromWireTimestamp(w?.updated),
    labels: { ...(w?.labels ?? {}) },
    annotations: { ...(w?.annotations ?? {}) },
    finalizers: [...(w?.finalizers ?? [])],
  };
}
