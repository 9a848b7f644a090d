// Who owns which node: the keys `<P>owners/<node>` (value: the replica's name), each on its owner's lease, as every
// replica reads them; and this replica's acquisitions. A node is acquired in one transaction that creates its owner
// key only if absent and, in the same revision, reads what the previous owner committed: the node's bookmarks, the
// fleet's copy of its resources, its FleetNode. The key's create_revision is the fence token every later write for
// the node compares (writer.ts). docs/design/fleet.md §3.
import type { Etcd3, IKeyValue, IRequestOp, ITxnResponse } from 'etcd3';
import { EventEmitter } from 'node:events';
import { CosiError } from '../../shared/errors.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import { asStoreError } from '../store/etcd/errors.js';
import type { Acquired } from './contracts.js';
import { checkNodeName, MIRRORED_KINDS, type FleetKeys } from './keys.js';
import { PrefixWatch, prefixEnd, type Membership } from './membership.js';
import { mirrorDigest } from './mirror.js';
import { decodeBookmarkValue } from './bookmark-value.js';

export interface OwnerInfo {
  readonly replica: string;
  /** The owner key's create_revision: the owner's token. */
  readonly createRevision: string;
}

export interface OwnershipEvents {
  /** `owners()` changed. */
  changed: [];
  /**
   * A node this replica acquired is no longer its own: its owner key was deleted (lease gone) or created again by
   * another, or the lease was lost. Writes under `token` are fenced from now on; stop the node's follower.
   */
  lostOwnership: [node: string, token: string];
}

export interface OwnershipOptions {
  readonly log?: Logger;
}

export class Ownership extends EventEmitter<OwnershipEvents> {
  private readonly view = new Map<string, OwnerInfo>();
  /** node -> token, for the nodes this replica acquired and has not released or lost. */
  private readonly mine = new Map<string, string>();
  private readonly watch: PrefixWatch;
  private readonly log: Logger;
  private readonly prefixBytes: number;
  /** Resolves once the owner keys have been read in full. */
  readonly ready: Promise<void>;

  constructor(
    private readonly client: Etcd3,
    private readonly keys: FleetKeys,
    private readonly membership: Membership,
    opts: OwnershipOptions = {},
  ) {
    super();
    this.log = (opts.log ?? silentLogger).with({ replica: membership.replica });
    this.prefixBytes = Buffer.byteLength(keys.ownersPrefix);
    this.membership.on('lost', this.onLeaseLost);
    this.watch = new PrefixWatch(client, keys.ownersPrefix, { reset: (kvs) => this.reset(kvs), events: (changes) => this.apply(changes) }, this.log);
    this.ready = this.watch.ready;
  }

  /** Every node's owner, as last read. */
  owners(): ReadonlyMap<string, OwnerInfo> {
    return this.view;
  }

  /** The nodes this replica holds, with their tokens. */
  held(): ReadonlyMap<string, string> {
    return this.mine;
  }

  /**
   * Takes `node` if nobody owns it: its owner key on this replica's lease, and what the fleet holds of the node as
   * of that same revision. Undefined when another (or an earlier acquisition of this replica) holds it.
   */
  async acquire(node: string): Promise<Acquired | undefined> {
    checkNodeName(node);
    if (!this.membership.live) throw new CosiError('unavailable', `replica ${this.membership.replica} lost its lease and is joining again; no node can be acquired until it has`);
    const ownerKey = Buffer.from(this.keys.owner(node));
    const prefixes = [this.keys.bookmarkPrefix(node), ...MIRRORED_KINDS.map((k) => this.keys.nodeKindPrefix(k, node))];
    const reads = prefixes.map((p): IRequestOp => {
      const key = Buffer.from(p);
      return { request_range: { key, range_end: prefixEnd(key) } };
    });
    let res: ITxnResponse;
    try {
      res = await this.client.kv.txn({
        compare: [{ key: ownerKey, target: 'Create', result: 'Equal', create_revision: 0 }],
        success: [{ request_put: { key: ownerKey, value: Buffer.from(this.membership.replica), lease: this.membership.leaseId } }, ...reads, { request_range: { key: Buffer.from(this.keys.fleetNode(node)) } }],
        failure: [{ request_range: { key: ownerKey, keys_only: true } }],
      });
    } catch (err) {
      throw asStoreError(err, []);
    }
    if (!res.succeeded) return undefined;
    const token = res.header.revision;
    // Held under an earlier token whose deletion the watch has not shown yet: that one is gone, since the key was absent.
    const earlier = this.mine.get(node);
    if (earlier !== undefined) this.lose(node, earlier);
    this.mine.set(node, token);
    // After the put: the bookmarks, each mirrored kind, the FleetNode.
    const ranges = res.responses.slice(1).map((r) => r.response_range.kvs);
    const acquired: Acquired = {
      node,
      token,
      bookmarks: this.bookmarksOf(node, ranges[0] ?? []),
      written: new Map(MIRRORED_KINDS.map((k, i) => [k.type, digestsOf(ranges[1 + i] ?? [], Buffer.byteLength(this.keys.nodeKindPrefix(k, node)))])),
      fleetNode: ranges[1 + MIRRORED_KINDS.length]?.[0]?.value.toString('utf8'),
    };
    this.log.debug('acquired', { node, token });
    // The watch may have seen the key come and go already (the lease revoked meanwhile): then it is lost at once.
    if (this.watch.revision >= BigInt(token) && this.view.get(node)?.createRevision !== token) setImmediate(() => this.lose(node, token));
    return acquired;
  }

  /** Gives `a.node` up: deletes its owner key if it is still this acquisition's. False when it no longer was. */
  async release(a: Acquired): Promise<boolean> {
    const ours = this.mine.get(a.node) === a.token;
    // From here, the key's deletion is this release, not a loss.
    if (ours) this.mine.delete(a.node);
    const key = Buffer.from(this.keys.owner(a.node));
    try {
      const res = await this.client.kv.txn({
        compare: [{ key, target: 'Create', result: 'Equal', create_revision: a.token }],
        success: [{ request_delete_range: { key } }],
        failure: [],
      });
      this.log.debug('released', { node: a.node, token: a.token, released: res.succeeded });
      return res.succeeded;
    } catch (err) {
      // Not released: still ours while the key says so.
      if (ours && this.view.get(a.node)?.createRevision === a.token && !this.mine.has(a.node)) this.mine.set(a.node, a.token);
      throw asStoreError(err, []);
    }
  }

  close(): void {
    this.membership.off('lost', this.onLeaseLost);
    this.watch.close();
  }

  private readonly onLeaseLost = (): void => {
    for (const [node, token] of [...this.mine]) this.lose(node, token);
  };

  private lose(node: string, token: string): void {
    if (this.mine.get(node) !== token) return;
    this.mine.delete(node);
    this.log.info('ownership lost', { node, token, owner: this.view.get(node)?.replica ?? null });
    this.emit('lostOwnership', node, token);
  }

  private nodeOf(kv: IKeyValue): string {
    return kv.key.subarray(this.prefixBytes).toString('utf8');
  }

  private reset(kvs: readonly IKeyValue[]): void {
    const next = new Map<string, OwnerInfo>();
    for (const kv of kvs) next.set(this.nodeOf(kv), ownerInfo(kv));
    const changed = next.size !== this.view.size || [...next].some(([n, o]) => !sameOwner(this.view.get(n), o));
    this.view.clear();
    for (const [n, o] of next) this.view.set(n, o);
    this.checkMine();
    if (changed) this.emit('changed');
  }

  private apply(changes: ReadonlyMap<string, IKeyValue | undefined>): void {
    let changed = false;
    for (const [key, kv] of changes) {
      const node = Buffer.from(key, 'latin1').subarray(this.prefixBytes).toString('utf8');
      const before = this.view.get(node);
      const after = kv === undefined ? undefined : ownerInfo(kv);
      if (sameOwner(before, after)) continue;
      changed = true;
      if (after === undefined) this.view.delete(node);
      else this.view.set(node, after);
    }
    this.checkMine();
    if (changed) this.emit('changed');
  }

  /** Each held node whose owner key the view no longer shows with its token is lost. */
  private checkMine(): void {
    for (const [node, token] of [...this.mine]) if (this.watch.revision >= BigInt(token) && this.view.get(node)?.createRevision !== token) this.lose(node, token);
  }

  private bookmarksOf(node: string, kvs: readonly IKeyValue[]): Map<string, Uint8Array> {
    const prefixBytes = Buffer.byteLength(this.keys.bookmarkPrefix(node));
    const bookmarks = new Map<string, Uint8Array>();
    for (const kv of kvs) {
      const type = kv.key.subarray(prefixBytes).toString('utf8');
      const b = decodeBookmarkValue(kv.value)?.bookmark;
      // Without it the node's kind is listed again (a bootstrap), which is correct, only slower.
      if (b === undefined) this.log.warn('stored bookmark does not decode; the kind will be listed again', { node, type });
      else bookmarks.set(type, b);
    }
    return bookmarks;
  }
}

function ownerInfo(kv: IKeyValue): OwnerInfo {
  return { replica: kv.value.toString('utf8'), createRevision: kv.create_revision };
}

function sameOwner(a: OwnerInfo | undefined, b: OwnerInfo | undefined): boolean {
  return a?.replica === b?.replica && a?.createRevision === b?.createRevision;
}

/** node-local id -> digest of the stored value, for the keys under a node's kind prefix. */
function digestsOf(kvs: readonly IKeyValue[], prefixBytes: number): Map<string, string> {
  return new Map(kvs.map((kv) => [kv.key.subarray(prefixBytes).toString('utf8'), mirrorDigest(kv.value)]));
}
