// Reads a Talos-style multi-document machine config: the v1alpha1 document's machine.pods.
import YAML from 'yaml';
import type { Json } from '../../shared/wire.js';

export interface StaticPodEntry {
  /** `<metadata.namespace or default>-<metadata.name>`, as Talos forms it. */
  readonly id: string;
  readonly pod: { [key: string]: Json };
}

export interface MachineConfig {
  readonly pods: readonly StaticPodEntry[];
  readonly warnings: readonly string[];
}

export class MachineConfigError extends Error {
  override readonly name = 'MachineConfigError';
}

// A YAML bomb (alias expansion) or a huge file must not take the process down.
const MAX_ALIAS_COUNT = 100;
const MAX_CONFIG_BYTES = 4 << 20;

export function parseMachineConfig(text: string, source: string): MachineConfig {
  if (text.length > MAX_CONFIG_BYTES) throw new MachineConfigError(`${source}: machine config is larger than ${MAX_CONFIG_BYTES} bytes`);
  const lineCounter = new YAML.LineCounter();
  const docs = YAML.parseAllDocuments(text, { lineCounter, uniqueKeys: true });
  if (!Array.isArray(docs)) throw new MachineConfigError(`${source}: not a YAML document stream`);
  const warnings: string[] = [];
  let machine: unknown;
  let seenV1alpha1 = false;
  for (const doc of docs) {
    const first = doc.errors[0];
    if (first !== undefined) {
      const pos = first.linePos?.[0];
      throw new MachineConfigError(`${source}:${pos?.line ?? '?'}:${pos?.col ?? '?'}: ${first.message.split('\n')[0] ?? first.code}`);
    }
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch (err) {
      throw new MachineConfigError(`${source}: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (value === null || value === undefined) continue;
    if (!isObject(value)) throw new MachineConfigError(`${source}: each document must be a mapping`);
    if (value['version'] === 'v1alpha1' || ('machine' in value && !('kind' in value))) {
      if (seenV1alpha1) throw new MachineConfigError(`${source}: more than one v1alpha1 document`);
      seenV1alpha1 = true;
      machine = value['machine'];
    } else {
      warnings.push(`${source}: ignoring document ${JSON.stringify(value['kind'] ?? value['version'] ?? 'without kind')}`);
    }
  }
  if (!seenV1alpha1) throw new MachineConfigError(`${source}: no v1alpha1 machine config document (version: v1alpha1, machine: ...)`);
  if (machine === undefined || machine === null) return { pods: [], warnings };
  if (!isObject(machine)) throw new MachineConfigError(`${source}: machine must be a mapping`);
  const pods = machine['pods'];
  if (pods === undefined || pods === null) return { pods: [], warnings };
  if (!Array.isArray(pods)) throw new MachineConfigError(`${source}: machine.pods must be a list of Pod objects`);
  const entries: StaticPodEntry[] = [];
  const seen = new Set<string>();
  pods.forEach((pod: unknown, i: number) => {
    const where = `${source}: machine.pods[${i}]`;
    if (!isObject(pod)) throw new MachineConfigError(`${where}: must be a Pod object`);
    const md = pod['metadata'];
    const name = isObject(md) ? md['name'] : undefined;
    const namespace = isObject(md) ? md['namespace'] : undefined;
    if (typeof name !== 'string' || name === '') throw new MachineConfigError(`${where}: metadata.name is required`);
    if (namespace !== undefined && typeof namespace !== 'string') throw new MachineConfigError(`${where}: metadata.namespace must be a string`);
    const id = `${namespace === undefined || namespace === '' ? 'default' : namespace}-${name}`;
    if (seen.has(id)) throw new MachineConfigError(`${where}: duplicate static pod ${id}`);
    seen.add(id);
    entries.push({ id, pod: toJson(pod) });
  });
  return { pods: entries, warnings };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function toJson(v: Record<string, unknown>): { [key: string]: Json } {
  // Round-trip through JSON: drops what JSON cannot carry (dates become strings) so the spec is plain data.
  return JSON.parse(JSON.stringify(v)) as { [key: string]: Json };
}
