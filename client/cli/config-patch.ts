// Machine config patches as talosctl applies them, done locally by cosictl (apply-config -p, patch machineconfig):
// strategic merge patches (partial config documents, `$patch: delete`) and RFC 6902 JSON patches, written as JSON
// or as a YAML list. The config is edited through the yaml package's Document API, so the comments and formatting
// of the documents a patch does not change are kept byte for byte, and those of untouched parts of a changed
// document as far as the library re-renders them.
import { readFile } from 'node:fs/promises';
import jsonpatch, { type Operation } from 'fast-json-patch';
import YAML from 'yaml';
import { CosiError } from '../../shared/errors.js';
import type { Json } from '../resource.js';

type JsonObject = { [key: string]: Json };

/** One patch as loaded: a strategic merge patch (its documents) or a list of RFC 6902 operations. */
export type ConfigPatch = { kind: 'strategic'; docs: JsonObject[] } | { kind: 'json6902'; ops: Operation[] };

function invalid(message: string): CosiError {
  return new CosiError('invalid-argument', message);
}

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const RFC6902_OPS = new Set(['add', 'remove', 'replace', 'move', 'copy', 'test']);

/**
 * Reads a patch as talosctl does: a strategic merge patch first (YAML mappings, one per document), else a list of
 * RFC 6902 operations (JSON, or the same in YAML).
 */
export function parsePatch(text: string, source: string): ConfigPatch {
  const docs = YAML.parseAllDocuments(text, { prettyErrors: true });
  const values: Json[] = [];
  for (const doc of docs) {
    const [error] = doc.errors;
    if (error !== undefined) throw invalid(`patch ${source}: ${error.message.split('\n')[0] ?? error.message}`);
    const value = doc.toJS({ maxAliasCount: 100 }) as Json | undefined;
    if (value !== undefined && value !== null) values.push(value);
  }
  const [first] = values;
  if (values.length === 1 && Array.isArray(first)) {
    const ops = first.map((op, i) => {
      if (!isObject(op) || typeof op['op'] !== 'string' || !RFC6902_OPS.has(op['op']) || typeof op['path'] !== 'string') {
        throw invalid(`patch ${source}: operation ${i} is not an RFC 6902 operation ({"op": "add|remove|replace|move|copy|test", "path": "/..."})`);
      }
      return op as unknown as Operation;
    });
    return { kind: 'json6902', ops };
  }
  if (values.length === 0) throw invalid(`patch ${source} is empty`);
  const notMap = values.findIndex((v) => !isObject(v));
  if (notMap >= 0) {
    throw invalid(`patch ${source}: document ${notMap + 1} is neither a partial machine config (a mapping, for a strategic merge) nor a list of RFC 6902 operations`);
  }
  return { kind: 'strategic', docs: values as JsonObject[] };
}

/**
 * Loads `-p` values as talosctl does: `@file` reads the file, a value without space, newline, `[` or `{` is taken
 * for a file name too, anything else is the patch itself. RFC 6902 patches that follow one another are merged.
 */
export async function loadPatches(args: readonly string[]): Promise<ConfigPatch[]> {
  const out: ConfigPatch[] = [];
  for (const arg of args) {
    let text = arg;
    let source = 'given inline';
    const file = arg.startsWith('@') ? arg.slice(1) : !/[\n ]/.test(arg) && !arg.startsWith('[') && !arg.startsWith('{') ? arg : undefined;
    if (file !== undefined) {
      source = JSON.stringify(file);
      try {
        text = await readFile(file, 'utf8');
      } catch (err) {
        throw invalid(`cannot read the patch file ${source}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    const patch = parsePatch(text, source);
    const last = out[out.length - 1];
    if (patch.kind === 'json6902' && last?.kind === 'json6902') last.ops.push(...patch.ops);
    else out.push(patch);
  }
  return out;
}

// --- the config being patched

interface ConfigDoc {
  /** The parsed document, for documents of the original text. */
  node: YAML.Document.Parsed | undefined;
  /** Its source text (separator included), for documents of the original text. */
  source: string | undefined;
  original: Json | undefined;
  value: Json;
}

/** Talos's identity of a document: apiVersion/kind[/name], or v1alpha1 for the document without a kind. */
function documentId(v: Json): string | undefined {
  if (!isObject(v)) return undefined;
  const kind = v['kind'];
  if (kind === undefined) return 'v1alpha1';
  const name = v['name'];
  return `${String(v['apiVersion'] ?? '')}/${String(kind)}${typeof name === 'string' && name !== '' ? `/${name}` : ''}`;
}

function parseConfig(text: string): ConfigDoc[] {
  const parsed = YAML.parseAllDocuments(text, { prettyErrors: true });
  return parsed.map((node, i) => {
    const [error] = node.errors;
    if (error !== undefined) throw invalid(`the machine config does not parse: ${error.message.split('\n')[0] ?? error.message}`);
    const next = parsed[i + 1];
    const source = text.slice(i === 0 ? 0 : node.range[0], next === undefined ? text.length : next.range[0]);
    const value = (node.toJS({ maxAliasCount: 100 }) ?? null) as Json;
    return { node, source, original: structuredClone(value), value };
  });
}

/** Applies the patches in order. `changed` is whether the config means something else now (comments aside). */
export function applyPatches(text: string, patches: readonly ConfigPatch[]): { text: string; changed: boolean } {
  let docs = parseConfig(text);
  for (const patch of patches) docs = patch.kind === 'json6902' ? applyJson6902(docs, patch.ops) : applyStrategic(docs, patch.docs);
  const originals = docs.filter((d) => d.node !== undefined);
  const changed = docs.length !== parseConfig(text).length || originals.length !== docs.length || docs.some((d) => !deepEqual(d.original, d.value));
  if (!changed) return { text, changed: false };
  return { text: render(text, docs), changed: true };
}

function applyJson6902(docs: ConfigDoc[], ops: Operation[]): ConfigDoc[] {
  const live = docs.filter((d) => d.value !== null);
  const [doc, ...more] = live;
  if (doc === undefined || more.length > 0) throw invalid('RFC 6902 patches are not supported for multi-document machine configuration');
  try {
    doc.value = jsonpatch.applyPatch(structuredClone(doc.value), ops, true, true).newDocument;
  } catch (err) {
    const e = err as { message?: unknown; index?: unknown; operation?: unknown };
    const first = typeof e.message === 'string' ? (e.message.split('\n')[0] ?? e.message) : String(err);
    const which = typeof e.index === 'number' ? ` (operation ${e.index}: ${JSON.stringify(e.operation)})` : '';
    throw invalid(`failure applying RFC 6902 patches to the machine config: ${first}${which}`);
  }
  return docs;
}

// --- strategic merge

/** A `$patch: delete`: a key at `path`, or the first item of the list at `path` that matches `match`. */
interface Deletion {
  path: string[];
  match?: { key: string; value: Json };
}

function applyStrategic(docs: ConfigDoc[], patchDocs: readonly JsonObject[]): ConfigDoc[] {
  for (const original of patchDocs) {
    const patch = structuredClone(original);
    const id = documentId(patch) ?? 'v1alpha1';
    const deletions: Deletion[] = [];
    const wholeDocument = patch['$patch'] === 'delete';
    if (!wholeDocument) collectDeletions(patch, [], deletions, false);
    const target = docs.find((d) => documentId(d.value) === id);
    if (wholeDocument) {
      if (id === 'v1alpha1') throw invalid("patch delete: can't delete the root of the legacy document (v1alpha1)");
      // A deletion of a document that is not there is skipped, as Talos does.
      if (target !== undefined) docs = docs.filter((d) => d !== target);
      continue;
    }
    if (target === undefined) {
      // A new document is appended; deletions in a document that is not there are skipped, as Talos does.
      if (Object.keys(patch).some((k) => !['version', 'apiVersion', 'kind', 'name'].includes(k))) docs.push({ node: undefined, source: undefined, original: undefined, value: patch });
      continue;
    }
    for (const d of deletions) applyDeletion(target.value, d, id);
    target.value = merge(target.value, patch, []);
  }
  return docs;
}

/** Takes the `$patch: delete` entries out of a patch document; returns whether `node` is left empty by them. */
function collectDeletions(node: JsonObject | Json[], path: string[], out: Deletion[], underList: boolean): boolean {
  if (Array.isArray(node)) {
    let removed = false;
    for (let i = 0; i < node.length; i++) {
      const item = node[i];
      if (isObject(item) && '$patch' in item) {
        checkPatchDirective(item['$patch'], path);
        const key = Object.keys(item).find((k) => k !== '$patch');
        if (key === undefined) throw invalid(`patch delete: the list item at ${path.join('.')} names no key to match (e.g. "- name: x" with "$patch: delete")`);
        out.push({ path, match: { key, value: item[key] ?? null } });
        node.splice(i--, 1);
        removed = true;
      } else if (isObject(item) || Array.isArray(item)) {
        if (collectDeletions(item, [...path, `[${i}]`], out, true)) node.splice(i--, 1);
      }
    }
    return removed && node.length === 0;
  }
  let removed = false;
  for (const [key, value] of Object.entries(node)) {
    if (key === '$patch') {
      checkPatchDirective(value, path);
      continue;
    }
    if (isObject(value) && '$patch' in value) {
      checkPatchDirective(value['$patch'], [...path, key]);
      if (underList) throw invalid(`patch delete: cannot delete an inner key in '${[...path, key].join('.')}' (inside a list item)`);
      out.push({ path: [...path, key] });
      delete node[key];
      removed = true;
    } else if (isObject(value) || Array.isArray(value)) {
      if (collectDeletions(value, [...path, key], out, underList)) {
        delete node[key];
        removed = true;
      }
    }
  }
  return removed && Object.keys(node).length === 0;
}

function checkPatchDirective(value: Json | undefined, path: string[]): void {
  if (value !== 'delete') throw invalid(`patch: "$patch: ${JSON.stringify(value)}" at '${path.join('.') || '(document)'}' is not supported: the only directive is "$patch: delete"`);
}

function applyDeletion(doc: Json, d: Deletion, id: string): void {
  const where = `patch delete: path '${d.path.join('.')}' in document '${id}'`;
  let node: Json | undefined = doc;
  const keys = d.match === undefined ? d.path.slice(0, -1) : d.path;
  for (const k of keys) node = isObject(node) ? node[k] : undefined;
  if (d.match === undefined) {
    const last = d.path[d.path.length - 1];
    if (!isObject(node) || last === undefined || !(last in node)) throw invalid(`${where}: lookup failed (no such key)`);
    delete node[last];
    return;
  }
  const match = d.match;
  if (!Array.isArray(node)) throw invalid(`${where}: lookup failed (no list there)`);
  const index = node.findIndex((item) => isObject(item) && matches(item[match.key], match.value));
  if (index < 0) throw invalid(`${where}: lookup failed (no item with ${match.key}: ${JSON.stringify(match.value)})`);
  node.splice(index, 1);
}

/**
 * Whether a list item's value matches a deletion's: scalars as their text (as Talos compares them); a mapping (ours,
 * for items such as pods whose identity is nested: `- metadata: {name: web}`) when each of its keys matches.
 */
function matches(have: Json | undefined, want: Json): boolean {
  if (isObject(want)) return isObject(have) && Object.entries(want).every(([k, v]) => matches(have[k], v));
  if (Array.isArray(want)) return deepEqual(have, want);
  return have !== undefined && have !== null && !isObject(have) && !Array.isArray(have) && String(have) === String(want);
}

/** Talos's merge of config trees: mappings merged key by key, lists appended, scalars replaced; null changes nothing. */
function merge(left: Json | undefined, right: Json, path: string[]): Json {
  if (right === null) return left ?? null;
  if (left === undefined || left === null) return right;
  const kindOf = (v: Json) => (Array.isArray(v) ? 'a list' : isObject(v) ? 'a mapping' : 'a scalar');
  if (isObject(left) && isObject(right)) {
    const out: JsonObject = { ...left };
    for (const [k, v] of Object.entries(right)) if (v !== null || k in left) out[k] = merge(left[k], v, [...path, k]);
    return out;
  }
  if (Array.isArray(left) && Array.isArray(right)) return [...left, ...right];
  if (kindOf(left) !== kindOf(right)) throw invalid(`patch: cannot merge ${kindOf(right)} into ${kindOf(left)} at '${path.join('.')}'`);
  return right;
}

// --- writing back

function deepEqual(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((v, i) => deepEqual(v, b[i]));
  if (isObject(a)) {
    if (!isObject(b)) return false;
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => k in b && deepEqual(a[k], b[k]));
  }
  return false;
}

/** The indentation the original text uses, so that a changed document is written back the same way. */
function styleOf(text: string): YAML.ToStringOptions {
  const lines = text.split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
  const indents = lines.map((l) => l.length - l.trimStart().length).filter((n) => n > 0);
  const indent = Math.min(8, Math.max(2, indents.length > 0 ? Math.min(...indents) : 2));
  let indentSeq = true;
  for (let i = 0; i + 1 < lines.length; i++) {
    const key = /^(\s*)[^\s-][^:]*:\s*$/.exec(lines[i] ?? '');
    const item = /^(\s*)- /.exec(lines[i + 1] ?? '');
    if (key?.[1] !== undefined && item?.[1] !== undefined) {
      indentSeq = item[1].length > key[1].length;
      break;
    }
  }
  return { indent, indentSeq, lineWidth: 0, flowCollectionPadding: /\{ \S/.test(text) };
}

function render(text: string, docs: readonly ConfigDoc[]): string {
  const options = styleOf(text);
  let out = '';
  for (const d of docs) {
    let piece: string;
    if (d.node !== undefined && d.source !== undefined && deepEqual(d.original, d.value)) piece = d.source;
    else if (d.node !== undefined) {
      d.node.contents = reconcile(d.node, d.node.contents, d.value) as typeof d.node.contents;
      piece = d.node.toString(options);
    } else piece = new YAML.Document(d.value).toString(options);
    if (out !== '' && !out.endsWith('\n')) out += '\n';
    if (out !== '' && !/^---(\s|$)/.test(piece)) out += '---\n';
    out += piece;
  }
  return out;
}

/** The node for `value`, reusing `node` and its children (and their comments) wherever they already hold it. */
function reconcile(doc: YAML.Document, node: unknown, value: Json): unknown {
  const current = YAML.isNode(node) ? (node.toJS(doc) as Json) : undefined;
  if (current !== undefined && deepEqual(current, value)) return node;
  if (YAML.isMap(node) && isObject(value)) {
    for (const pair of [...node.items]) {
      const key = YAML.isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      if (!(key in value)) node.delete(pair.key);
      else pair.value = reconcile(doc, pair.value, value[key] ?? null);
    }
    for (const [k, v] of Object.entries(value)) if (!node.has(k)) node.set(doc.createNode(k), doc.createNode(v));
    return node;
  }
  if (YAML.isSeq(node) && Array.isArray(value)) {
    node.items = reconcileList(doc, node.items, value);
    return node;
  }
  if (YAML.isScalar(node) && !isObject(value) && !Array.isArray(value) && typeof node.value === typeof value) {
    node.value = value;
    return node;
  }
  const fresh = doc.createNode(value);
  if (YAML.isNode(node)) {
    fresh.comment = node.comment;
    fresh.commentBefore = node.commentBefore;
  }
  return fresh;
}

/** Items of a list: those equal to an old one keep its node (a longest common subsequence), the others are paired in order. */
function reconcileList(doc: YAML.Document, items: unknown[], values: Json[]): unknown[] {
  const old = items.map((n) => (YAML.isNode(n) ? (n.toJS(doc) as Json) : (n as Json)));
  const n = old.length;
  const m = values.length;
  const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      const row = lcs[i] ?? [];
      row[j] = deepEqual(old[i], values[j]) ? (lcs[i + 1]?.[j + 1] ?? 0) + 1 : Math.max(lcs[i + 1]?.[j] ?? 0, row[j + 1] ?? 0);
    }
  }
  const out: unknown[] = [];
  let i = 0;
  let j = 0;
  const unmatchedOld: number[] = [];
  while (j < m) {
    if (i < n && deepEqual(old[i], values[j])) {
      out.push(items[i]);
      unmatchedOld.length = 0;
      i++;
      j++;
    } else if (i < n && (lcs[i + 1]?.[j] ?? 0) >= (lcs[i]?.[j + 1] ?? 0)) {
      unmatchedOld.push(i++);
    } else {
      // A new item: it takes the place (and comments) of an old item dropped just before it, if any.
      const reuse = unmatchedOld.shift();
      out.push(reuse !== undefined ? reconcile(doc, items[reuse], values[j] ?? null) : doc.createNode(values[j]));
      j++;
    }
  }
  return out;
}
