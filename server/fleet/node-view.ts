// The fleet store seen as one node sees its own (docs/design/fleet.md §2 "Per-node view", §5 "Hubs"). The fleet
// holds each node's resources under ids `<node>/<id>` with the node label added; a call for node n is answered
// with n's resources only, under n's own ids and labels, with the node's versions, specs and times. Revisions stay
// the fleet's (etcd revisions), so a per-node watch resumes on any replica.
//
// NodeViews subscribes once to each mirrored kind's fleet history and routes every change by its id's node prefix
// to that node's view (O(1) per change). A view is made on first use and dropped when nobody used it for a while
// and no watch is open on it.
import { createHash } from 'node:crypto';
import { CosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { kindKey, type Kind, type Resource } from '../../shared/resource.js';
import { firstAfter, rewind, sortById } from '../store/kind-log.js';
import { storedResource, storedSpecJson } from '../store/mutations.js';
import type { Change, ChangeBatch, ChangeFeed, HistoryListener, KindHistory } from '../store/store.js';
import type { WatchHub } from '../watch/hub.js';
import { isMirroredKind } from './keys.js';
import { NODE_LABEL } from '../store/etcd/codec.js';

/** Fleet changes read per step while a view is built or extended. */
const SCAN_STEP = 4096;

/** The node part of a fleet id `<node>/<id>`, or undefined. */
function nodeOf(fleetId: string): string | undefined {
  const slash = fleetId.indexOf('/');
  return slash <= 0 ? undefined : fleetId.slice(0, slash);
}

/**
 * A fleet resource as its node has it: the node's id, the node's labels (without the node label the fleet adds;
 * a node's own label of that name is therefore not served back, as the design says), everything else as stored.
 * The spec's JSON text is shared, so the wire encoder needs no parse of its own.
 */
export function projectResource(r: Resource, node: string): Resource {
  const md = r.metadata;
  const prefix = `${node}/`;
  const { [NODE_LABEL]: _fleetLabel, ...labels } = md.labels;
  const id = md.id.startsWith(prefix) ? md.id.slice(prefix.length) : md.id;
  return storedResource({ ...md, id, labels }, storedSpecJson(r) ?? JSON.stringify(r.spec));
}

/** The bookmark instance of node `node`'s view of a fleet feed: never equal to the fleet's own, nor another node's. */
export function nodeInstance(fleetInstance: string, node: string): string {
  return createHash('sha256').update(`${fleetInstance}\u0000${node}`).digest('hex').slice(0, 16);
}

/**
 * One node's resources and changes of one mirrored kind, projected from the fleet's history of the kind. Revisions
 * (revision, the revisions of changes, the bookmarks made of them) are the fleet's. Its window is its own: it
 * starts after the last of its node's changes it forgot, so other nodes' changes leaving the fleet's history never
 * cost a watcher of this node its place.
 */
export class NodeKindHistory implements KindHistory {
  private items = new Map<string, Resource>();
  private history: Change[] = [];
  private start = 0;
  /** Every change of the node after this revision is held. */
  private floor = 0;
  private readonly listeners = new Set<HistoryListener>();
  /** Each fleet resource's projection, so that a version is one object (Frames and the event cache key on it). */
  private projections = new WeakMap<Resource, Resource>();
  /** The fleet's history started over: rebuilt at the next read (not in the listener: the fleet is mid-reset). */
  private stale = false;
  private closedWith: CosiError | undefined;

  constructor(
    readonly node: string,
    private readonly fleet: KindHistory,
  ) {
    this.rebuild();
  }

  get kind(): Kind {
    return this.fleet.kind;
  }

  get revision(): number {
    return this.fleet.revision;
  }

  get oldestRevision(): number {
    this.fresh();
    return this.floor;
  }

  get unavailable(): CosiError | undefined {
    return this.closedWith ?? this.fleet.unavailable;
  }

  get size(): number {
    this.fresh();
    return this.history.length - this.start;
  }

  get count(): number {
    this.fresh();
    return this.items.size;
  }

  /** Listeners subscribed now (a view with any is in use). */
  get subscribers(): number {
    return this.listeners.size;
  }

  current(id: string): Resource | undefined {
    this.fresh();
    return this.items.get(id);
  }

  list(): Resource[] {
    this.fresh();
    return sortById([...this.items.values()]);
  }

  listAt(revision: number): Resource[] {
    this.fresh();
    this.checkReplayable(revision);
    return rewind(this.items, this.history, this.start, revision);
  }

  readChanges(after: number, max: number): ChangeBatch {
    this.fresh();
    this.checkReplayable(after);
    const i = this.firstAfter(after);
    if (max <= 0) return { changes: [], through: i < this.history.length ? after : this.revision };
    const end = Math.min(this.history.length, i + max);
    const changes = this.history.slice(i, end);
    const last = changes[changes.length - 1];
    // Caught up: through the fleet's revision (other nodes' changes are skipped, not waited for).
    return { changes, through: end < this.history.length ? (last?.revision ?? after) : this.revision };
  }

  countAfter(revision: number): number {
    this.fresh();
    return this.history.length - Math.max(this.start, this.firstAfter(revision));
  }

  subscribe(listener: HistoryListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A fleet change of this node was committed (NodeViews routes it here, in revision order). */
  committed(fleetChange: Change): void {
    if (this.stale || this.closedWith !== undefined) return;
    const change = this.projectChange(fleetChange);
    this.apply(change);
    this.history.push(change);
    // Compact the array now and then rather than shifting on every trim.
    if (this.start > 1024 && this.start > this.history.length / 2) {
      this.history.splice(0, this.start);
      this.start = 0;
    }
    for (const l of this.listeners) l.committed?.(change);
  }

  /** The fleet forgets a change of this node: so does the view (oldest first, as the fleet). */
  trimmed(fleetChange: Change): void {
    if (this.stale || this.closedWith !== undefined) return;
    for (;;) {
      const oldest = this.history[this.start];
      if (oldest === undefined || oldest.revision > fleetChange.revision) break;
      for (const l of this.listeners) l.trimmed?.(oldest);
      this.floor = oldest.revision;
      this.start++;
    }
  }

  /**
   * The fleet's history of the kind can no longer be trusted to go on: watchers are told. Unless the backend was
   * only unreachable (the fleet keeps its state and resumes), the fleet starts over from a fresh read right after
   * this, and the view is built again from that at its next read.
   */
  lost(error: CosiError): void {
    if (this.closedWith !== undefined) return;
    for (const l of [...this.listeners]) l.lost?.(error);
    if (error.kind !== 'unavailable') this.stale = true;
  }

  /**
   * Makes the view hold the node's changes after `after`, which the fleet's history holds (the feed reached it):
   * the older ones are put in front of those held.
   */
  extendBack(after: number): void {
    this.fresh();
    if (after >= this.floor) return;
    const older: Change[] = [];
    for (let from = after; from < this.floor; ) {
      const batch = this.fleet.readChanges(from, SCAN_STEP);
      for (const c of batch.changes) {
        if (c.revision > this.floor) break;
        if (this.isMine(c)) older.push(this.projectChange(c));
      }
      if (batch.changes.length === 0 || batch.through <= from) break;
      from = batch.through;
    }
    this.history = older.concat(this.history.slice(this.start));
    this.start = 0;
    this.floor = after;
  }

  /** The view is dropped: its watchers (there should be none) are told to resume elsewhere. */
  close(error: CosiError): void {
    if (this.closedWith !== undefined) return;
    this.closedWith = error;
    for (const l of [...this.listeners]) l.lost?.(error);
    this.listeners.clear();
  }

  /** The resources this view holds at revision `revision`, from a fleet list of that revision (older than the view). */
  projectList(fleetItems: readonly Resource[]): Resource[] {
    const prefix = `${this.node}/`;
    return fleetItems.filter((r) => r.metadata.id.startsWith(prefix)).map((r) => this.project(r));
  }

  private isMine(c: Change): boolean {
    return nodeOf(c.resource.metadata.id) === this.node;
  }

  private fresh(): void {
    if (!this.stale) return;
    this.stale = false;
    this.rebuild();
  }

  /** One scan of the fleet's state and history of the kind: the node's part, projected. */
  private rebuild(): void {
    this.projections = new WeakMap();
    this.items = new Map();
    this.history = [];
    this.start = 0;
    const fleet = this.fleet;
    this.floor = fleet.oldestRevision;
    const prefix = `${this.node}/`;
    for (const r of fleet.list()) {
      if (!r.metadata.id.startsWith(prefix)) continue;
      const p = this.project(r);
      this.items.set(p.metadata.id, p);
    }
    for (let from = this.floor; ; ) {
      const batch = fleet.readChanges(from, SCAN_STEP);
      for (const c of batch.changes) if (this.isMine(c)) this.history.push(this.projectChange(c));
      if (batch.changes.length === 0 || batch.through >= fleet.revision) break;
      from = batch.through;
    }
  }

  private apply(c: Change): void {
    const id = c.resource.metadata.id;
    if (c.type === 'destroyed' || c.error !== undefined) this.items.delete(id);
    else this.items.set(id, c.resource);
  }

  private project(r: Resource): Resource {
    let p = this.projections.get(r);
    if (p === undefined) {
      p = projectResource(r, this.node);
      this.projections.set(r, p);
    }
    return p;
  }

  private projectChange(c: Change): Change {
    const projected: Change = {
      revision: c.revision,
      type: c.type,
      resource: this.project(c.resource),
      old: c.old === undefined ? undefined : this.project(c.old),
      committedAt: c.committedAt,
      ...(c.error !== undefined ? { error: c.error } : {}),
    };
    return Object.freeze(projected);
  }

  private firstAfter(after: number): number {
    return firstAfter(this.history, this.start, after);
  }

  private checkReplayable(revision: number): void {
    if (revision > this.revision) throw new CosiError('invalid-bookmark', `revision ${revision} is in the future (current ${this.revision})`);
    if (revision < this.floor) {
      throw new CosiError('too-old', `revision ${revision} is too old: history of node ${this.node} starts after revision ${this.floor}; list again`);
    }
  }
}

/**
 * A node's scope of the fleet's feed: the mirrored kinds as the node has them (its view), the meta kinds
 * (definitions, namespaces) as the fleet has them, so types resolve while the node is down.
 */
export class NodeScopedFeed implements ChangeFeed {
  readonly instance: string;
  /** When a call last used this scope (NodeViews drops scopes idle for long). */
  lastUsed: number;
  /** The node's views, by kind key. */
  readonly views = new Map<string, NodeKindHistory>();
  dropped = false;

  constructor(
    readonly node: string,
    private readonly fleet: ChangeFeed,
    private readonly owner: NodeViews,
    now: number,
  ) {
    this.instance = nodeInstance(fleet.instance, node);
    this.lastUsed = now;
  }

  async history(kind: Kind): Promise<KindHistory> {
    if (!isMirroredKind(kind)) return this.fleet.history(kind);
    return this.view(kind);
  }

  opened(): KindHistory[] {
    return [...this.views.values()];
  }

  async reach(kind: Kind, after: number): Promise<void> {
    if (!isMirroredKind(kind)) return this.fleet.reach(kind, after);
    const view = await this.view(kind);
    if (after < view.oldestRevision) {
      // Older than the view: the fleet fetches what its own history lacks, then the view takes its node's part.
      const fleetHistory = await this.fleet.history(kind);
      if (after < fleetHistory.oldestRevision) await this.fleet.reach(kind, after);
      view.extendBack(after);
      return;
    }
    // From the future: the fleet waits for it or refuses it.
    if (after > view.revision) await this.fleet.reach(kind, after);
  }

  async listAt(kind: Kind, revision: number): Promise<Resource[]> {
    if (!isMirroredKind(kind)) return this.fleet.listAt(kind, revision);
    const view = await this.view(kind);
    if (revision > view.revision) await this.fleet.reach(kind, revision);
    if (revision >= view.oldestRevision) return view.listAt(revision);
    return view.projectList(await this.fleet.listAt(kind, revision));
  }

  private view(kind: Kind): Promise<NodeKindHistory> {
    return this.owner.viewOf(this, kind);
  }
}

export interface NodeViewsOptions {
  /** A view no call used for this long and with no open watch is dropped (default 5 minutes). */
  idleMs?: number;
  /** How often idle views are looked for (default min(idleMs, 60 s); 0: only when sweep() is called). */
  sweepIntervalMs?: number;
  now?: () => number;
  /** Makes the node's WatchHub over its scope, with the view; it is ended when the view is dropped. */
  hub?: (feed: NodeScopedFeed) => WatchHub;
  log?: Logger;
}

/** A node's scope as the service serves it: its feed and the hub of its watches. */
export interface NodeScope {
  readonly feed: NodeScopedFeed;
  readonly hub: WatchHub;
}

/** One mirrored kind's fleet history and the node views its changes are routed to. */
interface Route {
  readonly history: KindHistory;
  readonly byNode: Map<string, NodeKindHistory>;
  readonly unsubscribe: () => void;
}

export class NodeViews {
  private readonly scopes = new Map<string, { feed: NodeScopedFeed; hub: WatchHub | undefined }>();
  private readonly routes = new Map<string, Promise<Route>>();
  /** The routes opened, by kind key. */
  private readonly ready = new Map<string, Route>();
  private readonly idleMs: number;
  private readonly now: () => number;
  private readonly timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly fleet: ChangeFeed,
    private readonly opts: NodeViewsOptions = {},
  ) {
    this.idleMs = opts.idleMs ?? 300_000;
    this.now = opts.now ?? Date.now;
    const every = opts.sweepIntervalMs ?? Math.min(this.idleMs, 60_000);
    if (every > 0) {
      this.timer = setInterval(() => this.sweep(), every);
      this.timer.unref();
    }
  }

  /** Node `node`'s scope of the fleet's feed, made on first use. */
  feedFor(node: string): NodeScopedFeed {
    return this.entry(node).feed;
  }

  /** Node `node`'s feed and hub (the hub made by the `hub` option), made on first use. */
  scope(node: string): NodeScope {
    const entry = this.entry(node);
    if (entry.hub === undefined) {
      if (this.opts.hub === undefined) throw new Error('NodeViews was made without a hub factory');
      entry.hub = this.opts.hub(entry.feed);
    }
    return { feed: entry.feed, hub: entry.hub };
  }

  /** The nodes that have a view now. */
  nodes(): string[] {
    return [...this.scopes.keys()];
  }

  /**
   * Drops the views no call used for idleMs and that no watch reads: with a hub, none of its sessions is open;
   * without, nobody subscribed to the view's histories. Returns the nodes dropped.
   */
  sweep(): string[] {
    const now = this.now();
    const dropped: string[] = [];
    for (const [node, entry] of this.scopes) {
      if (now - entry.feed.lastUsed < this.idleMs) continue;
      const busy = entry.hub !== undefined ? entry.hub.stats().sessions > 0 : [...entry.feed.views.values()].some((v) => v.subscribers > 0);
      if (busy) continue;
      this.drop(node, new CosiError('unavailable', `the view of node ${node} was idle and is closed; resume from your last bookmark`));
      dropped.push(node);
    }
    if (dropped.length > 0) this.opts.log?.debug('node views dropped', { nodes: dropped.length, left: this.scopes.size });
    return dropped;
  }

  /** Stops routing and ends every view and hub. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const node of [...this.scopes.keys()]) this.drop(node, new CosiError('unavailable', 'the fleet is shutting down; reconnect and resume from your last bookmark'));
    for (const route of this.ready.values()) route.unsubscribe();
    this.ready.clear();
    this.routes.clear();
  }

  /** The node's view of a mirrored kind, built on first use (NodeScopedFeed's history). */
  async viewOf(feed: NodeScopedFeed, kind: Kind): Promise<NodeKindHistory> {
    feed.lastUsed = this.now();
    // A scope dropped while a call held it: that call goes on with the node's current scope.
    if (feed.dropped) return this.viewOf(this.feedFor(feed.node), kind);
    const key = kindKey(kind);
    const route = await this.route(kind);
    if (feed.dropped) return this.viewOf(this.feedFor(feed.node), kind);
    let view = feed.views.get(key);
    if (view === undefined) {
      view = new NodeKindHistory(feed.node, route.history);
      feed.views.set(key, view);
      route.byNode.set(feed.node, view);
    }
    return view;
  }

  private entry(node: string): { feed: NodeScopedFeed; hub: WatchHub | undefined } {
    if (this.closed) throw new CosiError('unavailable', 'the fleet is shutting down');
    let entry = this.scopes.get(node);
    if (entry === undefined) {
      entry = { feed: new NodeScopedFeed(node, this.fleet, this, this.now()), hub: undefined };
      this.scopes.set(node, entry);
    }
    entry.feed.lastUsed = this.now();
    return entry;
  }

  private drop(node: string, why: CosiError): void {
    const entry = this.scopes.get(node);
    if (entry === undefined) return;
    this.scopes.delete(node);
    entry.feed.dropped = true;
    for (const [key, view] of entry.feed.views) {
      const byNode = this.ready.get(key)?.byNode;
      if (byNode?.get(node) === view) byNode.delete(node);
      view.close(why);
    }
    entry.hub?.endAll(why);
  }

  /** The kind's fleet history with the one subscription that routes its changes to the node views. */
  private route(kind: Kind): Promise<Route> {
    const key = kindKey(kind);
    let route = this.routes.get(key);
    if (route === undefined) {
      route = this.fleet.history(kind).then((history) => {
        const byNode = new Map<string, NodeKindHistory>();
        const routeTo = (c: Change): NodeKindHistory | undefined => {
          const node = nodeOf(c.resource.metadata.id);
          return node === undefined ? undefined : byNode.get(node);
        };
        const unsubscribe = history.subscribe({
          committed: (c) => routeTo(c)?.committed(c),
          trimmed: (c) => routeTo(c)?.trimmed(c),
          lost: (err) => {
            for (const view of [...byNode.values()]) view.lost(err);
          },
        });
        const opened = { history, byNode, unsubscribe };
        if (this.closed) unsubscribe();
        else this.ready.set(key, opened);
        return opened;
      });
      this.routes.set(key, route);
      // A kind the fleet could not open (its backend unreachable) is tried again by the next reader.
      route.catch(() => {
        if (this.routes.get(key) === route) this.routes.delete(key);
      });
    }
    return route;
  }
}
