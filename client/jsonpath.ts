// Kubernetes-style JSONPath templates ("{.status.phase}", text around braces kept), as kubectl and talosctl take them.
// Expressions are evaluated by jsonpath-plus; this file only splits the template and formats the results.
import { JSONPath } from 'jsonpath-plus';
import { CosiError } from '../shared/errors.js';
import type { Json } from '../shared/wire.js';

type Part = { text: string } | { path: string; source: string };

export interface Template {
  /** Renders the template against one object; several results of one expression are joined by spaces. */
  render(data: Json): string;
}

export function compileTemplate(template: string): Template {
  const parts = split(template);
  return {
    render(data) {
      return parts
        .map((p) => {
          if ('text' in p) return p.text;
          let results: unknown[];
          try {
            results = JSONPath({ path: p.path, json: data as object, wrap: true }) as unknown[];
          } catch (err) {
            throw new CosiError('invalid-argument', `jsonpath ${p.source}: ${err instanceof Error ? err.message : String(err)}`);
          }
          return results.map(formatValue).join(' ');
        })
        .join('');
    },
  };
}

function formatValue(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v === undefined) return '';
  return JSON.stringify(v);
}

function split(template: string): Part[] {
  const parts: Part[] = [];
  let i = 0;
  while (i < template.length) {
    const open = template.indexOf('{', i);
    if (open < 0) {
      parts.push({ text: template.slice(i) });
      break;
    }
    if (open > i) parts.push({ text: template.slice(i, open) });
    const close = findClose(template, open);
    if (close < 0) throw new CosiError('invalid-argument', `jsonpath ${JSON.stringify(template)}: unclosed "{"`);
    const expr = template.slice(open + 1, close).trim();
    if (/^(range|end)\b/.test(expr)) throw new CosiError('invalid-argument', `jsonpath ${JSON.stringify(template)}: {range} is not supported`);
    parts.push({ path: toJsonPath(expr, template), source: `{${expr}}` });
    i = close + 1;
  }
  // A bare expression without braces is accepted too (".metadata.id").
  const only = parts[0];
  if (parts.length === 1 && only !== undefined && 'text' in only && /^[.$@[]/.test(template.trim())) {
    return [{ path: toJsonPath(template.trim(), template), source: template }];
  }
  return parts;
}

/** The index of the "}" closing the "{" at `open`, past quoted text (filters hold "=" and "}"); -1 if none. */
export function findClose(s: string, open: number): number {
  let quote: string | undefined;
  for (let i = open + 1; i < s.length; i++) {
    const c = s[i];
    if (quote !== undefined) {
      if (c === '\\') i++;
      else if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '}') return i;
  }
  return -1;
}

function toJsonPath(expr: string, template: string): string {
  if (expr === '' || expr === '@' || expr === '.' || expr === '$') return '$';
  if (expr.startsWith('$')) return expr;
  if (expr.startsWith('.') || expr.startsWith('[')) return `$${expr}`;
  throw new CosiError('invalid-argument', `jsonpath ${JSON.stringify(template)}: expressions start with "." (for example {.spec})`);
}
