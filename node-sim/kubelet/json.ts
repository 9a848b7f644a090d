// Reading the loosely typed JSON of pods and manifests, for every part of the kubelet simulator.
import type { Json } from '../../shared/wire.js';

export type JsonObject = { [key: string]: Json };

export function obj(v: Json | undefined): JsonObject {
  return v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) ? v : {};
}

export function arr(v: Json | undefined): Json[] {
  return Array.isArray(v) ? v : [];
}

/** The string-valued entries of an object (labels, annotations). */
export function stringMap(o: JsonObject): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(o)) if (typeof v === 'string') out[k] = v;
  return out;
}
