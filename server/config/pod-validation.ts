// Validates a static pod the way a kubelet would: the Kubernetes Pod schema (kubernetes-models, generated from
// the Kubernetes OpenAPI document) plus the kubelet's own rules that a JSON schema cannot express, reported
// as apimachinery's field.ErrorList prints them.
//
// kubernetes-models ships its validators precompiled (ajv standalone code), so nothing is compiled at run
// time. We run the Pod schema on the object as it is, through the model's public validate() with the object as
// `this`, rather than `new Pod(obj).validate()`: the model constructor deep-copies the input (recursively, so a
// deeply nested document could overflow the stack). validate() throws ajv's ValidationError, whose `errors` are
// the schema function's own. (Version 4.5.1 is pinned: it runs on Node 20; 5.x asks for Node 22 and is the only
// line that exports the schema functions themselves.)
import { Pod } from 'kubernetes-models/v1/Pod';
import type { Json } from '../../shared/wire.js';

export interface PodProblem {
  /** apimachinery field path, e.g. spec.containers[0].name */
  field: string;
  /** what follows "<field>: ", e.g. 'Required value' */
  detail: string;
}

type JsonObject = { [key: string]: Json };

/** The field reported when the pod itself is not an object. */
const ROOT = '<pod>';
/** Longest rendering of a bad value; a huge one would otherwise flood every status and log line. */
const MAX_VALUE_CHARS = 256;

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
// apimachinery's messages verbatim (validation.RegexError), including its double space before "or".
const LABEL_MSG =
  "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG =
  "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const PORT_RANGE_MSG = 'must be between 1 and 65535, inclusive';
// The order Kubernetes lists them in (validateRestartPolicy), not the schema's sorted order.
const RESTART_POLICIES = ['Always', 'OnFailure', 'Never'];
/** Pod fields that are maps: k8s prints their keys as [key], like indices. */
const MAP_FIELDS = new Set(['labels', 'annotations', 'nodeSelector', 'limits', 'requests', 'overhead', 'volumeAttributes', 'options']);
const FORMAT_DETAILS: Record<string, string> = {
  int32: 'must be a 32-bit integer',
  int64: 'must be a 64-bit integer',
  'date-time': 'must be an RFC 3339 date-time',
  byte: 'must be base64-encoded',
  // resource.ErrFormatWrong
  quantity: "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
};

/** undefined when valid; else the kubelet-style message, e.g. 'invalid pod: [spec.containers: Required value]'. */
export function validateStaticPod(pod: { [key: string]: Json }): { message: string; problems: PodProblem[] } | undefined {
  let problems: PodProblem[];
  try {
    problems = collect(pod);
  } catch (err) {
    // Nothing above should throw; if it does, the pod is reported rather than the reload crashing.
    problems = [{ field: ROOT, detail: `Internal error: ${err instanceof Error ? err.message : String(err)}` }];
  }
  if (problems.length === 0) return undefined;
  problems.sort((a, b) => compareFields(a.field, b.field) || compareText(a.detail, b.detail));
  const unique = problems.filter((p, i) => {
    const prev = problems[i - 1];
    return prev === undefined || prev.field !== p.field || prev.detail !== p.detail;
  });
  return { message: `invalid pod: [${unique.map((p) => `${p.field}: ${p.detail}`).join(', ')}]`, problems: unique };
}

function collect(pod: Json): PodProblem[] {
  // The declared type says object, but callers hand over parsed YAML: check before touching fields.
  if (!isObject(pod)) return [{ field: ROOT, detail: `Invalid value: ${show(pod)}: must be of type object` }];
  const own = kubeletProblems(pod);
  // Where a kubelet rule spoke, its message is the precise one; the schema's would only repeat it.
  const owned = new Set(own.map((p) => p.field));
  return [...own, ...schemaProblems(pod).filter((p) => !owned.has(p.field))];
}

// ---------- schema errors -> field errors ----------

interface SchemaError {
  instancePath: string;
  keyword: string;
  params: object;
}

function schemaProblems(pod: JsonObject): PodProblem[] {
  const errors = schemaErrors(pod);
  if (errors.length === 0) return [];
  // oneOf (int-or-string, quantity) reports each failed branch at the same path, then itself: fold the
  // branches into one problem at that path.
  const oneOfPaths = [...new Set(errors.filter((e) => e.keyword === 'oneOf' || e.keyword === 'anyOf').map((e) => e.instancePath))];
  // A value of the wrong type also fails its enum and format: the type error is the one worth reading.
  const typePaths = new Set(errors.filter((e) => e.keyword === 'type').map((e) => e.instancePath));
  const out: PodProblem[] = [];
  for (const e of errors) {
    if (e.keyword === 'additionalProperties' || e.keyword === 'unevaluatedProperties') continue; // the kubelet ignores unknown fields
    const isOneOf = e.keyword === 'oneOf' || e.keyword === 'anyOf';
    // A branch's error: at or under a oneOf's path, and not that oneOf itself.
    if (oneOfPaths.some((p) => isWithin(e.instancePath, p) && !(isOneOf && p === e.instancePath))) continue;
    const at = locate(pod, e.instancePath);
    if (e.keyword === 'required') {
      const missing = stringParam(e.params, 'missingProperty');
      if (missing !== undefined) out.push({ field: at.field === '' ? missing : `${at.field}.${missing}`, detail: 'Required value' });
      continue;
    }
    // Kubernetes decodes a null field as "not set"; the schema flags its type and enum all the same.
    if (at.value === null && at.inObject) continue;
    const field = at.field === '' ? ROOT : at.field;
    switch (e.keyword) {
      case 'type':
        out.push({ field, detail: `Invalid value: ${show(at.value)}: must be of type ${typeNames(e.params).join(' or ')}` });
        break;
      case 'enum': {
        if (typePaths.has(e.instancePath)) break;
        const allowed = allowedValues(e.params).map((v) => show(jsonOf(v)));
        out.push({ field, detail: `Unsupported value: ${show(at.value)}: supported values: ${allowed.join(', ')}` });
        break;
      }
      case 'format':
        if (typePaths.has(e.instancePath)) break;
        out.push({ field, detail: `Invalid value: ${show(at.value)}: ${formatDetail(stringParam(e.params, 'format'))}` });
        break;
      case 'oneOf':
      case 'anyOf':
        out.push({ field, detail: `Invalid value: ${show(at.value)}: ${branchDetail(errors, e.instancePath)}` });
        break;
      default:
        out.push({ field, detail: `Invalid value: ${show(at.value)}: must satisfy the schema rule "${e.keyword}"` });
    }
  }
  return out;
}

/** The Pod schema's errors for this object (none when it is valid), checked one by one (the .d.ts does not type them). */
function schemaErrors(pod: JsonObject): SchemaError[] {
  let list: unknown[] = [];
  try {
    Pod.prototype.validate.call(pod);
  } catch (err) {
    // Anything but the schema's verdict (a stack overflow on a deep object, say) is the caller's to report.
    if (!(err instanceof Error) || !('errors' in err) || !Array.isArray(err.errors)) throw err;
    list = err.errors;
  }
  const out: SchemaError[] = [];
  for (const e of list) {
    if (typeof e !== 'object' || e === null) continue;
    if (!('instancePath' in e) || !('keyword' in e)) continue;
    const { instancePath, keyword } = e;
    if (typeof instancePath !== 'string' || typeof keyword !== 'string') continue;
    const params = 'params' in e && typeof e.params === 'object' && e.params !== null ? e.params : {};
    out.push({ instancePath, keyword, params });
  }
  return out;
}

/** Why a oneOf failed: the format its string branch rejected, else the types it would have taken. */
function branchDetail(errors: SchemaError[], path: string): string {
  const branches = errors.filter((e) => e.instancePath === path && e.keyword !== 'oneOf' && e.keyword !== 'anyOf');
  const format = branches.find((e) => e.keyword === 'format');
  if (format !== undefined) return formatDetail(stringParam(format.params, 'format'));
  const types = [...new Set(branches.filter((e) => e.keyword === 'type').flatMap((e) => typeNames(e.params)))].sort();
  return types.length > 0 ? `must be of type ${types.join(' or ')}` : 'must match exactly one of the allowed forms';
}

function formatDetail(format: string | undefined): string {
  if (format === undefined) return 'must match its format';
  return FORMAT_DETAILS[format] ?? `must match format "${format}"`;
}

function typeNames(params: object): string[] {
  const t: unknown = 'type' in params ? params.type : undefined;
  if (typeof t === 'string') return [t];
  if (!Array.isArray(t)) return [];
  const list: unknown[] = t;
  return list.filter((x): x is string => typeof x === 'string');
}

function stringParam(params: object, key: 'missingProperty' | 'format'): string | undefined {
  let v: unknown;
  if (key === 'missingProperty' && 'missingProperty' in params) v = params.missingProperty;
  if (key === 'format' && 'format' in params) v = params.format;
  return typeof v === 'string' ? v : undefined;
}

function allowedValues(params: object): unknown[] {
  const v: unknown = 'allowedValues' in params ? params.allowedValues : undefined;
  if (!Array.isArray(v)) return [];
  const list: unknown[] = v;
  return list;
}

/** Enum values come from the schema: JSON scalars; anything else is shown as null. */
function jsonOf(v: unknown): Json {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? v : null;
}

function isWithin(path: string, parent: string): boolean {
  return path === parent || path.startsWith(`${parent}/`);
}

/**
 * JSON pointer -> k8s field path, walking the pod alongside: array elements and map keys print as [i] and
 * [key], struct fields as .name (a pointer alone cannot tell an index from a numeric key).
 */
function locate(root: JsonObject, pointer: string): { field: string; value: Json | undefined; inObject: boolean } {
  let field = '';
  let cur: Json | undefined = root;
  let inObject = false;
  let prevKey: string | undefined;
  const segments = pointer === '' ? [] : pointer.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  for (const seg of segments) {
    if (Array.isArray(cur)) {
      field += `[${seg}]`;
      cur = cur[Number(seg)];
      inObject = false;
      prevKey = undefined;
    } else if (isObject(cur)) {
      field += prevKey !== undefined && MAP_FIELDS.has(prevKey) ? `[${seg}]` : field === '' ? seg : `.${seg}`;
      cur = Object.hasOwn(cur, seg) ? cur[seg] : undefined;
      inObject = true;
      prevKey = seg;
    } else {
      field += field === '' ? seg : `.${seg}`;
      cur = undefined;
      inObject = false;
      prevKey = seg;
    }
  }
  return { field, value: cur, inObject };
}

// ---------- the kubelet's own rules ----------

type Report = {
  required: (field: string, why?: string) => void;
  invalid: (field: string, value: Json | undefined, why: string) => void;
  add: (field: string, detail: string) => void;
};

function kubeletProblems(pod: JsonObject): PodProblem[] {
  const out: PodProblem[] = [];
  const report: Report = {
    required: (field, why) => out.push({ field, detail: why === undefined ? 'Required value' : `Required value: ${why}` }),
    invalid: (field, value, why) => out.push({ field, detail: `Invalid value: ${show(value)}: ${why}` }),
    add: (field, detail) => out.push({ field, detail }),
  };

  for (const [field, want] of [['apiVersion', 'v1'], ['kind', 'Pod']] as const) {
    const v = pod[field];
    if (v === undefined || v === null || v === '') report.required(field);
    else if (v !== want) report.invalid(field, v, `must be ${want}`);
  }

  const md = pod['metadata'];
  if (md === undefined || md === null) report.required('metadata.name', 'name or generateName is required');
  else if (isObject(md)) {
    const name = md['name'];
    if (name === undefined || name === null || name === '') report.required('metadata.name', 'name or generateName is required');
    else if (typeof name === 'string') for (const why of dns1123Subdomain(name)) report.invalid('metadata.name', name, why);
    const ns = md['namespace'];
    // An empty namespace is defaulted by the kubelet.
    if (typeof ns === 'string' && ns !== '') for (const why of dns1123Label(ns)) report.invalid('metadata.namespace', ns, why);
  }

  const spec = pod['spec'];
  if (spec === undefined || spec === null) {
    report.required('spec.containers');
    return out;
  }
  if (!isObject(spec)) return out; // the schema reports the wrong type
  const containers = spec['containers'];
  if (containers === undefined || containers === null || (Array.isArray(containers) && containers.length === 0)) report.required('spec.containers');
  // Names are unique across both lists; Kubernetes checks containers first, so a clash lands on the init container.
  const names = new Set<string>();
  checkContainers(containers, 'spec.containers', names, report);
  checkContainers(spec['initContainers'], 'spec.initContainers', names, report);

  const policy = spec['restartPolicy'];
  // An empty policy is defaulted to Always; a non-string one is the schema's to report.
  if (typeof policy === 'string' && policy !== '' && !RESTART_POLICIES.includes(policy)) {
    report.add('spec.restartPolicy', `Unsupported value: ${show(policy)}: supported values: ${RESTART_POLICIES.map((p) => show(p)).join(', ')}`);
  }
  return out;
}

function checkContainers(list: Json | undefined, base: string, names: Set<string>, report: Report): void {
  if (!Array.isArray(list)) return;
  list.forEach((c, i) => {
    if (!isObject(c)) return; // the schema reports the wrong type
    const at = `${base}[${i}]`;
    const name = c['name'];
    if (name === undefined || name === null || name === '') report.required(`${at}.name`);
    else if (typeof name === 'string') {
      const bad = dns1123Label(name);
      for (const why of bad) report.invalid(`${at}.name`, name, why);
      if (bad.length === 0 && names.has(name)) report.add(`${at}.name`, `Duplicate value: ${show(name)}`);
      names.add(name);
    }
    const image = c['image'];
    if (image === undefined || image === null || image === '') report.required(`${at}.image`);
    const ports = c['ports'];
    if (!Array.isArray(ports)) return;
    ports.forEach((p, j) => {
      if (!isObject(p)) return;
      const cp = p['containerPort'];
      // 0 is Go's zero value: the same as not set.
      if (cp === undefined || cp === null || cp === 0) report.required(`${at}.ports[${j}].containerPort`);
      else if (typeof cp === 'number' && Number.isInteger(cp) && (cp < 1 || cp > 65535)) report.invalid(`${at}.ports[${j}].containerPort`, cp, PORT_RANGE_MSG);
      const hp = p['hostPort'];
      if (typeof hp === 'number' && Number.isInteger(hp) && hp !== 0 && (hp < 1 || hp > 65535)) report.invalid(`${at}.ports[${j}].hostPort`, hp, PORT_RANGE_MSG);
    });
  });
}

/** validation.IsDNS1123Subdomain: every message that applies. */
function dns1123Subdomain(v: string): string[] {
  const out: string[] = [];
  if (v.length > 253) out.push('must be no more than 253 characters');
  if (!DNS1123_SUBDOMAIN.test(v)) out.push(SUBDOMAIN_MSG);
  return out;
}

/** validation.IsDNS1123Label: every message that applies. */
function dns1123Label(v: string): string[] {
  const out: string[] = [];
  if (v.length > 63) out.push('must be no more than 63 characters');
  if (!DNS1123_LABEL.test(v)) out.push(LABEL_MSG);
  return out;
}

// ---------- helpers ----------

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A bad value as apimachinery prints it (strings quoted, numbers and booleans bare, absent as null), in JSON,
 * cut at MAX_VALUE_CHARS. Built by hand so a huge or deeply nested value costs at most that much work.
 */
function show(v: Json | undefined): string {
  if (v === undefined) return 'null';
  let out = '';
  const quote = (s: string) => JSON.stringify(s.length > MAX_VALUE_CHARS ? s.slice(0, MAX_VALUE_CHARS + 1) : s);
  const walk = (x: Json): void => {
    if (out.length > MAX_VALUE_CHARS) return;
    if (typeof x === 'string') out += quote(x);
    else if (x === null || typeof x !== 'object') out += JSON.stringify(x);
    else if (Array.isArray(x)) {
      out += '[';
      let first = true;
      for (const item of x) {
        if (out.length > MAX_VALUE_CHARS) return;
        if (!first) out += ',';
        first = false;
        walk(item);
      }
      out += ']';
    } else {
      out += '{';
      let first = true;
      for (const key in x) {
        if (out.length > MAX_VALUE_CHARS) return;
        const item = x[key];
        if (item === undefined) continue;
        if (!first) out += ',';
        first = false;
        out += `${quote(key)}:`;
        walk(item);
      }
      out += '}';
    }
  };
  walk(v);
  return out.length > MAX_VALUE_CHARS ? `${out.slice(0, MAX_VALUE_CHARS)}...` : out;
}

/** Field paths in natural order (containers[2] before containers[10]), independent of locale. */
function compareFields(a: string, b: string): number {
  const ta = a.match(/\d+|\D+/g) ?? [];
  const tb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.min(ta.length, tb.length); i++) {
    const x = ta[i] ?? '';
    const y = tb[i] ?? '';
    if (x === y) continue;
    if (/^\d/.test(x) && /^\d/.test(y)) {
      // Compare as numbers without parsing: strip leading zeros, then the longer is the larger.
      const nx = x.replace(/^0+(?=\d)/, '');
      const ny = y.replace(/^0+(?=\d)/, '');
      if (nx.length !== ny.length) return nx.length - ny.length;
      const c = compareText(nx, ny);
      if (c !== 0) return c;
    }
    return compareText(x, y);
  }
  return ta.length - tb.length;
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
