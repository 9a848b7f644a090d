// Label and ID queries: which resources a List or Watch selects.
import { RE2JS } from 're2js';
import { CosiError } from '../../shared/errors.js';
import type { Metadata } from '../../shared/resource.js';
import { LabelOp, type WireIdQuery, type WireLabelQuery, type WireLabelTerm } from '../../shared/wire.js';

/** A compiled selector: OR of label queries (each an AND of terms), AND an optional ID regexp. */
export interface Selector {
  matches(md: Metadata): boolean;
  /** True when everything matches (no label or ID query). */
  readonly everything: boolean;
}

export const MATCH_ALL: Selector = { matches: () => true, everything: true };

// Limits keep a hostile query from costing more than a normal one.
export const QUERY_LIMITS = {
  maxRegexpLength: 4096,
  maxLabelQueries: 64,
  maxTermsPerQuery: 256,
  maxValuesPerTerm: 1024,
};

export function compileSelector(labelQueries: readonly WireLabelQuery[], idQuery: WireIdQuery | null | undefined): Selector {
  if (labelQueries.length > QUERY_LIMITS.maxLabelQueries) {
    throw new CosiError('invalid-argument', `too many label queries: ${labelQueries.length} > ${QUERY_LIMITS.maxLabelQueries}`);
  }
  const queries = labelQueries.map(compileLabelQuery);
  const idMatch = compileIdQuery(idQuery);
  if (queries.length === 0 && idMatch === undefined) return MATCH_ALL;
  return {
    everything: false,
    matches(md) {
      if (idMatch !== undefined && !idMatch(md.id)) return false;
      if (queries.length === 0) return true;
      return queries.some((q) => q(md.labels));
    },
  };
}

function compileIdQuery(q: WireIdQuery | null | undefined): ((id: string) => boolean) | undefined {
  const pattern = q?.regexp ?? '';
  if (pattern === '') return undefined;
  if (pattern.length > QUERY_LIMITS.maxRegexpLength) {
    throw new CosiError('invalid-argument', `ID query regexp is too long: ${pattern.length} > ${QUERY_LIMITS.maxRegexpLength} bytes`);
  }
  let re: RE2JS;
  try {
    re = RE2JS.compile(pattern);
  } catch (err) {
    throw new CosiError('invalid-argument', `invalid ID query regexp: ${err instanceof Error ? err.message : String(err)}`);
  }
  // Unanchored, as Go's regexp.MatchString.
  return (id) => re.matcher(id).find();
}

type Labels = Readonly<Record<string, string>>;

function compileLabelQuery(q: WireLabelQuery): (labels: Labels) => boolean {
  if (q.terms.length > QUERY_LIMITS.maxTermsPerQuery) {
    throw new CosiError('invalid-argument', `too many terms in a label query: ${q.terms.length} > ${QUERY_LIMITS.maxTermsPerQuery}`);
  }
  const terms = q.terms.map(compileTerm);
  return (labels) => terms.every((t) => t(labels));
}

function compileTerm(t: WireLabelTerm): (labels: Labels) => boolean {
  if (t.value.length > QUERY_LIMITS.maxValuesPerTerm) {
    throw new CosiError('invalid-argument', `too many values in label term ${JSON.stringify(t.key)}: ${t.value.length}`);
  }
  const has = (labels: Labels): string | undefined => (Object.hasOwn(labels, t.key) ? labels[t.key] : undefined);
  const first = (): string => {
    const v = t.value[0];
    if (v === undefined) throw new CosiError('invalid-argument', `label term ${JSON.stringify(t.key)}: operator ${LabelOp[t.op]} needs a value`);
    return v;
  };
  // Presence-style operators: a missing label is false, true when inverted.
  const presence = (test: (v: string) => boolean, invert: boolean) => (labels: Labels) => {
    const v = has(labels);
    const ok = v !== undefined && test(v);
    return invert ? !ok : ok;
  };
  // Comparisons: a missing or non-numeric label is false even when inverted.
  const comparison = (test: (v: string) => boolean | undefined, invert: boolean) => (labels: Labels) => {
    const v = has(labels);
    if (v === undefined) return false;
    const ok = test(v);
    if (ok === undefined) return false;
    return invert ? !ok : ok;
  };
  switch (t.op) {
    case LabelOp.EXISTS:
      return presence(() => true, t.invert);
    case LabelOp.NOT_EXISTS:
      return presence(() => true, !t.invert);
    case LabelOp.EQUAL: {
      const want = first();
      return presence((v) => v === want, t.invert);
    }
    case LabelOp.IN: {
      const set = new Set(t.value);
      return presence((v) => set.has(v), t.invert);
    }
    case LabelOp.LT: {
      const want = first();
      return comparison((v) => compareBytes(v, want) < 0, t.invert);
    }
    case LabelOp.LTE: {
      const want = first();
      return comparison((v) => compareBytes(v, want) <= 0, t.invert);
    }
    case LabelOp.LT_NUMERIC:
    case LabelOp.LTE_NUMERIC: {
      const want = parseQuantity(first());
      if (want === undefined) throw new CosiError('invalid-argument', `label term ${JSON.stringify(t.key)}: ${JSON.stringify(first())} is not a number`);
      const orEqual = t.op === LabelOp.LTE_NUMERIC;
      return comparison((v) => {
        const n = parseQuantity(v);
        if (n === undefined) return undefined;
        return orEqual ? n <= want : n < want;
      }, t.invert);
    }
    default:
      throw new CosiError('invalid-argument', `unknown label operator ${String(t.op)}`);
  }
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

const SUFFIXES: Record<string, bigint> = {
  '': 1n,
  k: 1000n,
  m: 1000n ** 2n,
  g: 1000n ** 3n,
  t: 1000n ** 4n,
  p: 1000n ** 5n,
  ki: 1024n,
  mi: 1024n ** 2n,
  gi: 1024n ** 3n,
  ti: 1024n ** 4n,
  pi: 1024n ** 5n,
};

/** An integer with an optional k..p (x1000^n) or ki..pi (x1024^n) suffix, case-insensitive. */
export function parseQuantity(s: string): bigint | undefined {
  const m = /^([+-]?\d{1,30})([a-zA-Z]{0,2})$/.exec(s.trim());
  if (m === null) return undefined;
  const mult = SUFFIXES[(m[2] ?? '').toLowerCase()];
  if (mult === undefined) return undefined;
  return BigInt(m[1] ?? '0') * mult;
}
