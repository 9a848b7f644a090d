// cosictl output formats, as talosctl prints them: table, yaml, json (objects or one array), jsonpath.
import YAML from 'yaml';
import type { Json } from '../../shared/wire.js';
import { compileTemplate, type Template } from '../jsonpath.js';
import type { CosiResource, ResourceDefinition, WatchEventType } from '../resource.js';

export type OutputFormat = { kind: 'table' } | { kind: 'yaml' } | { kind: 'json'; array: boolean } | { kind: 'jsonpath'; template: Template };

export function parseOutputFormat(value: string, jsonArray: boolean): OutputFormat {
  if (value === 'table') return { kind: 'table' };
  if (value === 'yaml') return { kind: 'yaml' };
  if (value === 'json') return { kind: 'json', array: jsonArray };
  if (value.startsWith('jsonpath=')) return { kind: 'jsonpath', template: compileTemplate(value.slice('jsonpath='.length)) };
  throw new Error(`unknown output format ${JSON.stringify(value)}: use table, yaml, json or jsonpath=EXPR`);
}

/** One resource as a printer sees it; `event` only in watch mode. */
export interface Row {
  node: string;
  event?: WatchEventType;
  resource: CosiResource;
  /** The ID the table shows when it is not `metadata.id` (the fleet view's, without its `<node>/`). */
  id?: string;
}

/** What the table prints beyond the resource's own columns. */
export interface TableOptions {
  /**
   * The fleet view's STALE column: asked once, when the header is printed (undefined: no such column), then asked
   * for each row as it is printed, so a watch's later rows show the state of that moment.
   */
  stale?: () => ((row: Row) => string) | undefined;
}

export interface Printer {
  /** In watch mode, rows before BOOTSTRAPPED are held so the first screen is aligned. */
  add(row: Row): void;
  /** Prints what is held (end of a list, or the BOOTSTRAPPED event of a watch). */
  flush(): void;
  /** The end of output (closes a JSON array). */
  close(): void;
}

/** The map talosctl prints for -o yaml/json/jsonpath. */
export function resourceDocument(row: Row): { [key: string]: Json } {
  const md = row.resource.metadata;
  const metadata: { [key: string]: Json } = {
    namespace: md.namespace,
    type: md.type,
    id: md.id,
    version: md.version,
    owner: md.owner,
    phase: md.phase,
    created: md.created.toISOString(),
    updated: md.updated.toISOString(),
  };
  if (Object.keys(md.labels).length > 0) metadata['labels'] = { ...md.labels };
  if (Object.keys(md.annotations).length > 0) metadata['annotations'] = { ...md.annotations };
  if (md.finalizers.length > 0) metadata['finalizers'] = [...md.finalizers];
  return {
    node: row.node,
    ...(row.event !== undefined ? { event: row.event } : {}),
    metadata,
    spec: row.resource.spec,
  };
}

export function createPrinter(format: OutputFormat, def: ResourceDefinition, watch: boolean, write: (s: string) => void, table: TableOptions = {}): Printer {
  switch (format.kind) {
    case 'table':
      return new TablePrinter(def, watch, write, table);
    case 'yaml': {
      let first = true;
      return simplePrinter((row) => {
        const doc = YAML.stringify(resourceDocument(row), { indent: 4 });
        write(`${first ? '' : '---\n'}${doc}`);
        first = false;
      });
    }
    case 'json': {
      if (!format.array) return simplePrinter((row) => write(JSON.stringify(resourceDocument(row), null, 4) + '\n'));
      let count = 0;
      return {
        add(row) {
          const body = JSON.stringify(resourceDocument(row), null, 4).replace(/^/gm, '    ');
          write(`${count === 0 ? '[\n' : ',\n'}${body}`);
          count++;
        },
        flush() {},
        close() {
          write(count === 0 ? '[]\n' : '\n]\n');
        },
      };
    }
    case 'jsonpath':
      return simplePrinter((row) => write(format.template.render(resourceDocument(row)) + '\n'));
  }
}

function simplePrinter(print: (row: Row) => void): Printer {
  return { add: print, flush() {}, close() {} };
}

const PADDING = 3;

class TablePrinter implements Printer {
  /** Rows before the first flush; their cells are made when printed, with the STALE state of that moment. */
  private held: Row[] | undefined = [];
  private widths: number[] = [];
  private readonly columns: { name: string; template: Template }[];
  private headerPrinted = false;
  /** The STALE cell of a row, once the header has settled that there is a STALE column. */
  private staleOf: ((row: Row) => string) | undefined;
  /** The STALE column's index among the print columns when the type has its own (StaticPodStatus's), else -1. */
  private readonly ownStale: number;

  constructor(
    private readonly def: ResourceDefinition,
    private readonly watch: boolean,
    private readonly write: (s: string) => void,
    private readonly options: TableOptions,
  ) {
    this.columns = def.printColumns.map((c) => ({ name: c.name.toUpperCase(), template: compileTemplate(c.jsonPath) }));
    this.ownStale = this.columns.findIndex((c) => c.name === 'STALE');
  }

  private header(): string[] {
    // A type with a STALE column of its own shares it with the fleet's: two columns of one name would read as one.
    const stale = this.staleOf !== undefined && this.ownStale < 0 ? ['STALE'] : [];
    return ['NODE', ...(this.watch ? ['*'] : []), 'NAMESPACE', 'TYPE', 'ID', 'VERSION', ...this.columns.map((c) => c.name), ...stale];
  }

  private cells(row: Row): string[] {
    const md = row.resource.metadata;
    const mark = row.event === 'created' ? '+' : row.event === 'destroyed' ? '-' : ' ';
    const extra = this.columns.map((c) => {
      try {
        return c.template.render(row.resource.spec);
      } catch {
        return '';
      }
    });
    if (this.staleOf !== undefined) {
      // The fleet's word wins where it has one: the row is as the fleet last saw it, whatever the row says of itself.
      const stale = this.staleOf(row);
      if (this.ownStale < 0) extra.push(stale);
      else if (stale !== '') extra[this.ownStale] = stale;
    }
    // A fleet row of no node (a resource definition) still has a NODE cell, so the columns split on blanks.
    return [row.node === '' ? '-' : row.node, ...(this.watch ? [mark] : []), md.namespace, this.def.displayType, row.id ?? md.id, String(md.version), ...extra];
  }

  add(row: Row): void {
    if (this.held !== undefined) this.held.push(row);
    else this.print([this.cells(row)]);
  }

  flush(): void {
    if (!this.headerPrinted) this.staleOf = this.options.stale?.();
    const rows = (this.held ?? []).map((r) => this.cells(r));
    this.held = undefined;
    const all = this.headerPrinted ? rows : [this.header(), ...rows];
    this.headerPrinted = true;
    this.print(all);
  }

  close(): void {
    if (this.held !== undefined) this.flush();
  }

  private print(rows: string[][]): void {
    for (const line of alignRows(rows, this.widths)) this.write(line + '\n');
  }
}

/**
 * Table lines as talosctl's tabwriter aligns them: each column padded to its widest cell (in `widths`, which grows
 * across calls so later rows of a watch line up with the first screen) plus 3 spaces; no trailing blanks.
 */
export function alignRows(rows: string[][], widths: number[] = []): string[] {
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd((widths[i] ?? 0) + PADDING))).join('').trimEnd());
}
