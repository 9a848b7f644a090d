// The seeded soak's history checker: one per watcher, fed every event as the consumer receives it. It checks the
// watch guarantees as they happen (each change once, in order, no gaps, bookmarks on every server event, resumes
// exact), and at the end whether the watcher's view equals a fresh List. It records violations instead of throwing,
// so that a long run reports them all with what is needed to replay them.
import type { WatchEvent } from '../../client/index.js';

/** Our bookmark layout (server/watch/bookmark.ts): version, mode, 8-byte instance, 8-byte revision. */
export function decodeBookmark(b: Uint8Array): { instance: string; revision: number; bootstrap: boolean } {
  const buf = Buffer.from(b);
  return { instance: buf.subarray(2, 10).toString('hex'), revision: Number(buf.readBigUInt64BE(10)), bootstrap: buf.readUInt8(1) === 1 };
}

export interface Violation {
  watcher: string;
  /** The event's index in the watcher's history (0-based). */
  index: number;
  rule: string;
  detail: string;
  /** The event, short: type, id, version, resync, bookmark revision. */
  event: string;
  atMs: number;
}

/** A resource as the checker compares it: version and spec. */
export type ViewEntry = { version: number; spec: string };

export function describeEvent(e: WatchEvent): string {
  const parts: string[] = [e.type];
  if (e.resource !== undefined) parts.push(`${e.resource.metadata.id}@v${e.resource.metadata.version}`);
  if (e.resync === true) parts.push('resync');
  if (e.bookmark !== undefined && e.bookmark.length >= 18) {
    const b = decodeBookmark(e.bookmark);
    parts.push(`rev ${b.revision}${b.bootstrap ? ' (bootstrap)' : ''} instance ${b.instance}`);
  }
  return parts.join(' ');
}

export class HistoryChecker {
  readonly violations: Violation[] = [];
  /** What the watcher holds: every id it has seen, present or (undefined) destroyed. */
  readonly view = new Map<string, ViewEntry | undefined>();
  events = 0;
  resyncs = 0;
  bootstrapped = 0;
  private readonly lastRevision = new Map<string, number>();
  private readonly started = Date.now();

  /** `bootstrap`: the watch was asked for the current resources first (then exactly one BOOTSTRAPPED). */
  constructor(
    readonly name: string,
    readonly bootstrap: boolean,
  ) {}

  private violate(index: number, e: WatchEvent, rule: string, detail: string): void {
    this.violations.push({ watcher: this.name, index, rule, detail, event: describeEvent(e), atMs: Date.now() - this.started });
  }

  observe(e: WatchEvent): void {
    const index = this.events++;
    if (e.type === 'noop') return;
    if (e.type === 'bootstrapped') {
      this.bootstrapped++;
      if (!this.bootstrap) this.violate(index, e, 'bootstrapped only when asked', 'a watch without bootstrap got BOOTSTRAPPED');
      else if (this.bootstrapped > 1) this.violate(index, e, 'one BOOTSTRAPPED', `BOOTSTRAPPED number ${this.bootstrapped}`);
      return;
    }
    if (e.type === 'errored') {
      this.violate(index, e, 'no errored event', e.error ?? '(no message)');
      return;
    }
    const r = e.resource;
    if (r === undefined) {
      this.violate(index, e, 'a change carries its resource', 'no resource');
      return;
    }
    const id = r.metadata.id;
    const v = r.metadata.version;
    const entry: ViewEntry = { version: v, spec: r.yamlSpec };
    if (e.resync === true) {
      // Made by the library after the server lost its place: the difference to a fresh List, a new baseline.
      this.resyncs++;
      this.view.set(id, e.type === 'destroyed' ? undefined : entry);
      return;
    }
    // Bookmarkable: every event the server sent carries a bookmark.
    if (e.bookmark === undefined) {
      this.violate(index, e, 'every event carries a bookmark', 'no bookmark');
    } else {
      const b = decodeBookmark(e.bookmark);
      const initial = this.bootstrap && this.bootstrapped === 0;
      if (b.bootstrap && !initial) this.violate(index, e, 'bootstrap bookmarks only in the bootstrap', 'a bootstrap-mode bookmark after BOOTSTRAPPED');
      if (!b.bootstrap) {
        // Ordered and unique: within one server instance (one etcd history), tail revisions strictly increase.
        const prev = this.lastRevision.get(b.instance);
        if (prev !== undefined && b.revision <= prev) this.violate(index, e, 'revisions increase (each change once, in order)', `revision ${b.revision} after ${prev}`);
        this.lastRevision.set(b.instance, b.revision);
      }
    }
    const known = this.view.has(id);
    const have = this.view.get(id);
    const initial = this.bootstrap && this.bootstrapped === 0;
    if (e.type === 'created') {
      if (have !== undefined) this.violate(index, e, 'created only when absent', `${id} created while held at v${have.version}`);
      // Outside the bootstrap, a create makes version 1 (a re-create too).
      else if (!initial && v !== 1) this.violate(index, e, 'a create is version 1', `${id} created at v${v}`);
      this.view.set(id, entry);
    } else if (e.type === 'updated') {
      if (initial) this.violate(index, e, 'only creates in the bootstrap', `${id} updated`);
      if (have !== undefined && v !== have.version + 1) this.violate(index, e, 'updates one version at a time (no gap, no repeat)', `${id} v${have.version} -> v${v}`);
      // Known and destroyed: an update of what is gone.
      else if (known && have === undefined) this.violate(index, e, 'no update after destroy', `${id} updated to v${v} after its destroy (a lost create?)`);
      // Not known: a watch without bootstrap meets a resource first by its update; a bootstrapped one never.
      else if (!known && this.bootstrap) this.violate(index, e, 'a bootstrapped view knows every resource', `${id} updated to v${v}, never created`);
      this.view.set(id, entry);
    } else if (e.type === 'destroyed') {
      if (have !== undefined && v !== have.version) this.violate(index, e, 'destroyed at its last version', `${id} destroyed at v${v}, held at v${have.version}`);
      else if (known && have === undefined) this.violate(index, e, 'destroyed once', `${id} destroyed again`);
      else if (!known && this.bootstrap) this.violate(index, e, 'a bootstrapped view knows every resource', `${id} destroyed, never created`);
      this.view.set(id, undefined);
    }
  }

  /**
   * The view against a fresh List: a bootstrapped watcher holds exactly the List; one without bootstrap holds, for
   * every id it has met, what the List says (present at the same version and spec, or absent). Empty when equal.
   */
  differences(list: ReadonlyMap<string, ViewEntry>): string[] {
    const out: string[] = [];
    const ids = new Set<string>([...this.view.keys(), ...(this.bootstrap ? list.keys() : [])]);
    for (const id of [...ids].sort()) {
      const mine = this.view.get(id);
      const theirs = list.get(id);
      const show = (x: ViewEntry | undefined) => (x === undefined ? 'absent' : `v${x.version}`);
      if (mine === undefined && theirs === undefined) continue;
      if (mine === undefined || theirs === undefined || mine.version !== theirs.version || mine.spec !== theirs.spec) {
        out.push(`${id}: watcher ${show(mine)}${mine !== undefined && theirs !== undefined && mine.version === theirs.version ? ' (other spec)' : ''}, List ${show(theirs)}`);
      }
    }
    return out;
  }

  /** Records a final difference to the List as a violation. */
  divergence(diffs: string[]): void {
    if (diffs.length === 0) return;
    this.violations.push({ watcher: this.name, index: this.events, rule: 'the view converges to a fresh List', detail: diffs.slice(0, 5).join('; '), event: '(end of run)', atMs: Date.now() - this.started });
  }
}
