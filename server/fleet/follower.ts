// One owned node, followed: a library client to the node's cosid and one Reflector per mirrored kind, resumed from
// the bookmarks the last owner committed with its data (docs/design/fleet.md §4). Each change becomes a fenced write
// carrying the event's bookmark, so whoever takes the node over resumes exactly after the last change committed. A
// re-list (the node lost our place, or a first bootstrap) is diffed against what the fleet holds: only the
// difference is written. A node that floods changes is throttled (throttle.ts) without starving the others.
import { connect } from '../../client/client.js';
import { isWatchTransport, Reflector, type Delta } from '../../client/reflector.js';
import type { CosiClient, ConnectionState } from '../../client/client.js';
import type { CosiResource } from '../../client/resource.js';
import type { Logger } from '../../shared/log.js';
import type { Kind } from '../../shared/resource.js';
import type { NodeTarget } from '../api/node-directory.js';
import type { Acquired, NodeOp, SubmitResult } from './contracts.js';
import { fleetNodeValue, type FleetNodeSpec, type FleetNodeState } from './fleet-node.js';
import { MIRRORED_KINDS, type FleetKeys } from './keys.js';
import { mirrorDigest } from './mirror.js';
import { encodeMirrored } from '../store/etcd/codec.js';
import { Throttle } from './throttle.js';

/** The writer as a follower uses it. */
export interface NodeWriter {
  submit(a: Acquired, ops: NodeOp[]): Promise<SubmitResult>;
  pending(node: string): number;
}

export interface FollowerDeps {
  keys: FleetKeys;
  writer: NodeWriter;
  /** The certificate the fleet dials nodes with, and the CA of their serving certificates. */
  identity: { caPem: string; certPem: string; keyPem: string };
  replica: string;
  log: Logger;
  /** A node whose watches reconnect this long is Unreachable (default 3 s). */
  unreachableAfterMs: number;
  /** How often the FleetNode's lag is refreshed while it changes (default 15 s). */
  statusIntervalMs: number;
  /** Changes per second a node may send before it is throttled (burst 10x). */
  nodeRate: number;
  /** Time from a change's arrival to its commit (metrics). */
  observeCommit?: (seconds: number) => void;
  /** How a node client is made (tests may wrap it). */
  connect?: typeof connect;
}

/** What the follower tells its owner. */
export interface FollowerEvents {
  /** Every kind is streaming and what it brought is committed: the bootstrap slot can go. */
  caughtUp(): void;
  /** The node is no longer ours (a write was fenced): stop and let go. */
  fenced(): void;
}

/** The follower stops pulling from a node while this many of its ops wait in the writer. */
const MAX_PENDING_OPS = 256;
/** FleetNode state writes for one node: at most one per this (the last state wins). */
const STATE_WRITE_MIN_INTERVAL_MS = 1000;
/** A lag refresh is written only when the lag moved by more than this. */
const LAG_WRITE_STEP_MS = 1000;

export class NodeFollower {
  private readonly client: CosiClient;
  private readonly reflectors: Reflector[] = [];
  private readonly loops: Promise<void>[] = [];
  private readonly log: Logger;
  private stopped = false;
  private readonly kindStates = new Map<string, ConnectionState>();
  private readonly written = new Map<string, Map<string, string>>();
  private readonly throttle: Throttle;
  // FleetNode.
  private state: FleetNodeState = 'Waiting';
  private unreachableSince: Date | null = null;
  private lastError: string | null = null;
  private lastChangeAt: Date | null = null;
  private relists = 0;
  private readonly followingSince = new Date();
  private readonly created: Date;
  private writtenLagMs = 0;
  private lastStateWrite = 0;
  private stateTimer: NodeJS.Timeout | undefined;
  private unreachableTimer: NodeJS.Timeout | undefined;
  private readonly lagTimer: NodeJS.Timeout;
  /** Arrival times of the batches submitted and not yet committed, oldest first. */
  private readonly inFlight: number[] = [];
  private caughtUpSent = false;
  /** The last submit: a stop waits for it, so a handover leaves nothing half-sent. */
  private lastSubmit: Promise<unknown> = Promise.resolve();
  /** Submissions not settled yet, oldest first. */
  private readonly outstanding = new Set<Promise<void>>();

  constructor(
    private readonly deps: FollowerDeps,
    readonly target: NodeTarget,
    readonly acquired: Acquired,
    private readonly events: FollowerEvents,
  ) {
    this.log = deps.log.with({ node: target.name });
    for (const [type, digests] of acquired.written) this.written.set(type, new Map(digests));
    this.created = createdOf(acquired.fleetNode) ?? new Date();
    this.throttle = new Throttle(deps.nodeRate, (ops, arrival) => this.submit(ops, arrival), () => this.setState(this.state === 'Throttled' ? 'Following' : this.state));
    this.client = (deps.connect ?? connect)({
      endpoint: target.address,
      ...deps.identity,
      keepalive: { intervalMs: 10_000, timeoutMs: 5000 },
    });
    this.lagTimer = setInterval(() => this.refreshLag(), deps.statusIntervalMs);
    this.lagTimer.unref();
  }

  start(): void {
    if (!isWatchTransport(this.client)) throw new Error('the library client has no watch transport');
    for (const kind of MIRRORED_KINDS) {
      const bookmark = this.acquired.bookmarks.get(kind.type);
      const reflector = new Reflector(this.client, kind.type, {
        namespace: kind.namespace,
        bootstrap: true,
        ...(bookmark !== undefined ? { fromBookmark: bookmark } : {}),
        aggregated: true,
        eventForm: 'lean',
        reconnect: { initialDelayMs: 500, maxDelayMs: 30_000, jitter: 0.5, onState: (s, detail) => this.kindState(kind, s, detail) },
      });
      this.reflectors.push(reflector);
      this.loops.push(this.follow(kind, reflector, bookmark === undefined));
    }
    this.writeState();
  }

  /** Stops pulling, waits for what was handed to the writer, closes the node's connection. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.lagTimer);
    clearTimeout(this.stateTimer);
    clearTimeout(this.unreachableTimer);
    this.throttle.close();
    await Promise.allSettled(this.reflectors.map((r) => r.close()));
    await Promise.allSettled(this.loops);
    await this.lastSubmit.catch(() => undefined);
    this.client.close();
  }

  get nodeState(): FleetNodeState {
    return this.state;
  }

  private async follow(kind: Kind, reflector: Reflector, firstBootstrap: boolean): Promise<void> {
    const written = this.writtenOf(kind.type);
    // A first bootstrap (no bookmark: a new node, or one whose copy was lost) is collected and diffed as a re-list.
    let initial: Map<string, CosiResource> | undefined = firstBootstrap ? new Map() : undefined;
    try {
      for await (const steps of reflector.steps()) {
        if (this.stopped) return;
        const received = Date.now();
        const ops: NodeOp[] = [];
        for (const step of steps) {
          if (initial !== undefined && step.op === 'created') {
            initial.set(step.resource.metadata.id, step.resource);
            continue;
          }
          if (initial !== undefined && step.op === 'marker' && step.event.type === 'bootstrapped') {
            ops.push(...this.diff(kind, written, initial, step.event.bookmark));
            initial = undefined;
            continue;
          }
          if (step.op === 'replaced') {
            initial = undefined;
            this.relists++;
            this.log.info('node lost our place; its kind was listed again', { type: kind.type });
            ops.push(...this.diff(kind, written, step.items, step.bookmark));
            continue;
          }
          const op = this.opOf(kind, written, step);
          if (op !== undefined) ops.push(op);
        }
        if (ops.length === 0) continue;
        this.lastChangeAt = new Date(received);
        this.throttle.add(ops, received);
        if (this.throttle.throttled && this.state === 'Following') this.setState('Throttled');
        // Backpressure: the node's own flow control holds what we do not pull.
        await this.room();
      }
    } catch (err) {
      if (this.stopped) return;
      // The library gave up (an error retrying cannot mend, e.g. our certificate refused): say so and stay Unreachable.
      this.lastError = err instanceof Error ? err.message : String(err);
      this.log.warn('following a kind of the node failed', { type: kind.type, error: this.lastError });
      this.unreachableSince ??= new Date();
      this.setState('Unreachable');
    }
  }

  /**
   * Backpressure: while the node has more than MAX_PENDING_OPS ops in the writer, wait for this follower's oldest
   * submission to settle, or, when the ops are another acquisition's of this node (being fenced), a moment. Never
   * an already settled promise in a loop: that would spin on microtasks and starve the I/O that drains the writer
   * (a replica stopped renewing its lease that way).
   */
  private async room(): Promise<void> {
    while (!this.stopped && this.deps.writer.pending(this.target.name) > MAX_PENDING_OPS) {
      const oldest = this.outstanding.values().next();
      await (oldest.done === true ? new Promise((resolve) => setTimeout(resolve, 100)) : oldest.value);
    }
  }

  /** Hands ops to the writer; a fenced answer ends the following. */
  private submit(ops: NodeOp[], arrived: number): Promise<void> {
    this.inFlight.push(arrived);
    const p = this.deps.writer.submit(this.acquired, ops).then(
      (result) => {
        // One node's submissions commit in order.
        this.inFlight.shift();
        if (result === 'fenced') {
          if (!this.stopped) this.events.fenced();
          return;
        }
        this.deps.observeCommit?.((Date.now() - arrived) / 1000);
        this.maybeCaughtUp();
      },
      (err: unknown) => {
        this.inFlight.shift();
        // Only a closed writer rejects: the fleet is stopping.
        this.log.debug('write not committed', { error: err instanceof Error ? err.message : String(err) });
      },
    );
    this.lastSubmit = p;
    this.outstanding.add(p);
    void p.finally(() => this.outstanding.delete(p));
    return p;
  }

  private writtenOf(type: string): Map<string, string> {
    let m = this.written.get(type);
    if (m === undefined) this.written.set(type, (m = new Map()));
    return m;
  }

  /** One event's write, or none when the fleet already holds that state (a change sent again after a takeover). */
  private opOf(kind: Kind, written: Map<string, string>, step: Delta): NodeOp | undefined {
    if (step.op !== 'created' && step.op !== 'updated' && step.op !== 'destroyed') return undefined;
    const bookmark = step.event.bookmark === undefined ? undefined : { type: kind.type, value: step.event.bookmark };
    const id = step.resource.metadata.id;
    const key = this.deps.keys.resource(kind, this.target.name, id);
    if (step.op === 'destroyed') {
      if (!written.delete(id)) return undefined;
      return { key, value: null, ...(bookmark !== undefined ? { bookmark } : {}) };
    }
    const value = this.valueOf(step.resource);
    const digest = mirrorDigest(value);
    if (written.get(id) === digest) return undefined;
    written.set(id, digest);
    return { key, value, ...(bookmark !== undefined ? { bookmark } : {}) };
  }

  /** A complete picture against what the fleet holds: puts for the new and changed, deletes for the gone. */
  private diff(kind: Kind, written: Map<string, string>, items: ReadonlyMap<string, CosiResource>, bookmark: Uint8Array | undefined): NodeOp[] {
    const ops: NodeOp[] = [];
    for (const [id, r] of items) {
      const value = this.valueOf(r);
      const digest = mirrorDigest(value);
      if (written.get(id) === digest) continue;
      written.set(id, digest);
      ops.push({ key: this.deps.keys.resource(kind, this.target.name, id), value });
    }
    for (const id of [...written.keys()]) {
      if (items.has(id)) continue;
      written.delete(id);
      ops.push({ key: this.deps.keys.resource(kind, this.target.name, id), value: null });
    }
    if (bookmark !== undefined) {
      const b = { type: kind.type, value: bookmark };
      const last = ops.pop();
      // With nothing to write the bookmark is not stored: resuming from the older one sends states the fleet holds.
      if (last !== undefined) ops.push({ ...last, bookmark: b });
    }
    return ops;
  }

  private valueOf(r: CosiResource): string {
    return encodeMirrored(r.metadata, JSON.stringify(r.spec), this.acquired.token);
  }

  private kindState(kind: Kind, s: ConnectionState, detail?: string): void {
    this.kindStates.set(kind.type, s);
    if (s === 'reconnecting' || s === 'resyncing') {
      if (detail !== undefined) this.lastError = detail;
      if (this.unreachableTimer === undefined && this.state !== 'Unreachable') {
        this.unreachableTimer = setTimeout(() => {
          this.unreachableTimer = undefined;
          if (this.stopped || this.allStreaming()) return;
          this.unreachableSince = new Date();
          this.log.info('node unreachable', { error: this.lastError });
          this.setState('Unreachable');
        }, this.deps.unreachableAfterMs);
      }
      return;
    }
    if (s === 'streaming' && this.allStreaming()) {
      clearTimeout(this.unreachableTimer);
      this.unreachableTimer = undefined;
      if (this.state !== 'Following' && this.state !== 'Throttled') {
        if (this.state === 'Unreachable') this.log.info('node reachable again');
        this.unreachableSince = null;
        this.lastError = null;
        this.setState(this.throttle.throttled ? 'Throttled' : 'Following');
      }
      this.maybeCaughtUp();
    }
  }

  private allStreaming(): boolean {
    return MIRRORED_KINDS.every((k) => this.kindStates.get(k.type) === 'streaming');
  }

  /** Caught up: every kind streaming and nothing of the node left in the writer. */
  private maybeCaughtUp(): void {
    if (this.caughtUpSent || !this.allStreaming()) return;
    if (this.deps.writer.pending(this.target.name) > 0 || this.inFlight.length > 0 || this.throttle.oldestHeld !== undefined) return;
    this.caughtUpSent = true;
    this.events.caughtUp();
  }

  private setState(s: FleetNodeState): void {
    if (s === this.state) return;
    this.state = s;
    this.writeState();
  }

  private refreshLag(): void {
    const lag = this.lagMs();
    // Caught up is said too: a small lag written with a state change would otherwise stay in the FleetNode for good.
    if (Math.abs(lag - this.writtenLagMs) > LAG_WRITE_STEP_MS || (lag === 0 && this.writtenLagMs !== 0)) this.writeState();
  }

  private lagMs(): number {
    const oldest = Math.min(this.inFlight[0] ?? Infinity, this.throttle.oldestHeld ?? Infinity);
    return Number.isFinite(oldest) ? Date.now() - oldest : 0;
  }

  /** Writes the FleetNode, at most once per STATE_WRITE_MIN_INTERVAL_MS (the last state wins). */
  private writeState(): void {
    if (this.stopped || this.stateTimer !== undefined) return;
    const wait = this.lastStateWrite + STATE_WRITE_MIN_INTERVAL_MS - Date.now();
    if (wait > 0) {
      this.stateTimer = setTimeout(() => {
        this.stateTimer = undefined;
        this.writeState();
      }, wait);
      return;
    }
    this.lastStateWrite = Date.now();
    this.writtenLagMs = this.lagMs();
    const spec: FleetNodeSpec = {
      address: this.target.address,
      state: this.state,
      replica: this.deps.replica,
      followingSince: this.followingSince.toISOString(),
      unreachableSince: this.unreachableSince?.toISOString() ?? null,
      lastError: this.lastError,
      lagMs: this.writtenLagMs,
      lastChangeAt: this.lastChangeAt?.toISOString() ?? null,
      relists: this.relists,
    };
    // Straight to the writer, not through the throttle: the node's state is never held back by its own flood.
    const p = this.deps.writer.submit(this.acquired, [{ key: this.deps.keys.fleetNode(this.target.name), value: fleetNodeValue(this.target.name, spec, this.created) }]).then(
      (result) => {
        if (result === 'fenced' && !this.stopped) this.events.fenced();
      },
      () => undefined,
    );
    this.lastSubmit = Promise.all([this.lastSubmit, p]);
  }
}

/** The creation time of a FleetNode as stored, so that a takeover keeps it. */
function createdOf(value: string | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const meta = value.split('\n', 2)[1];
  try {
    const created = (JSON.parse(meta ?? '') as { created?: unknown }).created;
    return typeof created === 'number' ? new Date(created) : undefined;
  } catch {
    return undefined;
  }
}
