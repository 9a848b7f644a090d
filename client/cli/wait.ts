// cosictl wait: until a condition holds for every matching resource (or the one named) on every node, as
// `kubectl wait` does, built on the client library's informer.
//
// kubectl's semantics: the resources waited for are those that exist once every node has listed them (later ones
// are not waited for); each is reported `condition met` once, the first time it meets the condition, and is not
// looked at again; --for=delete succeeds at once for what does not exist; --for=create (kubectl 1.31) waits for one
// named resource to exist; with any other condition a named resource that does not exist is "not found" (exit 1) at
// once; a type without an ID that matches nothing is "no matching resources found" (exit 1) except for delete; a
// timeout is exit 1, naming what was not met.
import { CosiError } from '../../shared/errors.js';
import { DEFAULT_TIMEOUT_MS } from '../grpc-client.js';
import { createInformer, type Informer, type InformerChange } from '../informer.js';
import { compileTemplate, findClose, type Template } from '../jsonpath.js';
import type { NodeTarget } from '../nodes.js';
import type { CosiResource, Json, ResourceDefinition } from '../resource.js';
import { parseDuration } from './duration.js';
import { openTargets, type TargetOptions } from './get.js';
import { resourceDocument } from './output.js';

/** What --for asks for. */
export type WaitCondition =
  | { kind: 'delete' }
  /** The named resource exists (it may not yet when the wait starts). */
  | { kind: 'create' }
  /** A condition of the spec (`.conditions`, else `.status.conditions`) whose status is `status` (case-insensitive). */
  | { kind: 'condition'; name: string; status: string }
  /** A JSONPath on the resource as `get -o jsonpath` sees it; without a value, any non-empty result. */
  | { kind: 'jsonpath'; source: string; template: Template; value: string | undefined };

/** A --for or --timeout that cannot be used (main.ts turns it into a usage error). */
export class WaitArgumentError extends Error {
  override readonly name = 'WaitArgumentError';
}

const FOR_HELP = "--for create, --for delete, --for condition=NAME[=VALUE] or --for jsonpath='{.EXPR}'=VALUE";

export function parseWaitFor(value: string | undefined): WaitCondition {
  if (value === undefined || value === '') throw new WaitArgumentError(`wait needs a condition: ${FOR_HELP}`);
  if (value.toLowerCase() === 'delete') return { kind: 'delete' };
  if (value.toLowerCase() === 'create') return { kind: 'create' };
  if (value.startsWith('condition=')) {
    const rest = value.slice('condition='.length);
    const eq = rest.indexOf('=');
    const name = eq < 0 ? rest : rest.slice(0, eq);
    const status = eq < 0 ? 'True' : rest.slice(eq + 1);
    if (name === '' || status === '') throw new WaitArgumentError(`--for ${JSON.stringify(value)}: the condition needs a name (and a value after "="): condition=Ready, condition=Ready=False`);
    return { kind: 'condition', name, status };
  }
  if (value.startsWith('jsonpath=')) {
    const rest = value.slice('jsonpath='.length);
    const end = rest.startsWith('{') ? findClose(rest, 0) + 1 : rest.indexOf('=') < 0 ? rest.length : rest.indexOf('=');
    if (end <= 0) throw new WaitArgumentError(`--for ${JSON.stringify(value)}: unclosed "{" in the JSONPath`);
    const source = rest.slice(0, end);
    const tail = rest.slice(end);
    if (tail !== '' && !tail.startsWith('=')) throw new WaitArgumentError(`--for ${JSON.stringify(value)}: expected "=VALUE" after ${source}`);
    if (source === '' || source === '{}') throw new WaitArgumentError(`--for ${JSON.stringify(value)}: the JSONPath is empty; for example jsonpath='{.spec.phase}'=Running`);
    let template: Template;
    try {
      template = compileTemplate(source);
    } catch (err) {
      throw new WaitArgumentError(`--for ${JSON.stringify(value)}: ${err instanceof Error ? err.message : String(err)}`);
    }
    return { kind: 'jsonpath', source, template, value: tail === '' ? undefined : tail.slice(1) };
  }
  throw new WaitArgumentError(`unknown --for ${JSON.stringify(value)}: use ${FOR_HELP}`);
}


/** kubectl's "negative means wait for a week". */
export const WEEK_MS = 7 * 24 * 3_600_000;

/** A Go duration as kubectl's --timeout takes it ("2m", "1h30m", "500ms", "0"), in milliseconds; default 30 s. */
export function parseWaitTimeout(value: string | undefined): number {
  if (value === undefined) return 30_000;
  const ms = parseDuration(value);
  if (ms === undefined) throw new WaitArgumentError(`--timeout ${JSON.stringify(value)}: use a duration such as 30s, 2m, 1h30m (0: check once; negative: a week)`);
  return ms;
}

export interface WaitCliOptions extends TargetOptions {
  type: string;
  id: string | undefined;
  namespace: string | undefined;
  condition: WaitCondition;
  /** Milliseconds; 0: check once, once every node has listed; negative: a week. */
  timeoutMs: number;
}

/** With --timeout 0, how long the nodes may take to list before the one check. */
const CHECK_ONCE_SYNC_MS = 30_000;

export async function runWait(o: WaitCliOptions): Promise<number> {
  const { targets, labelOf } = await openTargets(o);
  try {
    const started = Date.now();
    const budget = o.timeoutMs < 0 ? WEEK_MS : o.timeoutMs === 0 ? CHECK_ONCE_SYNC_MS : o.timeoutMs;
    // The type's lookup is a call that produces an answer: --request-timeout's deadline, within the wait's own.
    const def = await resolveOnAny(targets, o.type, Math.min(budget, o.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS));
    return await new Wait(o, def, targets, labelOf, Math.max(0, budget - (Date.now() - started))).run();
  } finally {
    for (const t of targets) t.client.close();
  }
}

/** Resolves the type through the first node that answers. */
async function resolveOnAny(targets: NodeTarget[], typeName: string, timeoutMs: number): Promise<ResourceDefinition> {
  let last: unknown;
  for (const t of targets) {
    try {
      return await t.client.resolveType(typeName, { timeoutMs: Math.max(timeoutMs, 1) });
    } catch (err) {
      last = err;
      // "not registered" and "ambiguous" are answers, not outages.
      if (err instanceof CosiError && (err.kind === 'not-registered' || err.kind === 'ambiguous')) throw err;
    }
  }
  throw last;
}

/** One resource waited for on one node. */
interface Entry {
  readonly node: string;
  readonly id: string;
  met: boolean;
  /** What was last said of it ("condition Ready is False"), so that only changes are told. */
  observed: string | undefined;
}

/** What a resource shows of the condition, and whether it meets it. */
interface Observation {
  met: boolean;
  observed: string;
}

const MAX_NAMED = 20;

class Wait {
  private informer: Informer | undefined;
  private readonly entries = new Map<string, Entry>();
  private readonly synced = new Set<string>();
  private readonly streamed = new Set<string>();
  /** The last reason told for each node that is retrying: a retry for the same reason is not told again. */
  private readonly told = new Map<string, string>();
  private done = false;
  private resolve: (code: number) => void = () => {};
  private timer: NodeJS.Timeout | undefined;
  private readonly display: string;
  private readonly multi: boolean;

  constructor(
    private readonly o: WaitCliOptions,
    private readonly def: ResourceDefinition,
    private readonly targets: NodeTarget[],
    private readonly labelOf: (node: string) => string,
    private readonly budgetMs: number,
  ) {
    this.display = def.displayType.toLowerCase();
    this.multi = targets.length > 1;
  }

  run(): Promise<number> {
    return new Promise<number>((resolve) => {
      this.resolve = resolve;
      this.informer = createInformer(this.targets, this.def.type, {
        namespace: this.o.namespace ?? this.def.defaultNamespace,
        // One ID: the server sends only it.
        ...(this.o.id !== undefined ? { idRegexp: `^${escapeRegexp(this.o.id)}$` } : {}),
        handlers: {
          synced: ({ node }) => this.onSynced(node),
          added: (c) => this.onChange(c, false),
          updated: (c) => this.onChange(c, false),
          deleted: (c) => this.onChange(c, true),
          state: ({ node, state, detail }) => this.onState(node, state, detail),
          error: ({ node, error }) => this.fail(`${this.multi ? `node ${this.labelOf(node)}: ` : ''}${error.message}`),
        },
      });
      // Armed once the informer runs: an informer that cannot start rejects this promise, and no timer is left to
      // keep the process alive after its error is printed. Node's timers hold at most 2^31-1 ms (24.8 days); a
      // longer wait is as good as that.
      if (!this.done) this.timer = setTimeout(() => this.timedOut(), Math.min(this.budgetMs, 0x7fffffff));
    });
  }

  /** `node-1: ` with several nodes, nothing with one. */
  private prefix(node: string): string {
    return this.multi ? `${this.labelOf(node)}: ` : '';
  }

  private name(e: { node: string; id: string }): string {
    return `${this.prefix(e.node)}${this.display}/${e.id}`;
  }

  private onSynced(node: string): void {
    if (this.done || this.informer === undefined) return;
    this.synced.add(node);
    const found: { id: string; resource: CosiResource }[] =
      this.o.id !== undefined
        ? (() => {
            const r = this.informer.get(this.o.id, node);
            return r === undefined ? [] : [{ id: this.o.id, resource: r }];
          })()
        : this.informer.list(node).map((i) => ({ id: i.resource.metadata.id, resource: i.resource }));
    if (this.o.id !== undefined && found.length === 0) {
      const kind = this.o.condition.kind;
      if (kind === 'condition' || kind === 'jsonpath') return this.fail(`${this.name({ node, id: this.o.id })} not found`);
      if (kind === 'create') {
        const entry: Entry = { node, id: this.o.id, met: false, observed: 'not created' };
        this.entries.set(key(node, this.o.id), entry);
        this.progress(entry, 'to be created');
      }
    }
    for (const { id, resource } of found) {
      const entry: Entry = { node, id, met: false, observed: undefined };
      this.entries.set(key(node, id), entry);
      this.observe(entry, resource);
      if (this.done) return;
      if (!entry.met) this.progress(entry, this.o.condition.kind === 'delete' ? 'to be deleted' : `: ${entry.observed ?? ''}`);
    }
    if (this.synced.size === this.targets.length && this.entries.size === 0 && this.o.id === undefined && this.o.condition.kind !== 'delete') {
      return this.fail('no matching resources found');
    }
    this.checkDone();
  }

  private onChange(c: InformerChange, deleted: boolean): void {
    if (this.done || !this.synced.has(c.node)) return;
    const entry = this.entries.get(key(c.node, c.resource.metadata.id));
    if (entry === undefined || entry.met) return;
    if (deleted) {
      if (this.o.condition.kind === 'delete') {
        this.met(entry);
      } else if (entry.observed !== 'deleted') {
        entry.observed = 'deleted';
        this.progress(entry, ': deleted');
      }
    } else {
      const before = entry.observed;
      this.observe(entry, c.resource);
      if (!this.done && !entry.met && entry.observed !== before && this.o.condition.kind !== 'delete') this.progress(entry, `: ${entry.observed ?? ''}`);
    }
    this.checkDone();
  }

  private onState(node: string, state: string, detail: string | undefined): void {
    if (this.done) return;
    const label = this.labelOf(node);
    if (state === 'reconnecting') {
      const reason = detail ?? 'unknown reason';
      if (this.told.get(node) !== reason) process.stderr.write(`node ${label}: connection lost (${reason}); retrying\n`);
      this.told.set(node, reason);
    } else if (state === 'resyncing') {
      process.stderr.write(`node ${label}: the server cannot resume this watch (${detail ?? ''}); listing again\n`);
    } else if (state === 'streaming') {
      this.told.delete(node);
      if (this.streamed.has(node)) process.stderr.write(`node ${label}: watching again\n`);
      this.streamed.add(node);
    }
  }

  /** Looks at a resource's present state; reports it met the first time it is. */
  private observe(entry: Entry, resource: CosiResource): void {
    let o: Observation;
    try {
      o = this.evaluate(entry.node, resource);
    } catch (err) {
      return this.fail(`${this.name(entry)}: ${err instanceof Error ? err.message : String(err)}`);
    }
    entry.observed = o.observed;
    if (o.met) this.met(entry);
  }

  private evaluate(node: string, resource: CosiResource): Observation {
    const c = this.o.condition;
    switch (c.kind) {
      case 'delete':
        return { met: false, observed: 'exists' };
      case 'create':
        return { met: true, observed: 'exists' };
      case 'condition': {
        const found = conditionsOf(resource.spec).find((x) => typeof x['type'] === 'string' && x['type'].toLowerCase() === c.name.toLowerCase());
        if (found === undefined) return { met: false, observed: `no condition ${c.name}` };
        const status = typeof found['status'] === 'string' ? found['status'] : JSON.stringify(found['status'] ?? null);
        return { met: status.toLowerCase() === c.status.toLowerCase(), observed: `condition ${String(found['type'])} is ${status}` };
      }
      case 'jsonpath': {
        const got = c.template.render(resourceDocument({ node: this.labelOf(node), resource }));
        return { met: c.value === undefined ? got !== '' : got === c.value, observed: `${c.source} is ${JSON.stringify(got)}` };
      }
    }
  }

  private met(entry: Entry): void {
    entry.met = true;
    process.stdout.write(`${this.name(entry)} condition met\n`);
  }

  private progress(entry: Entry, what: string): void {
    // --timeout 0 does not wait: the error names what is not met.
    if (this.o.timeoutMs === 0) return;
    process.stderr.write(`${this.prefix(entry.node)}waiting for ${this.display}/${entry.id}${what.startsWith(':') ? what : ` ${what}`}\n`);
  }

  private checkDone(): void {
    if (this.done || this.synced.size < this.targets.length) return;
    if ([...this.entries.values()].every((e) => e.met)) this.finish(0);
    // --timeout 0: one look, once every node has listed.
    else if (this.o.timeoutMs === 0) this.timedOut();
  }

  private timedOut(): void {
    if (this.done) return;
    const waiting: string[] = [];
    for (const s of this.informer?.status() ?? []) {
      if (!s.synced) waiting.push(`node ${this.labelOf(s.node)} (not listed yet: ${s.state}${s.detail !== undefined ? `: ${s.detail}` : ''})`);
    }
    for (const e of this.entries.values()) if (!e.met) waiting.push(this.name(e));
    const named = waiting.length > MAX_NAMED ? [...waiting.slice(0, MAX_NAMED), `and ${waiting.length - MAX_NAMED} more`] : waiting;
    this.fail(`timed out waiting for the condition on ${named.join(', ')}`);
  }

  private fail(message: string): void {
    if (this.done) return;
    process.stderr.write(`error: ${message}\n`);
    this.finish(1);
  }

  private finish(code: number): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timer);
    void (this.informer?.stop() ?? Promise.resolve()).then(() => this.resolve(code));
  }
}

function key(node: string, id: string): string {
  return `${node}\u0000${id}`;
}

type JsonObject = { [key: string]: Json };

function asObject(v: Json | undefined): JsonObject | undefined {
  return v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) ? v : undefined;
}

/** A spec's conditions: its own `.conditions` (a PodStatus), else `.status.conditions` (a whole object, as a Pod). */
function conditionsOf(spec: Json): JsonObject[] {
  const o = asObject(spec);
  const list = o?.['conditions'] ?? asObject(o?.['status'])?.['conditions'];
  if (!Array.isArray(list)) return [];
  const out: JsonObject[] = [];
  for (const c of list) {
    const obj = asObject(c);
    if (obj !== undefined) out.push(obj);
  }
  return out;
}

/** An ID as an RE2 regexp matching exactly it. */
function escapeRegexp(s: string): string {
  return s.replace(/[\\^$.|?*+()[\]{}]/g, '\\$&');
}
