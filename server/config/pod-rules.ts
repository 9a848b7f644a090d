// Validates a static pod as the kubelet would: the Kubernetes Pod schema (kubernetes-models, generated from the
// Kubernetes OpenAPI schema) plus the kubelet's own static pod rules, reported in apimachinery's field-error style.
import { Pod } from 'kubernetes-models/v1/Pod';
import type { Json } from '../../shared/wire.js';

export interface PodProblem {
  /** apimachinery path, e.g. spec.containers[0].name */
  field: string;
  detail: string;
}

type JsonObject = { [key: string]: Json };

interface SchemaError {
  instancePath?: string;
  keyword?: string;
  params?: Record<string, unknown>;
  message?: string;
}

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const SUBDOMAIN_MSG =
  "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_MSG = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const RESTART_POLICIES = ['Always', 'OnFailure', 'Never'];

/** undefined when the kubelet would run the pod; else its message, e.g. `invalid pod: [spec.containers: Required value]`. */
export function validateStaticPod(pod: JsonObject): { message: string; problems: PodProblem[] } | undefined {
  const problems = [...kubeletRules(pod), ...schemaProblems(pod)];
  const seen = new Set<string>();
  const unique = problems
    .sort((a, b) => (a.field < b.field ? -1 : a.field > b.field ? 1 : a.detail < b.detail ? -1 : a.detail > b.detail ? 1 : 0))
    .filter((p) => {
      const key = `${p.field}: ${p.detail}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
  if (unique.length === 0) return undefined;
  return { message: `invalid pod: [${unique.map((p) => `${p.field}: ${p.detail}`).join(', ')}]`, problems: unique };
}

function schemaProblems(pod: JsonObject): PodProblem[] {
  try {
    new Pod(pod as ConstructorParameters<typeof Pod>[0]).validate();
    return [];
  } catch (err) {
    const list = (err as { errors?: unknown }).errors;
    if (!Array.isArray(list)) return [{ field: '<pod>', detail: `Invalid value: ${err instanceof Error ? err.message : String(err)}` }];
    return list.flatMap((e: SchemaError) => {
      const path = pointerToField(e.instancePath ?? '');
      switch (e.keyword) {
        case 'required': {
          const missing = String(e.params?.['missingProperty'] ?? '');
          return [{ field: join(path, missing), detail: 'Required value' }];
        }
        case 'enum': {
          const allowed = Array.isArray(e.params?.['allowedValues']) ? (e.params['allowedValues'] as unknown[]) : [];
          return [{ field: path, detail: `Unsupported value: ${JSON.stringify(valueAt(pod, e.instancePath ?? ''))}: supported values: ${allowed.map((v) => JSON.stringify(v)).join(', ')}` }];
        }
        case 'additionalProperties':
          return []; // the kubelet ignores unknown fields
        default:
          return [{ field: path, detail: `Invalid value: ${JSON.stringify(valueAt(pod, e.instancePath ?? '')) ?? 'null'}: ${e.message ?? 'invalid'}` }];
      }
    });
  }
}

function kubeletRules(pod: JsonObject): PodProblem[] {
  const out: PodProblem[] = [];
  const bad = (field: string, value: Json | undefined, why: string) => out.push({ field, detail: `Invalid value: ${JSON.stringify(value ?? null)}: ${why}` });
  if (pod['apiVersion'] !== 'v1') bad('apiVersion', pod['apiVersion'], 'must be v1');
  if (pod['kind'] !== 'Pod') bad('kind', pod['kind'], 'must be Pod');
  const md = obj(pod['metadata']);
  const name = md['name'];
  if (name === undefined || name === '') out.push({ field: 'metadata.name', detail: 'Required value' });
  else if (typeof name !== 'string' || name.length > 253 || !DNS1123_SUBDOMAIN.test(name)) bad('metadata.name', name, SUBDOMAIN_MSG);
  const ns = md['namespace'];
  if (ns !== undefined && ns !== '' && (typeof ns !== 'string' || ns.length > 63 || !DNS1123_LABEL.test(ns))) bad('metadata.namespace', ns, LABEL_MSG);
  const spec = obj(pod['spec']);
  const containers = Array.isArray(spec['containers']) ? spec['containers'] : [];
  if (containers.length === 0) out.push({ field: 'spec.containers', detail: 'Required value' });
  const names = new Set<string>();
  const checkContainers = (list: Json[], base: string) =>
    list.forEach((c, i) => {
      const at = `${base}[${i}]`;
      const co = obj(c);
      const cname = co['name'];
      if (cname === undefined || cname === '') out.push({ field: `${at}.name`, detail: 'Required value' });
      else if (typeof cname !== 'string' || cname.length > 63 || !DNS1123_LABEL.test(cname)) bad(`${at}.name`, cname, LABEL_MSG);
      else if (names.has(cname)) out.push({ field: `${at}.name`, detail: `Duplicate value: ${JSON.stringify(cname)}` });
      else names.add(cname);
      const image = co['image'];
      if (image === undefined || image === '' || (typeof image === 'string' && image.trim() === '')) out.push({ field: `${at}.image`, detail: 'Required value' });
      const ports = Array.isArray(co['ports']) ? co['ports'] : [];
      ports.forEach((p, j) => {
        const port = obj(p)['containerPort'];
        if (typeof port === 'number' && (port < 1 || port > 65535 || !Number.isInteger(port))) bad(`${at}.ports[${j}].containerPort`, port, 'must be between 1 and 65535, inclusive');
      });
    });
  checkContainers(Array.isArray(spec['initContainers']) ? spec['initContainers'] : [], 'spec.initContainers');
  checkContainers(containers, 'spec.containers');
  const policy = spec['restartPolicy'];
  if (policy !== undefined && (typeof policy !== 'string' || !RESTART_POLICIES.includes(policy))) {
    out.push({ field: 'spec.restartPolicy', detail: `Unsupported value: ${JSON.stringify(policy)}: supported values: ${RESTART_POLICIES.map((p) => `"${p}"`).join(', ')}` });
  }
  return out;
}

/** /spec/containers/0/ports/1 -> spec.containers[0].ports[1] */
function pointerToField(pointer: string): string {
  let out = '';
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(part) ? `[${part}]` : out === '' ? part : `.${part}`;
  }
  return out === '' ? '<pod>' : out;
}

function join(path: string, key: string): string {
  return path === '<pod>' ? key : `${path}.${key}`;
}

function valueAt(root: Json, pointer: string): Json | undefined {
  let cur: Json | undefined = root;
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) cur = cur[Number(part)];
    else if (cur !== null && typeof cur === 'object') cur = cur[part];
    else return undefined;
  }
  return cur;
}

function obj(v: Json | undefined): JsonObject {
  return v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) ? v : {};
}
