// yaml_spec's fast writer against the `yaml` package it stands in for: the same text for every JSON value.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { packageYaml, toYaml } from '../server/watch/yaml-spec.js';
import { pod, podStatus } from './harness.js';

const TRICKY = [
  '', ' ', 'a b', ' a', 'a ', 'a:', 'a: b', 'a:b', 'a #b', 'a#b', '#a', '-', '- a', '-a', '?', '? a', '?a', ':', ':a', '@a', 'a@b', '`a', '%a', '!a', '&a', '*a', '|', '>', "'", '"', "it's", 'a"b', 'a\\b', '[a]', '{a}', 'a,b',
  'y', 'Y', 'n', 'N', 'yes', 'Yes', 'YES', 'yEs', 'no', 'No', 'NO', 'true', 'True', 'TRUE', 'tRUE', 'false', 'False', 'FALSE', 'on', 'On', 'ON', 'off', 'Off', 'OFF', 'null', 'Null', 'NULL', 'nULL', '~',
  '0', '1', '-1', '+1', '01', '0x1F', '0o17', '0b101', '1_000', '1:20', '1:20:30', '1.5', '1e3', '1E3', '.5', '.inf', '-.inf', '.nan', '.NaN', '2026-01-01', '2026-11-25T04:00:00Z', '10.5.0.2', '::1', 'fe80::1', 'v1.34.1',
  'e0', 'E5', 'e+3', 'e-10', 'e', 'ee1', 'e1x', '<<', 'a<<',
  'a\nb', 'a\n', '\na', 'a\n\nb', 'a \nb', 'a\tb', '\t', 'a\rb', 'a\u0000b', 'a\u007fb', 'a\u0085b', 'é', 'naïve', '日本語', '😀', 'a😀', '\ud800', '---', '--- a', '...', '... a', 'a---', '<<', '=', 'a=b',
  'registry.k8s.io/kube-apiserver:v1.34.1', 'containerd://0123abcd', 'sha256:abcd', 'http://x/y?z=1&w=2', 'x'.repeat(127), 'x'.repeat(128), 'x'.repeat(129), 'x'.repeat(300), 'x'.repeat(1100), `${'x'.repeat(200)} y`,
];

const NUMBERS = [0, -0, 1, -1, 1.5, -2.25, 0.1 + 0.2, 1e21, 1e-7, 123456789012, 2 ** 53, -(2 ** 53), Number.MAX_VALUE, Number.MIN_VALUE];

function same(v: unknown): void {
  expect(toYaml(v)).toBe(packageYaml(v));
}

describe('yaml_spec', () => {
  it('writes every tricky string, as a value, a list item and a key, as the package does', () => {
    for (const s of TRICKY) {
      same({ k: s });
      same([s]);
      same({ [s]: 1 });
      same({ [s]: { [s]: [s, { [s]: s }] } });
    }
  });

  it('writes numbers, booleans, nulls and empty collections as the package does', () => {
    for (const n of NUMBERS) same({ n, l: [n] });
    same({ t: true, f: false, z: null, m: {}, l: [], nested: { m: {}, l: [[], {}, null] } });
    same({ '1': 'a', b: 'c', '0': 'd', __proto__x: 1 });
    same(JSON.parse('{"__proto__": {"a": 1}, "b": [1]}'));
  });

  it('writes nested maps and lists as the package does', () => {
    same({ a: [[1, 2], [[3]], [{ b: 1, c: [4, { d: [] }] }]], e: { f: { g: [{ h: { i: 'j' } }] } } });
    same([{ a: 1 }, [1, [2, [3]]], 'x', { b: [{ c: {} }] }]);
    same(pod('nginx'));
    same(podStatus(true));
    same(podStatus(false));
  });

  it('leaves scalars and empty documents to the package', () => {
    for (const v of ['text', 'a\nb', 1, true, null, {}, []]) same(v);
  });

  it('writes any JSON value as the package does', () => {
    const tricky = fc.constantFrom(...TRICKY);
    const str = fc.oneof(fc.string(), fc.string({ unit: 'grapheme' }), tricky, fc.stringMatching(/^[A-Za-z][A-Za-z0-9_.\/@+:-]{0,20}$/), fc.stringMatching(/^[eEyYnN][-+]?[0-9eEsSoO]{0,3}$/));
    const value = fc.letrec((tie) => ({
      json: fc.oneof({ depthSize: 'small' }, str, fc.double({ noNaN: true, noDefaultInfinity: true }), fc.integer(), fc.boolean(), fc.constant(null), tie('list'), tie('map')),
      list: fc.array(tie('json'), { maxLength: 5 }),
      map: fc.dictionary(str, tie('json'), { maxKeys: 5 }),
    })).json;
    fc.assert(
      fc.property(value, (v) => {
        // Through JSON, as a stored spec is.
        const spec = JSON.parse(JSON.stringify(v)) as unknown;
        expect(toYaml(spec)).toBe(packageYaml(spec));
      }),
      { seed: 22, numRuns: 3000 },
    );
  });
});
