// Label and ID query semantics, as the reference runtime defines them.
import { describe, expect, it } from 'vitest';
import { compileSelector, parseQuantity } from '../server/store/query.js';
import type { Metadata } from '../shared/resource.js';
import { LabelOp, type WireLabelTerm } from '../shared/wire.js';

function md(id: string, labels: Record<string, string>): Metadata {
  const t = new Date(0);
  return { namespace: 'n', type: 'T.x.y', id, version: 1, owner: '', phase: 'running', created: t, updated: t, labels, annotations: {}, finalizers: [] };
}
const term = (key: string, op: LabelOp, value: string[] = [], invert = false): WireLabelTerm => ({ key, op, value, invert });
const matches = (terms: WireLabelTerm[], labels: Record<string, string>) => compileSelector([{ terms }], null).matches(md('x', labels));

describe('label terms', () => {
  it.each([
    ['EXISTS present', [term('a', LabelOp.EXISTS)], { a: '' }, true],
    ['EXISTS missing', [term('a', LabelOp.EXISTS)], {}, false],
    ['EXISTS inverted missing', [term('a', LabelOp.EXISTS, [], true)], {}, true],
    ['NOT_EXISTS missing', [term('a', LabelOp.NOT_EXISTS)], {}, true],
    ['EQUAL', [term('a', LabelOp.EQUAL, ['1'])], { a: '1' }, true],
    ['EQUAL missing inverted', [term('a', LabelOp.EQUAL, ['1'], true)], {}, true],
    ['IN', [term('a', LabelOp.IN, ['1', '2'])], { a: '2' }, true],
    ['IN missing', [term('a', LabelOp.IN, ['1'])], {}, false],
    ['LT bytewise', [term('a', LabelOp.LT, ['b'])], { a: 'a' }, true],
    ['LT bytewise 10 < 9', [term('a', LabelOp.LT, ['9'])], { a: '10' }, true],
    ['LTE equal', [term('a', LabelOp.LTE, ['b'])], { a: 'b' }, true],
    ['LT missing inverted stays false', [term('a', LabelOp.LT, ['b'], true)], {}, false],
    ['LT_NUMERIC 9 < 10', [term('a', LabelOp.LT_NUMERIC, ['10'])], { a: '9' }, true],
    ['LT_NUMERIC suffixes 1Ki < 1k? no', [term('a', LabelOp.LT_NUMERIC, ['1k'])], { a: '1Ki' }, false],
    ['LTE_NUMERIC 1k <= 1000', [term('a', LabelOp.LTE_NUMERIC, ['1000'])], { a: '1k' }, true],
    ['LT_NUMERIC non-numeric inverted stays false', [term('a', LabelOp.LT_NUMERIC, ['10'], true)], { a: 'x' }, false],
    ['AND of terms', [term('a', LabelOp.EXISTS), term('b', LabelOp.EQUAL, ['2'])], { a: '1', b: '3' }, false],
  ] as const)('%s', (_name, terms, labels, want) => {
    expect(matches([...terms], labels)).toBe(want);
  });

  it('ORs label queries', () => {
    const sel = compileSelector([{ terms: [term('a', LabelOp.EXISTS)] }, { terms: [term('b', LabelOp.EXISTS)] }], null);
    expect([sel.matches(md('1', { a: '' })), sel.matches(md('2', { b: '' })), sel.matches(md('3', { c: '' }))]).toEqual([true, true, false]);
  });

  it('parses quantities with decimal and binary suffixes', () => {
    expect([parseQuantity('2k'), parseQuantity('2Ki'), parseQuantity('3M'), parseQuantity('1pi'), parseQuantity('x'), parseQuantity('1.5k')]).toEqual([
      2000n, 2048n, 3_000_000n, 1024n ** 5n, undefined, undefined,
    ]);
  });
});

describe('ID queries', () => {
  it('match unanchored with RE2 semantics', () => {
    const sel = compileSelector([], { regexp: 'nginx' });
    expect([sel.matches(md('default-nginx', {})), sel.matches(md('etcd', {}))]).toEqual([true, false]);
  });

  it('reject Perl-only syntax that RE2 does not have, and overlong patterns', () => {
    expect(() => compileSelector([], { regexp: '(a)\\1' })).toThrow(/invalid ID query regexp/);
    expect(() => compileSelector([], { regexp: 'a'.repeat(5000) })).toThrow(/too long/);
  });

  it('run in linear time on a pattern that makes backtracking engines explode', () => {
    const sel = compileSelector([], { regexp: '^(a+)+$' });
    expect(sel.matches(md('a'.repeat(5000) + 'b', {}))).toBe(false);
  });
});
