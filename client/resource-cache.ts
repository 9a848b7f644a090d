// The client's one store of resources: what a watch (client/watch.ts) or an informer's node (client/informer.ts)
// holds, keyed by ID, filled by the list-watch-resume core (client/reflector.ts). It is the one place that decides
// what changed: a re-list's complete picture replaces it and comes back as the difference, an event is applied and
// comes back as the change it made (none when the store held that state already).
import type { CosiResource } from './resource.js';

/** What one step changed: the resource as it now is (for `destroyed`, the last state held) and the one before. */
export type CacheChange =
  | { readonly type: 'created'; readonly resource: CosiResource }
  | { readonly type: 'updated'; readonly resource: CosiResource; readonly old: CosiResource }
  | { readonly type: 'destroyed'; readonly resource: CosiResource };

export class ResourceCache {
  private readonly byId = new Map<string, CosiResource>();

  get size(): number {
    return this.byId.size;
  }

  get(id: string): CosiResource | undefined {
    return this.byId.get(id);
  }

  /** Every resource held, sorted by ID. */
  list(): CosiResource[] {
    return [...this.byId.keys()].sort().flatMap((id) => {
      const r = this.byId.get(id);
      return r === undefined ? [] : [r];
    });
  }

  /**
   * One event of the watch: `created`/`updated` hold `resource`, `destroyed` lets go of its ID. The change made, or
   * undefined when nothing changed (the same state held already, or a destroyed ID not held). A `destroyed` change
   * carries the event's resource: the server's last word on it.
   */
  apply(type: 'created' | 'updated' | 'destroyed', resource: CosiResource): CacheChange | undefined {
    const id = resource.metadata.id;
    const old = this.byId.get(id);
    if (type === 'destroyed') {
      if (old === undefined) return undefined;
      this.byId.delete(id);
      return { type: 'destroyed', resource };
    }
    if (old !== undefined && sameState(old, resource)) return undefined;
    this.byId.set(id, resource);
    return old === undefined ? { type: 'created', resource } : { type: 'updated', resource, old };
  }

  /**
   * A complete picture (a re-list) replaces what is held; the difference comes back: what vanished first (as it
   * was held), then what is new or changed, in the picture's order. What stayed the same is not told.
   */
  replace(fresh: ReadonlyMap<string, CosiResource>): CacheChange[] {
    const out: CacheChange[] = [];
    for (const [id, old] of [...this.byId]) {
      if (fresh.has(id)) continue;
      this.byId.delete(id);
      out.push({ type: 'destroyed', resource: old });
    }
    for (const r of fresh.values()) {
      const change = this.apply('created', r);
      if (change !== undefined) out.push(change);
    }
    return out;
  }
}

/** Same version, owner, phase, spec, labels, annotations and finalizers (timestamps move only with a change). */
function sameState(a: CosiResource, b: CosiResource): boolean {
  const ma = a.metadata;
  const mb = b.metadata;
  return (
    ma.version === mb.version &&
    ma.owner === mb.owner &&
    ma.phase === mb.phase &&
    a.yamlSpec === b.yamlSpec &&
    JSON.stringify(ma.labels) === JSON.stringify(mb.labels) &&
    JSON.stringify(ma.annotations) === JSON.stringify(mb.annotations) &&
    JSON.stringify(ma.finalizers) === JSON.stringify(mb.finalizers)
  );
}
