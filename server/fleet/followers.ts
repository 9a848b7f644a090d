// Which nodes this replica follows: the nodes rendezvous hashing gives it among the live replicas (assign.ts),
// each acquired (ownership.ts) and followed (follower.ts), handed over when another replica wins it, and cleaned
// out of etcd when it leaves the node list. Connecting, resuming and listing again take a bootstrap slot (a FIFO
// semaphore of --max-bootstraps), so a fleet restart resumes a bounded number of nodes at once and never lists a
// thousand at the same moment (omni#1234). docs/design/fleet.md §3-4.
import type { Etcd3 } from 'etcd3';
import type { Logger } from '../../shared/log.js';
import type { NodeTarget } from '../api/node-directory.js';
import { desiredNodes, rendezvousOwner } from './assign.js';
import type { Acquired } from './contracts.js';
import { NodeFollower, type FollowerDeps } from './follower.js';
import { MIRRORED_KINDS, type FleetKeys } from './keys.js';

/** What the followers need of ownership (ownership.ts). */
export interface Owners {
  acquire(node: string): Promise<Acquired | undefined>;
  /** Deletes the owner key if it still has the acquisition's token. */
  release(a: Acquired): Promise<unknown>;
  /** Current owner of each owned node, as the owner keys say. */
  owners(): ReadonlyMap<string, { readonly replica: string }>;
}

export interface FollowersOptions {
  replica: string;
  keys: FleetKeys;
  client: Etcd3;
  owners: Owners;
  /** The live replicas. */
  replicas(): readonly string[];
  /** Whether this replica holds a lease now (while it rejoins, no node can be acquired). */
  live(): boolean;
  /** The node list of record. */
  nodes(): ReadonlyMap<string, NodeTarget>;
  /** Nodes the fleet holds a FleetNode of (some may have left the list while no replica owned them). */
  known(): Iterable<string>;
  follower: Omit<FollowerDeps, 'log'>;
  maxBootstraps: number;
  log: Logger;
}

export interface FollowersStats {
  following: number;
  bootstrapsInFlight: number;
  /** The most bootstrap slots held at once since start. */
  bootstrapsMax: number;
  handovers: number;
  fenced: number;
}

export class Followers {
  private readonly following = new Map<string, NodeFollower>();
  /** Nodes on their way in (waiting for a slot, acquiring, catching up) or out (handing over, removing). */
  private readonly busy = new Set<string>();
  private readonly queue: (() => void)[] = [];
  private slots = 0;
  private readonly counters = { bootstrapsMax: 0, handovers: 0, fenced: 0 };
  private stopped = false;
  private reconciling = false;
  private again = false;
  private retryTimer: NodeJS.Timeout | undefined;
  /** A reconcile met a node on its way in or out: once that work ends, reconcile again. */
  private skippedBusy = false;
  private reconcileScheduled = false;
  /** The desired set, computed again only when the node list or the replicas change. */
  private desiredCache: { nodes: ReadonlyMap<string, NodeTarget>; replicas: string; desired: Set<string> } | undefined;
  /** The bootstrap slot a follower holds until it has caught up: given back if it stops before that. */
  private readonly heldSlots = new WeakMap<NodeFollower, () => void>();

  constructor(private readonly opts: FollowersOptions) {}

  stats(): FollowersStats {
    return { following: this.following.size, bootstrapsInFlight: this.slots, ...this.counters };
  }

  /** How many followed nodes are in each state. */
  countByState(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const f of this.following.values()) counts.set(f.nodeState, (counts.get(f.nodeState) ?? 0) + 1);
    return counts;
  }

  /** The owner key of a followed node went to another replica (or with our lease): stop following it. */
  lost(node: string, token: string): void {
    const f = this.following.get(node);
    if (f === undefined || f.acquired.token !== token) return;
    this.following.delete(node);
    this.counters.fenced++;
    this.opts.log.info('node lost to another replica', { node });
    void this.stopFollower(f).then(() => this.reconcile());
  }

  /** Brings the followed set to the desired one; call on any change of replicas, owners or the node list. */
  reconcile(): void {
    if (this.stopped) return;
    if (this.reconciling) {
      this.again = true;
      return;
    }
    this.reconciling = true;
    try {
      const nodes = this.opts.nodes();
      const desired = this.desired(nodes);
      const owners = this.opts.owners.owners();
      // Work under way may end in a state this pass cannot see (a node acquired after it left the list).
      this.skippedBusy = this.busy.size > 0;
      // Without a lease no acquisition can succeed: 'rejoined' reconciles again.
      for (const name of this.opts.live() ? desired : []) {
        if (this.following.has(name)) continue;
        if (this.busy.has(name)) {
          this.skippedBusy = true;
          continue;
        }
        const owner = owners.get(name);
        // Owned by another replica: it hands the node over when it sees it lost it; its key going away calls us again.
        if (owner !== undefined && owner.replica !== this.opts.replica) continue;
        const target = nodes.get(name);
        if (target !== undefined) this.bringIn(target);
      }
      for (const [name, f] of this.following) {
        if (desired.has(name)) continue;
        if (this.busy.has(name)) {
          this.skippedBusy = true;
          continue;
        }
        if (nodes.has(name)) this.handOver(name, f);
        else this.remove(name, f);
      }
      // Nodes that left the list while no replica owned them: their rendezvous winner takes them and cleans up.
      const replicas = this.opts.replicas();
      for (const name of this.opts.known()) {
        if (nodes.has(name) || owners.has(name) || this.following.has(name) || this.busy.has(name)) continue;
        if (rendezvousOwner(name, replicas) === this.opts.replica) this.removeUnowned(name);
      }
    } finally {
      this.reconciling = false;
      if (this.again) {
        this.again = false;
        queueMicrotask(() => this.reconcile());
      }
    }
  }

  private desired(nodes: ReadonlyMap<string, NodeTarget>): Set<string> {
    const replicas = this.opts.replicas();
    const key = replicas.join('\u0000');
    const c = this.desiredCache;
    if (c !== undefined && c.nodes === nodes && c.replicas === key) return c.desired;
    const desired = desiredNodes(this.opts.replica, [...nodes.keys()], replicas);
    this.desiredCache = { nodes, replicas: key, desired };
    return desired;
  }

  /** A node's work ended (in or out): reconcile again if a reconcile passed it by meanwhile (once per tick). */
  private settled(name: string): void {
    this.busy.delete(name);
    if (!this.skippedBusy || this.reconcileScheduled) return;
    this.reconcileScheduled = true;
    setImmediate(() => {
      this.reconcileScheduled = false;
      this.reconcile();
    });
  }

  /** Stops every follower (handover by stopping: the owner keys go with the lease, or are released). */
  async stop(release: boolean): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    for (const wake of this.queue.splice(0)) wake();
    const all = [...this.following.values()];
    this.following.clear();
    await Promise.allSettled(
      all.map(async (f) => {
        await this.stopFollower(f);
        if (release) await this.opts.owners.release(f.acquired).catch(() => undefined);
      }),
    );
  }

  /** Everything this replica follows stops at once (the lease was lost: the writes would be fenced anyway). */
  async dropAll(): Promise<void> {
    const all = [...this.following.values()];
    this.following.clear();
    this.counters.fenced += all.length;
    await Promise.allSettled(all.map((f) => this.stopFollower(f)));
  }

  private async slot(): Promise<() => void> {
    if (this.slots >= this.opts.maxBootstraps) await new Promise<void>((resolve) => this.queue.push(resolve));
    this.slots++;
    this.counters.bootstrapsMax = Math.max(this.counters.bootstrapsMax, this.slots);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.slots--;
      this.queue.shift()?.();
    };
  }

  private bringIn(target: NodeTarget): void {
    const name = target.name;
    this.busy.add(name);
    void (async () => {
      const free = await this.slot();
      let keepSlot = false;
      try {
        if (this.stopped) return;
        const acquired = await this.opts.owners.acquire(name);
        if (acquired === undefined || this.stopped) return;
        const follower = new NodeFollower({ ...this.opts.follower, log: this.opts.log }, target, acquired, {
          caughtUp: () => free(),
          fenced: () => this.onFenced(name, follower),
        });
        this.following.set(name, follower);
        this.heldSlots.set(follower, free);
        keepSlot = true;
        follower.start();
      } catch (err) {
        this.opts.log.warn('cannot take a node yet', { node: name, error: err instanceof Error ? err.message : String(err) });
        this.retryLater();
      } finally {
        if (!keepSlot) free();
        this.settled(name);
      }
    })();
  }

  /** A node another replica now wins: stop, let the writer drain, then release the owner key. */
  private handOver(name: string, f: NodeFollower): void {
    this.busy.add(name);
    void (async () => {
      const free = await this.slot();
      try {
        await this.stopFollower(f);
        this.following.delete(name);
        await this.opts.owners.release(f.acquired);
        this.counters.handovers++;
        this.opts.log.info('node handed over', { node: name });
      } catch (err) {
        // Our lease lives on, so the owner key would too: the node's new winner would wait for it for good.
        this.opts.log.warn('handover: the owner key is not released yet; retrying', { node: name, error: err instanceof Error ? err.message : String(err) });
        if (!this.following.has(name)) this.releaseLater(f.acquired);
      } finally {
        free();
        this.settled(name);
      }
    })();
  }

  /** A node that left the list: its rows, bookmarks, FleetNode and owner key go, in one fenced transaction. */
  private remove(name: string, f: NodeFollower): void {
    this.busy.add(name);
    void (async () => {
      try {
        await this.stopFollower(f);
        this.following.delete(name);
        await this.deleteNode(name, f.acquired);
      } catch (err) {
        this.opts.log.warn('cannot remove a node yet', { node: name, error: err instanceof Error ? err.message : String(err) });
      } finally {
        this.settled(name);
      }
    })();
  }

  /** A node that left the list while nobody owned it: acquired first, so that the delete is fenced too. */
  private removeUnowned(name: string): void {
    this.busy.add(name);
    void (async () => {
      try {
        const acquired = await this.opts.owners.acquire(name);
        if (acquired !== undefined) await this.deleteNode(name, acquired);
      } catch (err) {
        this.opts.log.warn('cannot remove a node yet', { node: name, error: err instanceof Error ? err.message : String(err) });
        this.retryLater();
      } finally {
        this.settled(name);
      }
    })();
  }

  private async deleteNode(name: string, acquired: Acquired): Promise<void> {
    const { client, keys } = this.opts;
    const ops = [
      ...MIRRORED_KINDS.map((k) => client.delete().prefix(keys.nodeKindPrefix(k, name))),
      client.delete().prefix(keys.bookmarkPrefix(name)),
      client.delete().key(keys.fleetNode(name)),
      client.delete().key(keys.owner(name)),
    ];
    const res = await client.if(keys.owner(name), 'Create', '==', acquired.token).then(...ops).commit();
    this.opts.log.info(res.succeeded ? 'node removed from the fleet' : 'node removal fenced: another replica owns it', { node: name });
  }

  private onFenced(name: string, f: NodeFollower): void {
    if (this.following.get(name) !== f) return;
    this.counters.fenced++;
    this.following.delete(name);
    this.opts.log.warn('writes for the node were fenced: another replica owns it now', { node: name });
    void this.stopFollower(f).then(() => this.reconcile());
  }

  /** Stops a follower, giving back its bootstrap slot if it had not caught up (lost lease, fenced, handed over). */
  private stopFollower(f: NodeFollower): Promise<void> {
    this.heldSlots.get(f)?.();
    return f.stop();
  }

  /** Releases an owner key again until etcd takes it (a key with another token is left alone by release). */
  private releaseLater(a: Acquired): void {
    if (this.stopped) return;
    setTimeout(() => {
      this.opts.owners.release(a).then(
        () => {
          this.counters.handovers++;
          this.opts.log.info('node handed over', { node: a.node });
        },
        () => this.releaseLater(a),
      );
    }, 1000).unref();
  }

  private retryLater(): void {
    if (this.retryTimer !== undefined || this.stopped) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.reconcile();
    }, 1000);
  }
}
