// A spec's yaml_spec text, as the `yaml` package writes it with cosid's options, at a fraction of its cost: the
// block structure of JSON maps and lists is written here, and each scalar as the package writes it (strings that
// are plain for certain without asking it, any other scalar asked once and remembered). Anything this writer is not
// certain to write as the package does (a multi-line string, a long key, a value that is not JSON) goes to the
// package whole. test/yaml-spec.test.ts holds the two to the same output.
import YAML, { type CreateNodeOptions, type DocumentOptions, type SchemaOptions, type ToStringOptions } from 'yaml';

/**
 * The options of yaml_spec. The text is what talosctl-like clients have always read from cosid: block style,
 * two-space indent, no line folding, keys in insertion order, no anchors, single quotes where quoting is needed.
 * The core (YAML 1.2) schema with YAML 1.1 as `compat` quotes every string that either a 1.1 parser (yes/no/on/off,
 * timestamps, `1:20`) or a 1.2 parser (`0o17`) would read as something else, so Go's yaml.v3 and yaml.v2 alike get
 * the strings back.
 */
export const YAML_SPEC: DocumentOptions & SchemaOptions & CreateNodeOptions & ToStringOptions = {
  schema: 'core',
  compat: 'yaml-1.1',
  aliasDuplicateObjects: false,
  indent: 2,
  lineWidth: 0,
  singleQuote: true,
};

/** Thrown inside the fast writer when the package must write the whole document. */
class AskThePackage {}
const ASK = new AskThePackage();

/**
 * Strings that no schema reads as anything but a string and that need no quoting: a letter, then letters, digits and
 * `_ . / @ + - :`, not ending in `:` (no `: ` can occur without a space). Of those, only YAML 1.1's booleans, the
 * nulls and YAML 1.1's floats without digits before the exponent (`e5`) mean something else (every other tag of
 * both schemas wants a digit, a sign, a dot or `<<` first); they are left to the package.
 */
const PLAIN = /^[A-Za-z][A-Za-z0-9_./@+:-]*$/;
const WORDS = new Set(['y', 'n', 'yes', 'no', 'true', 'false', 'on', 'off', 'null']);
const EXPONENT = /^[eE][-+]?[0-9]+$/;
const MAX_PLAIN = 128;

function plain(s: string): boolean {
  return s.length <= MAX_PLAIN && PLAIN.test(s) && !s.endsWith(':') && !WORDS.has(s.toLowerCase()) && !EXPONENT.test(s);
}

/** Scalars the package wrote, as a map value (or list item) and as a key; cleared when full. */
const VALUES = new Map<string, string>();
const KEYS = new Map<string, string>();
const MAX_REMEMBERED = 4096;
const MAX_REMEMBERED_LENGTH = 128;

/** A line starting like a document marker or directive: the package writes such strings by their depth. */
const MARKER = /^(?:%|---|\.\.\.)/;

function remembered(cache: Map<string, string>, s: string, write: (s: string) => string): string {
  if (MARKER.test(s)) throw ASK;
  let text = cache.get(s);
  if (text === undefined) {
    text = write(s);
    if (s.length <= MAX_REMEMBERED_LENGTH) {
      if (cache.size >= MAX_REMEMBERED) cache.clear();
      cache.set(s, text);
    }
  }
  return text;
}

/** The package's text for `s` as a map value; "\n" (no scalar's text) when it spans lines: the caller asks the package. */
function valueText(s: string): string {
  const line = YAML.stringify({ k: s }, YAML_SPEC);
  // "k: <text>\n"
  if (!line.startsWith('k: ') || line.indexOf('\n') !== line.length - 1) return '\n';
  return line.slice(3, -1);
}

/** The same for `s` as a key. */
function keyText(s: string): string {
  const line = YAML.stringify({ [s]: null }, YAML_SPEC);
  // "<text>: null\n"
  if (!line.endsWith(': null\n') || line.indexOf('\n') !== line.length - 1) return '\n';
  return line.slice(0, -': null\n'.length);
}

function scalar(v: unknown): string {
  switch (typeof v) {
    case 'string': {
      if (plain(v)) return v;
      const text = remembered(VALUES, v, valueText);
      if (text === '\n') throw ASK;
      return text;
    }
    case 'number':
      // As the package writes numbers (JSON's form); non-finite ones are not JSON, and it writes -0 as such.
      if (!Number.isFinite(v) || Object.is(v, -0)) throw ASK;
      return JSON.stringify(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'object':
      if (v === null) return 'null';
      if (Array.isArray(v) && v.length === 0) return '[]';
      if (isPlainObject(v) && isEmpty(v)) return '{}';
      throw ASK;
    default:
      throw ASK;
  }
}

function key(k: string): string {
  if (plain(k)) return k;
  const text = remembered(KEYS, k, keyText);
  if (text === '\n') throw ASK;
  return text;
}

function isPlainObject(v: object): v is Record<string, unknown> {
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

function isEmpty(v: Record<string, unknown>): boolean {
  for (const _ in v) return false;
  return true;
}

/** A non-empty map or list, to be written as a block. */
function isBlock(v: unknown): v is Record<string, unknown> | unknown[] {
  if (v === null || typeof v !== 'object') return false;
  if (Array.isArray(v)) return v.length > 0;
  return isPlainObject(v) && !isEmpty(v);
}

/** A block map, every line at `indent`. */
function mapText(m: Record<string, unknown>, indent: string): string {
  if (!isPlainObject(m)) throw ASK;
  let out = '';
  for (const k of Object.keys(m)) {
    const v = m[k];
    if (isBlock(v)) {
      out += `${indent}${key(k)}:\n`;
      // Lists under a key are indented too.
      out += Array.isArray(v) ? listText(v, `${indent}  `) : mapText(v, `${indent}  `);
    } else {
      out += `${indent}${key(k)}: ${scalar(v)}\n`;
    }
  }
  return out;
}

/** A block list, every item at `indent`; a map or list item starts on its dash's line. */
function listText(l: unknown[], indent: string): string {
  let out = '';
  const inner = `${indent}  `;
  for (const v of l) {
    if (isBlock(v)) {
      const block = Array.isArray(v) ? listText(v, inner) : mapText(v, inner);
      out += `${indent}- ${block.slice(inner.length)}`;
    } else {
      out += `${indent}- ${scalar(v)}\n`;
    }
  }
  return out;
}

/** The spec's yaml_spec: the package's text for it, written by the fast writer when it can. */
export function toYaml(spec: unknown): string {
  if (isBlock(spec)) {
    try {
      return Array.isArray(spec) ? listText(spec, '') : mapText(spec, '');
    } catch (err) {
      if (err !== ASK) throw err;
    }
  }
  return YAML.stringify(spec, YAML_SPEC);
}

/** The package's own text (tests hold toYaml to it). */
export function packageYaml(spec: unknown): string {
  return YAML.stringify(spec, YAML_SPEC);
}
