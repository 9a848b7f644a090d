// `npm ci` must not warn EBADENGINE on a Node that package.json's `engines` admits: every installed package's own
// `engines.node` must take the lowest version of each range we declare.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = process.cwd();
type Version = [number, number, number];

function parseVersion(text: string): Version | undefined {
  const m = /^v?(\d+)(?:\.(\d+|\*|x))?(?:\.(\d+|\*|x))?$/.exec(text.trim());
  if (m === null) return undefined;
  const part = (s: string | undefined): number => (s === undefined || s === '*' || s === 'x' ? 0 : Number(s));
  return [part(m[1]), part(m[2]), part(m[3])];
}

function compare(a: Version, b: Version): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

/** Whether `v` satisfies one comparator of an npm range (the forms found in our lock file); throws on others. */
function satisfiesComparator(v: Version, comparator: string): boolean {
  if (comparator === '*' || comparator === '') return true;
  const m = /^(>=|<=|>|<|\^|~|=)?\s*(.+)$/.exec(comparator);
  const base = m?.[2] === undefined ? undefined : parseVersion(m[2]);
  if (m === null || base === undefined) throw new Error(`cannot read the engine range part ${JSON.stringify(comparator)}`);
  const op = m[1] ?? (m[2]?.includes('*') === true || m[2]?.includes('x') === true ? 'wild' : '=');
  const c = compare(v, base);
  switch (op) {
    case '>=': return c >= 0;
    case '>': return c > 0;
    case '<=': return c <= 0;
    case '<': return c < 0;
    case '^': return c >= 0 && v[0] === base[0];
    case '~': return c >= 0 && v[0] === base[0] && v[1] === base[1];
    case 'wild': return v[0] === base[0];
    default: return c === 0;
  }
}

function satisfies(v: Version, range: string): boolean {
  return range.split('||').some((alt) => {
    // ">= 12.0.0" is one comparator with a space inside.
    const parts = alt.trim().replace(/(>=|<=|>|<|\^|~|=)\s+/g, '$1').split(/\s+/);
    return parts.every((p) => satisfiesComparator(v, p));
  });
}

/** The lowest version each alternative of our own range admits, e.g. "^20.19.0 || >=22.12.0" -> 20.19.0, 22.12.0. */
function lowestAdmitted(range: string): Version[] {
  return range.split('||').map((alt) => {
    const first = alt.trim().replace(/^(>=|\^|~)\s*/, '');
    const v = parseVersion(first);
    if (v === undefined) throw new Error(`cannot read our engine range ${JSON.stringify(range)}`);
    return v;
  });
}

describe('engines', () => {
  it('every installed package runs on the lowest Node versions package.json admits (npm ci has no EBADENGINE)', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines?: { node?: string } };
    const ours = pkg.engines?.node;
    expect(ours).toBeDefined();
    const lows = lowestAdmitted(ours ?? '');
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { engines?: unknown }> };
    const refused: string[] = [];
    let checked = 0;
    for (const [path, entry] of Object.entries(lock.packages)) {
      // Only what npm installed here: optional packages for other platforms are never checked by npm ci.
      if (path === '' || !existsSync(join(ROOT, path))) continue;
      const engines = entry.engines;
      const node = typeof engines === 'object' && engines !== null && 'node' in engines ? engines.node : undefined;
      if (typeof node !== 'string') continue;
      checked++;
      for (const low of lows) if (!satisfies(low, node)) refused.push(`${path} (node ${node}) refuses ${low.join('.')}`);
    }
    expect(checked).toBeGreaterThan(10);
    expect(refused).toEqual([]);
  });

  it('reads the ranges it checks the way npm does', () => {
    expect(satisfies([20, 19, 0], '^20.19.0 || >=22.12.0')).toBe(true);
    expect(satisfies([21, 0, 0], '^20.19.0 || >=22.12.0')).toBe(false);
    expect(satisfies([20, 19, 0], '>=22')).toBe(false);
    expect(satisfies([20, 19, 0], '>= 12.0.0')).toBe(true);
    expect(satisfies([20, 19, 0], '6.* || 8.* || >= 10.*')).toBe(true);
    expect(satisfies([9, 0, 0], '6.* || 8.* || >= 10.*')).toBe(false);
    expect(satisfies([20, 15, 0], '>= 20.16.0')).toBe(false);
    expect(lowestAdmitted('>=20')).toEqual([[20, 0, 0]]);
  });
});
