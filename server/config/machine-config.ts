// Reads a Talos-style multi-document machine config: the v1alpha1 document (machine.type, machine.pods,
// cluster.*.image) and KubeStaticPodConfig documents. As Talos does, it refuses what Talos does not know: a key
// that is no Talos key (in the v1alpha1 document's top two levels and in KubeStaticPodConfig documents) and a
// document kind Talos has not registered. Talos documents cosid does not model are ignored with a warning.
import YAML from 'yaml';
import type { Json } from '../../shared/wire.js';
import { controlPlanePods, type ControlPlaneImages } from './control-plane.js';
import {
  CLUSTER_KEYS,
  closest,
  KUBE_STATIC_POD_CONFIG_KEYS,
  MACHINE_KEYS,
  TALOS_DOCUMENT_API_VERSION,
  TALOS_DOCUMENT_KINDS,
  V1ALPHA1_KEYS,
} from './talos-keys.js';

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
/** How many unknown keys one message names before it only counts the rest. */
const MAX_KEYS_NAMED = 5;
/** Longest quoted source line in a YAML error. */
const MAX_QUOTED_CHARS = 60;

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
  const unknownKeys: string[] = [];
  const staticPodDocs: { value: Record<string, unknown>; where: string }[] = [];
  let v1alpha1: { doc: YAML.Document.Parsed; value: Record<string, unknown> } | undefined;
  let lines: string[] | undefined;
  for (const doc of docs) {
    const first = doc.errors[0];
    if (first !== undefined) throw new MachineConfigError(yamlErrorMessage(source, first, (lines ??= text.split(/\r?\n/))));
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch (err) {
      throw new MachineConfigError(`${at(doc, [])}: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (value === null || value === undefined) continue;
    if (!isObject(value)) throw new MachineConfigError(`${at(doc, [])}: each document must be a mapping`);
    if (depth(value) > MAX_DEPTH) throw new MachineConfigError(`${at(doc, [])}: document is nested deeper than ${MAX_DEPTH} levels`);
    const keyAt = (key: YAML.Node | undefined): string => {
      const pos = key?.range === undefined || key.range === null ? undefined : lineCounter.linePos(key.range[0]);
      return pos === undefined ? at(doc, []) : `${source}:${pos.line}:${pos.col}`;
    };
    const kind = value['kind'];
    if (kind === undefined) {
      // Talos's only document without a kind is the v1alpha1 one; a kind-less document is taken for it.
      if ('apiVersion' in value) throw new MachineConfigError(`${at(doc, [])}: document has apiVersion but no kind`);
      if (v1alpha1 !== undefined) throw new MachineConfigError(`${at(doc, [])}: more than one v1alpha1 document`);
      v1alpha1 = { doc, value };
      const top = mapEntries(doc, doc.contents);
      unknownKeys.push(...unknownIn(top, V1ALPHA1_KEYS, '', keyAt));
      for (const [section, known] of [['machine', MACHINE_KEYS], ['cluster', CLUSTER_KEYS]] as const) {
        const entry = top.find((e) => e.key === section);
        unknownKeys.push(...unknownIn(mapEntries(doc, entry?.value), known, `${section}.`, keyAt));
      }
      continue;
    }
    const kindNode = mapEntries(doc, doc.contents).find((e) => e.key === 'kind')?.value;
    const kindAt = keyAt(YAML.isNode(kindNode) ? kindNode : undefined);
    if (typeof kind !== 'string') throw new MachineConfigError(`${kindAt}: kind must be a string`);
    if (!TALOS_DOCUMENT_KINDS.includes(kind)) {
      const near = closest(kind, TALOS_DOCUMENT_KINDS);
      throw new MachineConfigError(`${kindAt}: unknown document kind ${kind}${near === undefined ? '' : ` (did you mean ${near}?)`}: Talos refuses documents it does not know`);
    }
    if (value['apiVersion'] !== TALOS_DOCUMENT_API_VERSION) {
      throw new MachineConfigError(`${kindAt}: ${kind} needs apiVersion: ${TALOS_DOCUMENT_API_VERSION} (got ${JSON.stringify(value['apiVersion'] ?? null)})`);
    }
    if (kind === 'KubeStaticPodConfig') {
      unknownKeys.push(...unknownIn(mapEntries(doc, doc.contents), KUBE_STATIC_POD_CONFIG_KEYS, '', keyAt, ' in a KubeStaticPodConfig document'));
      staticPodDocs.push({ value, where: at(doc, []) });
    } else {
      warnings.push(`${at(doc, [])}: ignoring the ${kind} document (a Talos document cosid does not model)`);
    }
  }
  if (unknownKeys.length > 0) {
    const more = unknownKeys.length - MAX_KEYS_NAMED;
    throw new MachineConfigError(`${unknownKeys.slice(0, MAX_KEYS_NAMED).join('; ')}${more > 0 ? `; and ${more} more unknown keys` : ''}`);
  }
  for (const d of staticPodDocs) pods.push(kubeStaticPodConfig(d.value, d.where));
  if (v1alpha1 === undefined) throw new MachineConfigError(`${source}: no v1alpha1 machine config document (version: v1alpha1, machine: ...)`);
  const { doc, value } = v1alpha1;
  const machine = value['machine'] ?? {};
  if (!isObject(machine)) throw new MachineConfigError(`${at(doc, ['machine'])}: machine must be a mapping`);
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

interface MapEntry {
  key: string;
  keyNode: YAML.Node | undefined;
  value: unknown;
}

/** The entries of a YAML mapping node (an alias followed), or none when it is not a mapping. */
function mapEntries(doc: YAML.Document.Parsed, node: unknown): MapEntry[] {
  const target = YAML.isAlias(node) ? node.resolve(doc) : node;
  if (!YAML.isMap(target)) return [];
  return target.items.map((pair) => {
    const keyNode = YAML.isNode(pair.key) ? pair.key : undefined;
    const key = YAML.isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
    return { key, keyNode, value: pair.value };
  });
}

/** "m.yaml:5:3: unknown key machine.podz (did you mean machine.pods?)" for each key that is not a known one. */
function unknownIn(entries: MapEntry[], known: readonly string[], prefix: string, keyAt: (key: YAML.Node | undefined) => string, where = ''): string[] {
  return entries
    .filter((e) => !known.includes(e.key))
    .map((e) => {
      const near = closest(e.key, known);
      return `${keyAt(e.keyNode)}: unknown key ${prefix}${e.key}${where}${near === undefined ? '' : ` (did you mean ${prefix}${near}?)`}`;
    });
}

/**
 * The yaml library's message on one line: its first line ends "at line L, column C:" before a multi-line snippet;
 * the position goes in front (file:L:C, as every message here) and the snippet becomes the source line it points
 * at (or, when that line is blank, as at the end of the file, the last line before it that is not).
 */
function yamlErrorMessage(source: string, err: YAML.YAMLError, lines: readonly string[]): string {
  const pos = err.linePos?.[0];
  const firstLine = err.message.split('\n')[0] ?? '';
  const reason = firstLine.replace(/\s*at line \d+, column \d+:?\s*$/, '').trim() || err.code;
  let context = '';
  if (pos !== undefined) {
    const here = lines[pos.line - 1]?.trim() ?? '';
    if (here !== '') context = `, at ${quoteLine(here)}`;
    else {
      for (let i = pos.line - 2; i >= 0; i--) {
        const before = lines[i]?.trim() ?? '';
        if (before === '') continue;
        context = `, after ${quoteLine(before)} (line ${i + 1})`;
        break;
      }
    }
  }
  return `${source}:${pos?.line ?? '?'}:${pos?.col ?? '?'}: ${reason}${context}`;
}

/**
 * A source line as an error quotes it, its values left out: the message reaches os:reader through the
 * MachineConfigStatus, and a Talos config holds secrets (tokens, keys). Keys, punctuation ("pods: [") and a bare
 * key-like word are kept: they are what locates the mistake.
 */
function quoteLine(line: string): string {
  const keyed = /^(-\s+)?([^\s:#][^:#]*:)(\s*)(.*)$/.exec(line);
  const shown = keyed
    ? `${keyed[1] ?? ''}${keyed[2] ?? ''}${keyed[3] ?? ''}${redacted(keyed[4] ?? '')}`
    : /^[A-Za-z_][\w.-]{0,63}$/.test(line)
      ? line
      : /^-\s+/.test(line)
        ? `- ${redacted(line.replace(/^-\s+/, ''))}`
        : redacted(line);
  return JSON.stringify(shown.length > MAX_QUOTED_CHARS ? `${shown.slice(0, MAX_QUOTED_CHARS)}...` : shown);
}

/** A value as quoted: structure only ("[", "{", "|", ">") is shown, anything else is "...". */
function redacted(value: string): string {
  return value === '' || /^[[\]{}|>,\s-]+$/.test(value) ? value : '...';
}

function kubeStaticPodConfig(value: Record<string, unknown>, where: string): StaticPodEntry {
  const name = value['name'];
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
