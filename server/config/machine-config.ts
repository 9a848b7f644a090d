// Reads a Talos-style multi-document machine config: the v1alpha1 document (machine.type, machine.pods,
// cluster.*.image) and KubeStaticPodConfig documents. Unknown documents and fields are warnings, not failures.
import YAML from 'yaml';
import type { Json } from '../../shared/wire.js';
import { controlPlanePods, type ControlPlaneImages } from './control-plane.js';

export type JsonObject = { [key: string]: Json };

export interface StaticPodEntry {
  /** As Talos forms it: `<namespace or default>-<name>` (machine.pods), the document's name, or the bare component. */
  readonly id: string;
  readonly pod: JsonObject;
  /** Where it came from, for messages: `machine.yaml:12 (machine.pods[0])`. */
  readonly origin: string;
}

export interface MachineConfig {
  readonly machineType: string;
  readonly pods: readonly StaticPodEntry[];
  readonly warnings: readonly string[];
}

export class MachineConfigError extends Error {
  override readonly name = 'MachineConfigError';
}

// A YAML bomb (alias expansion), a huge or deeply nested file must not take the process down.
const MAX_ALIAS_COUNT = 100;
export const MAX_CONFIG_BYTES = 4 << 20;
const MAX_DEPTH = 64;

const V1ALPHA1_KEYS = new Set(['version', 'debug', 'persist', 'machine', 'cluster']);
const MACHINE_KEYS = new Set([
  'type', 'token', 'ca', 'acceptedCAs', 'certSANs', 'controlPlane', 'kubelet', 'pods', 'network', 'disks', 'install',
  'files', 'env', 'time', 'sysctls', 'sysfs', 'registries', 'systemDiskEncryption', 'features', 'udev', 'logging',
  'kernel', 'seccompProfiles', 'nodeLabels', 'nodeAnnotations', 'nodeTaints', 'baseRuntimeSpecOverrides',
]);
const MACHINE_TYPES = new Set(['worker', 'controlplane', 'init']);
const DNS1123_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function parseMachineConfig(text: string, source: string): MachineConfig {
  if (Buffer.byteLength(text, 'utf8') > MAX_CONFIG_BYTES) throw new MachineConfigError(`${source}: machine config is larger than ${MAX_CONFIG_BYTES} bytes`);
  const lineCounter = new YAML.LineCounter();
  const docs = YAML.parseAllDocuments(text, { lineCounter, uniqueKeys: true });
  if (!Array.isArray(docs)) throw new MachineConfigError(`${source}: not a YAML document stream`);
  const at = (doc: YAML.Document.Parsed, path: (string | number)[]): string => {
    const node = path.length === 0 ? doc.contents : doc.getIn(path, true);
    const offset = YAML.isNode(node) ? node.range?.[0] : undefined;
    return offset === undefined ? source : `${source}:${lineCounter.linePos(offset).line}`;
  };
  const warnings: string[] = [];
  const pods: StaticPodEntry[] = [];
  let v1alpha1: { doc: YAML.Document.Parsed; value: Record<string, unknown> } | undefined;
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
      throw new MachineConfigError(`${at(doc, [])}: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (value === null || value === undefined) continue;
    if (!isObject(value)) throw new MachineConfigError(`${at(doc, [])}: each document must be a mapping`);
    if (depth(value) > MAX_DEPTH) throw new MachineConfigError(`${at(doc, [])}: document is nested deeper than ${MAX_DEPTH} levels`);
    if (value['version'] === 'v1alpha1' || ('machine' in value && !('kind' in value))) {
      if (v1alpha1 !== undefined) throw new MachineConfigError(`${at(doc, [])}: more than one v1alpha1 document`);
      v1alpha1 = { doc, value };
    } else if (value['kind'] === 'KubeStaticPodConfig') {
      pods.push(kubeStaticPodConfig(value, at(doc, [])));
    } else {
      warnings.push(`${at(doc, [])}: ignoring document ${JSON.stringify(value['kind'] ?? value['version'] ?? 'without kind')}`);
    }
  }
  if (v1alpha1 === undefined) throw new MachineConfigError(`${source}: no v1alpha1 machine config document (version: v1alpha1, machine: ...)`);
  const { doc, value } = v1alpha1;
  for (const key of Object.keys(value)) if (!V1ALPHA1_KEYS.has(key)) warnings.push(`${at(doc, [key])}: ignoring unknown field ${JSON.stringify(key)}`);
  const machine = value['machine'] ?? {};
  if (!isObject(machine)) throw new MachineConfigError(`${at(doc, ['machine'])}: machine must be a mapping`);
  for (const key of Object.keys(machine)) if (!MACHINE_KEYS.has(key)) warnings.push(`${at(doc, ['machine', key])}: ignoring unknown field "machine.${key}"`);
  const machineType = machine['type'] ?? 'worker';
  if (typeof machineType !== 'string' || !MACHINE_TYPES.has(machineType)) {
    throw new MachineConfigError(`${at(doc, ['machine', 'type'])}: machine.type must be one of worker, controlplane, init (got ${JSON.stringify(machineType)})`);
  }
  const list = machine['pods'] ?? [];
  if (!Array.isArray(list)) throw new MachineConfigError(`${at(doc, ['machine', 'pods'])}: machine.pods must be a list of Pod objects`);
  list.forEach((pod: unknown, i: number) => {
    const where = `${at(doc, ['machine', 'pods', i])} (machine.pods[${i}])`;
    if (!isObject(pod)) throw new MachineConfigError(`${where}: must be a Pod object`);
    const md = pod['metadata'];
    const name = isObject(md) ? md['name'] : undefined;
    const namespace = isObject(md) ? md['namespace'] : undefined;
    if (typeof name !== 'string' || name === '') throw new MachineConfigError(`${where}: metadata.name is required`);
    if (namespace !== undefined && typeof namespace !== 'string') throw new MachineConfigError(`${where}: metadata.namespace must be a string`);
    pods.push({ id: `${namespace === undefined || namespace === '' ? 'default' : namespace}-${name}`, pod: toJson(pod), origin: where });
  });
  if (machineType !== 'worker') {
    const cluster = value['cluster'];
    pods.push(...controlPlanePods(controlPlaneImages(isObject(cluster) ? cluster : {}), `${source} (machine.type: ${machineType})`));
  }
  const seen = new Map<string, string>();
  for (const p of pods) {
    const other = seen.get(p.id);
    if (other !== undefined) throw new MachineConfigError(`${p.origin}: duplicate static pod ${p.id} (also at ${other})`);
    seen.set(p.id, p.origin);
  }
  return { machineType, pods, warnings };
}

function kubeStaticPodConfig(value: Record<string, unknown>, where: string): StaticPodEntry {
  const name = value['name'];
  if (value['apiVersion'] !== 'v1alpha1') throw new MachineConfigError(`${where}: KubeStaticPodConfig needs apiVersion: v1alpha1`);
  if (typeof name !== 'string' || !DNS1123_SUBDOMAIN.test(name)) {
    throw new MachineConfigError(`${where}: KubeStaticPodConfig name ${JSON.stringify(name ?? '')} must be a DNS-1123 name (lower-case letters, digits, '-' and '.')`);
  }
  const pod = value['pod'];
  if (!isObject(pod)) throw new MachineConfigError(`${where}: KubeStaticPodConfig ${name}: pod must be a Pod object`);
  return { id: name, pod: toJson(pod), origin: `${where} (KubeStaticPodConfig ${name})` };
}

function controlPlaneImages(cluster: Record<string, unknown>): Partial<ControlPlaneImages> {
  const image = (key: string): string | undefined => {
    const section = cluster[key];
    const v = isObject(section) ? section['image'] : undefined;
    return typeof v === 'string' && v !== '' ? v : undefined;
  };
  const out: Partial<ControlPlaneImages> = {};
  const api = image('apiServer');
  const cm = image('controllerManager');
  const sched = image('scheduler');
  if (api !== undefined) out.apiServer = api;
  if (cm !== undefined) out.controllerManager = cm;
  if (sched !== undefined) out.scheduler = sched;
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function depth(v: unknown): number {
  if (v === null || typeof v !== 'object') return 0;
  let max = 0;
  for (const x of Object.values(v)) {
    max = Math.max(max, depth(x));
    if (max > MAX_DEPTH) break;
  }
  return max + 1;
}

function toJson(v: Record<string, unknown>): JsonObject {
  // Round-trip through JSON: drops what JSON cannot carry (dates become strings) so the spec is plain data.
  return JSON.parse(JSON.stringify(v)) as JsonObject;
}
