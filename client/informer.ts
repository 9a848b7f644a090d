// An informer, for controllers: one type listed, then watched, on one node or many, into a local cache keyed by
// node and ID, with handlers told what was added, updated and deleted. Each node runs the list-watch-resume core
// (client/reflector.ts: reconnects, resumes, and after "too old" lists again) into its one store
// (client/resource-cache.ts), which says what each step changed; a handler is called only for a real change, so a
// resync calls nothing for what stayed the same, `deleted` once for what vanished and `updated` once for what
// changed.
import './dispose.js';
import { CosiError } from '../shared/errors.js';
import { checkMs } from './call.js';
import type { CallOptions, ConnectionState, CosiClient, LabelQuery, ReconnectOptions, Timers } from './client.js';
import type { NodeTarget } from './nodes.js';
import { isWatchTransport, Reflector, type Delta, type WatchTransport } from './reflector.js';
import { ResourceCache, type CacheChange } from './resource-cache.js';
import type { CosiResource } from './resource.js';

export interface InformerOptions {
  /** Defaults to the type's default namespace. */
  namespace?: string;
  /** Only the resources these label queries match (as ListOptions.labelQuery). */
  labelQuery?: LabelQuery[];
  /** Only the IDs this RE2 regular expression matches (unanchored). */
  idRegexp?: string;
  /**
   * How each node's watch reconnects (ReconnectOptions; an informer always reconnects). Connection states come
   * as `state` events; `timers` is also the clock of synced()'s `timeoutMs`.
   */
  reconnect?: Omit<ReconnectOptions, 'onState'>;
  /** Stops the informer when aborted, as stop() does. */
  signal?: AbortSignal;
  /** Handlers in place before the first event (on() adds more). */
  handlers?: { [K in keyof InformerHandlers]?: InformerHandlers[K] };
}

/** A change of the cache: a resource added, updated or deleted on one node. */
export interface InformerChange {
  readonly node: string;
  /** The resource as it now is; for `deleted`, its last state. */
  readonly resource: CosiResource;
  /** Found by a re-list after the server lost the watch's place ("too old", a restart), not by the watch itself. */
  readonly resync: boolean;
}

export interface InformerUpdate extends InformerChange {
  /** The resource as the cache held it before. */
  readonly old: CosiResource;
}

export interface InformerStateEvent {
  readonly node: string;
  readonly state: ConnectionState;
  /** Why it is reconnecting or resyncing. */
  readonly detail?: string;
}

export interface InformerErrorEvent {
  readonly node: string;
  readonly error: CosiError;
  /**
   * true: the node's watch ended for good (an error retrying cannot mend, such as `permission-denied` or an unknown
   * type, or the limits of `reconnect`); its cache stays as last seen and status() says it failed.
   * false: a handler threw or rejected (error.cause is what it threw); the informer went on.
   */
  readonly fatal: boolean;
}

/**
 * What an informer calls. The change handlers (`added`, `updated`, `deleted`, `synced`) of one node are called one
 * at a time, in the order of its events, with the cache already changed; one that returns a promise is awaited
 * before that node's next event (the node's watch is not read meanwhile: backpressure reaches the server), never
 * holding up the other nodes. `state` and `error` are called as things happen and are not awaited.
 */
export interface InformerHandlers {
  added: (change: InformerChange) => void | Promise<void>;
  updated: (change: InformerUpdate) => void | Promise<void>;
  deleted: (change: InformerChange) => void | Promise<void>;
  /** A node's initial list is in the cache (once per node). */
  synced: (event: { readonly node: string }) => void | Promise<void>;
  /** A node's connection state changed: `reconnecting` and `resyncing` carry the reason. */
  state: (event: InformerStateEvent) => void;
  /**
   * A node's watch failed for good, or a handler failed. An error with no `error` handler to hear it is thrown as
   * an uncaught exception (as an EventEmitter's 'error' is), unless it is a node's failure that a pending synced()
   * reports by rejecting.
   */
  error: (event: InformerErrorEvent) => void;
}

export interface InformerItem {
  readonly node: string;
  readonly resource: CosiResource;
}

export interface InformerNodeStatus {
  readonly node: string;
  readonly state: ConnectionState;
  /** The reason of the last reconnect or resync, until the watch streams again. */
  readonly detail: string | undefined;
  /** The node's initial list is in the cache. */
  readonly synced: boolean;
  /** What ended the node's watch for good. */
  readonly error: CosiError | undefined;
  /** Resources of the node in the cache. */
  readonly size: number;
}

export interface SyncedOptions extends CallOptions {
  /** Wait for this node only (default: every node). */
  node?: string;
}

/**
 * A local, always converging copy of one type on one or many nodes. It starts at once (events are never delivered
 * before createInformer returns, so handlers added with on() right after it miss nothing).
 */
export interface Informer {
  /** The type as given to createInformer. */
  readonly type: string;
  /** The nodes, in the order of the targets. */
  readonly nodes: readonly string[];
  /** Adds a handler; returns what removes it. */
  on<K extends keyof InformerHandlers>(event: K, handler: InformerHandlers[K]): () => void;
  /**
   * Resolves when every node's initial list is in the cache (or `node`'s). A node that is down keeps it pending
   * while its watch retries (give `timeoutMs` or `signal`; status() tells why); a node whose watch fails for good
   * before its first list makes it reject with that error; stop() makes a pending one reject with `cancelled`.
   */
  synced(opts?: SyncedOptions): Promise<void>;
  /** Whether every node (or `node`) has synced. */
  hasSynced(node?: string): boolean;
  /** One resource from the cache: from `node`, or from the first node (in the order of the targets) that has it. */
  get(id: string, node?: string): CosiResource | undefined;
  /** The cache, by node (in the order of the targets), then by ID; or one node's. */
  list(node?: string): InformerItem[];
  /** Each node's connection state, sync and failure. */
  status(): InformerNodeStatus[];
  /**
   * Ends every node's watch; no handler is called once it has been called (one already running finishes on its
   * own). Resolves when the watches are closed. The clients stay open: they are the caller's.
   */
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Creates and starts an informer of `type` on one client (its node is named by the client's endpoint) or on many
 * nodes (`{ node, client }` targets, as listNodes takes; node names must differ).
 */
export function createInformer(source: CosiClient | readonly NodeTarget[], type: string, opts: InformerOptions = {}): Informer {
  const targets: readonly NodeTarget[] = isTargetList(source) ? source : [{ node: source.endpoint, client: source }];
  if (targets.length === 0) throw new CosiError('invalid-argument', 'an informer needs at least one node');
  const names = new Set<string>();
  for (const t of targets) {
    if (names.has(t.node)) throw new CosiError('invalid-argument', `node ${JSON.stringify(t.node)} is given twice`);
    names.add(t.node);
  }
  return new NodeInformer(targets, type, opts);
}

function isTargetList(source: CosiClient | readonly NodeTarget[]): source is readonly NodeTarget[] {
  return Array.isArray(source);
}

const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** One node's part of the informer. */
class NodeView {
  readonly cache = new ResourceCache();
  state: ConnectionState = 'connecting';
  detail: string | undefined;
  synced = false;
  error: CosiError | undefined;
  reflector: Reflector | undefined;

  constructor(
    readonly node: string,
    /** The node's client, as the core talks to it. */
    readonly transport: WatchTransport,
  ) {}
}

/** The client of a node as the core needs it: the library's own clients (connect, connectContext) are. */
function transportOf(t: NodeTarget): WatchTransport {
  if (!isWatchTransport(t.client)) throw new CosiError('invalid-argument', `the client of node ${JSON.stringify(t.node)} was not made by connect() or connectContext(): an informer needs one of the library's own clients`);
  return t.client;
}

/** A pending synced(): the nodes it waits for, and how it ends. */
interface SyncWaiter {
  readonly nodes: readonly NodeView[];
  check(): void;
}

type HandlerLists = { [K in keyof InformerHandlers]: InformerHandlers[K][] };

class NodeInformer implements Informer {
  readonly nodes: readonly string[];
  private readonly views: NodeView[];
  private readonly byNode: Map<string, NodeView>;
  private readonly handlers: HandlerLists = { added: [], updated: [], deleted: [], synced: [], state: [], error: [] };
  private readonly waiters = new Set<SyncWaiter>();
  private readonly stopper = new AbortController();
  private readonly timers: Timers;
  private stopping: Promise<void> | undefined;
  private readonly detachSignal: () => void;

  constructor(
    targets: readonly NodeTarget[],
    readonly type: string,
    private readonly opts: InformerOptions,
  ) {
    this.timers = opts.reconnect?.timers ?? realTimers;
    this.views = targets.map((t) => new NodeView(t.node, transportOf(t)));
    this.byNode = new Map(this.views.map((v) => [v.node, v]));
    this.nodes = this.views.map((v) => v.node);
    for (const [event, handler] of Object.entries(opts.handlers ?? {})) {
      if (handler !== undefined) this.add(event as keyof InformerHandlers, handler);
    }
    const onAbort = () => void this.stop();
    opts.signal?.addEventListener('abort', onAbort);
    this.detachSignal = () => opts.signal?.removeEventListener('abort', onAbort);
    if (opts.signal?.aborted === true) {
      void this.stop();
      return;
    }
    // Every watch is opened here, so that options the core refuses make createInformer throw; none reads yet.
    const opened: Reflector[] = [];
    try {
      for (const view of this.views) opened.push((view.reflector = this.open(view)));
    } catch (err) {
      this.stopper.abort();
      this.detachSignal();
      for (const r of opened) void r.close();
      throw err;
    }
    // Reading starts after the caller's current turn: not even a `connecting` state reaches a handler before
    // createInformer has returned, so handlers added with on() right after it hear everything.
    queueMicrotask(() => {
      for (const v of this.views) void this.run(v);
    });
  }

  on<K extends keyof InformerHandlers>(event: K, handler: InformerHandlers[K]): () => void {
    return this.add(event, handler);
  }

  private add<K extends keyof InformerHandlers>(event: K, handler: InformerHandlers[K]): () => void {
    const list = Object.hasOwn(this.handlers, event) ? (this.handlers[event] as InformerHandlers[K][]) : undefined;
    if (list === undefined) throw new CosiError('invalid-argument', `an informer has no ${JSON.stringify(event)} event (added, updated, deleted, synced, state, error)`);
    if (typeof handler !== 'function') throw new CosiError('invalid-argument', `the ${event} handler must be a function`);
    list.push(handler);
    return () => {
      const i = list.indexOf(handler);
      if (i >= 0) list.splice(i, 1);
    };
  }

  synced(opts: SyncedOptions = {}): Promise<void> {
    let nodes: NodeView[];
    let timeoutMs: number;
    try {
      nodes = opts.node === undefined ? this.views : [this.view(opts.node)];
      timeoutMs = checkMs('timeoutMs', opts.timeoutMs, Infinity);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<void>((resolve, reject) => {
      let timer: unknown;
      const signal = opts.signal;
      const end = (err?: CosiError) => {
        this.waiters.delete(waiter);
        signal?.removeEventListener('abort', onAbort);
        if (timer !== undefined) this.timers.clearTimeout(timer);
        if (err === undefined) resolve();
        else reject(err);
      };
      const onAbort = () => end(new CosiError('cancelled', `waiting for the informer of ${this.type} to sync was cancelled`));
      const waiter: SyncWaiter = {
        nodes,
        check: () => {
          const failed = nodes.find((n) => !n.synced && n.error !== undefined);
          if (failed?.error !== undefined) return end(new CosiError(failed.error.kind, `node ${failed.node}: ${failed.error.message}`, { cause: failed.error }));
          if (nodes.every((n) => n.synced)) return end();
          if (this.stopping !== undefined) return end(new CosiError('cancelled', `the informer of ${this.type} was stopped before it synced`));
        },
      };
      this.waiters.add(waiter);
      waiter.check();
      if (!this.waiters.has(waiter)) return;
      if (signal?.aborted === true) return onAbort();
      signal?.addEventListener('abort', onAbort);
      if (Number.isFinite(timeoutMs)) {
        timer = this.timers.setTimeout(() => {
          const waiting = nodes.filter((n) => !n.synced).map((n) => `${n.node} (${n.state}${n.detail !== undefined ? `: ${n.detail}` : ''})`);
          end(new CosiError('deadline-exceeded', `the informer of ${this.type} did not sync within ${timeoutMs} ms; waiting for ${waiting.join(', ')}`));
        }, timeoutMs);
      }
    });
  }

  hasSynced(node?: string): boolean {
    return node === undefined ? this.views.every((v) => v.synced) : this.view(node).synced;
  }

  get(id: string, node?: string): CosiResource | undefined {
    if (node !== undefined) return this.view(node).cache.get(id);
    for (const v of this.views) {
      const r = v.cache.get(id);
      if (r !== undefined) return r;
    }
    return undefined;
  }

  list(node?: string): InformerItem[] {
    const views = node === undefined ? this.views : [this.view(node)];
    return views.flatMap((v) => v.cache.list().map((resource) => ({ node: v.node, resource })));
  }

  status(): InformerNodeStatus[] {
    return this.views.map((v) => ({ node: v.node, state: v.state, detail: v.detail, synced: v.synced, error: v.error, size: v.cache.size }));
  }

  stop(): Promise<void> {
    if (this.stopping === undefined) {
      this.stopper.abort();
      this.detachSignal();
      this.stopping = Promise.all(this.views.map((v) => v.reflector?.close())).then(() => undefined);
      for (const w of [...this.waiters]) w.check();
    }
    return this.stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  private get stopped(): boolean {
    return this.stopping !== undefined;
  }

  private view(node: string): NodeView {
    const v = this.byNode.get(node);
    if (v === undefined) throw new CosiError('invalid-argument', `the informer of ${this.type} does not watch node ${JSON.stringify(node)} (its nodes: ${this.nodes.join(', ')})`);
    return v;
  }

  /** A node's watch: a bootstrap, then every change, reconnecting, resuming and resyncing on its own. */
  private open(v: NodeView): Reflector {
    const o = this.opts;
    return new Reflector(v.transport, this.type, {
      ...(o.namespace !== undefined ? { namespace: o.namespace } : {}),
      ...(o.labelQuery !== undefined ? { labelQuery: o.labelQuery } : {}),
      ...(o.idRegexp !== undefined ? { idRegexp: o.idRegexp } : {}),
      bootstrap: true,
      // Fewer messages for the same events: an informer takes them as fast as its handlers allow.
      aggregated: true,
      reconnect: { ...o.reconnect, onState: (state, detail) => this.onState(v, state, detail) },
      signal: this.stopper.signal,
    });
  }

  /** One node's watch, applied to its cache until the informer stops or the watch fails for good. */
  private async run(v: NodeView): Promise<void> {
    const reflector = v.reflector;
    if (reflector === undefined || this.stopped) return;
    try {
      for await (const steps of reflector.steps()) {
        for (const d of steps) {
          if (this.stopped) return;
          await this.apply(v, d);
        }
      }
      if (this.stopped) return;
      if (v.transport.closed.aborted) {
        // The caller closed this node's client: the node is done, which is no failure to report.
        v.error = new CosiError('cancelled', `the client of node ${v.node} was closed`);
        v.state = 'closed';
        for (const w of [...this.waiters]) w.check();
        return;
      }
      // The watch reconnects on its own; otherwise it ends quietly only when the server itself ended it.
      throw new CosiError('unavailable', `the server ended the watch of ${this.type}`);
    } catch (caught) {
      if (this.stopped) return;
      const err = caught instanceof CosiError ? caught : new CosiError('internal', caught instanceof Error ? caught.message : String(caught), { cause: caught });
      v.error = err;
      v.state = 'closed';
      // A pending synced() that this failure rejects has reported it.
      const heard = [...this.waiters].some((w) => w.nodes.includes(v) && !v.synced);
      for (const w of [...this.waiters]) w.check();
      this.report({ node: v.node, error: err, fatal: true }, heard);
    }
  }

  private onState(v: NodeView, state: ConnectionState, detail: string | undefined): void {
    if (this.stopped) return;
    v.state = state;
    v.detail = state === 'reconnecting' || state === 'resyncing' ? detail : state === 'streaming' ? undefined : v.detail;
    const event: InformerStateEvent = { node: v.node, state, ...(detail !== undefined ? { detail } : {}) };
    for (const h of [...this.handlers.state]) {
      try {
        h(event);
      } catch (err) {
        this.handlerFailed(v, 'state', err);
      }
    }
  }

  /** One step of a node's watch: the cache changes, then the handlers hear of it (only of real changes). */
  private async apply(v: NodeView, d: Delta): Promise<void> {
    switch (d.op) {
      case 'marker':
        if (d.event.type !== 'bootstrapped' || v.synced) return;
        v.synced = true;
        for (const w of [...this.waiters]) w.check();
        return this.emit(v, 'synced', { node: v.node });
      case 'replaced':
        for (const c of v.cache.replace(d.items)) await this.announce(v, c, true);
        return;
      default: {
        const c = v.cache.apply(d.op, d.resource);
        if (c !== undefined) await this.announce(v, c, d.event.resync === true);
      }
    }
  }

  /** A change of a node's cache, to the handlers. */
  private announce(v: NodeView, c: CacheChange, resync: boolean): Promise<void> {
    const { node } = v;
    if (c.type === 'created') return this.emit(v, 'added', { node, resource: c.resource, resync });
    if (c.type === 'updated') return this.emit(v, 'updated', { node, resource: c.resource, old: c.old, resync });
    return this.emit(v, 'deleted', { node, resource: c.resource, resync });
  }

  private async emit<K extends 'added' | 'updated' | 'deleted' | 'synced'>(v: NodeView, event: K, payload: Parameters<InformerHandlers[K]>[0]): Promise<void> {
    for (const h of [...this.handlers[event]] as ((p: typeof payload) => void | Promise<void>)[]) {
      if (this.stopped) return;
      try {
        await h(payload);
      } catch (err) {
        this.handlerFailed(v, event, err);
      }
    }
  }

  private handlerFailed(v: NodeView, event: keyof InformerHandlers, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    this.report({ node: v.node, error: new CosiError('internal', `the informer's ${event} handler failed: ${message}`, { cause: err }), fatal: false }, false);
  }

  private report(event: InformerErrorEvent, heard: boolean): void {
    const handlers = [...this.handlers.error];
    if (handlers.length === 0) {
      if (!heard) queueMicrotask(() => {
        throw event.error;
      });
      return;
    }
    for (const h of handlers) {
      try {
        h(event);
      } catch (err) {
        // An error handler that fails has nobody left to tell.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

