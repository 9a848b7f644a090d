// A fleet replica's membership: a key `<P>replicas/<name>` on the replica's lease, and the set of live replicas
// that every replica reads from those keys (what rendezvous assignment hashes over, assign.ts). A lost lease (etcd
// said it expired or was revoked, or it could not be kept alive) is reported, and the replica joins again with a new
// lease: whatever it held under the old one is gone. docs/design/fleet.md §3.
import type { Etcd3, IKeyValue, ITxnRequest, Lease, Watcher } from 'etcd3';
import { EventEmitter } from 'node:events';
import { CosiError } from '../../shared/errors.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import { asStoreError, errorText } from '../store/etcd/errors.js';
import type { FleetKeys } from './keys.js';

/** What a replica publishes about itself in its key. */
export interface ReplicaInfo {
  readonly address: string;
  readonly startedAt: number;
  readonly version: string;
}

export interface MembershipEvents {
  /** The set of live replicas changed; the new set, sorted. */
  changed: [replicas: readonly string[]];
  /** The lease is gone: everything attached to it (the replica key, owner keys) is gone or will be within its TTL. */
  lost: [err: Error];
  /** Registered again after `lost`, under a new lease. */
  rejoined: [leaseId: string];
}

export interface MembershipOptions {
  readonly log?: Logger;
}

/** The first delay between attempts to join again or to read a prefix again; it doubles up to MAX_RETRY_MS. */
const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5000;

export class Membership extends EventEmitter<MembershipEvents> {
  private currentLease: Lease;
  private currentLeaseId: string;
  private isLive = true;
  private closed = false;
  private names: readonly string[] = [];
  private readonly watch: PrefixWatch;
  private readonly log: Logger;
  /** Resolves once the replica set has been read in full (a replica claims nodes only after that). */
  readonly ready: Promise<void>;

  /**
   * Registers `replica` under a new lease of `ttlSec` (kept alive every ttlSec/3) and starts reading the replica
   * set. If the name is still registered (an earlier incarnation, dead less than a TTL ago), waits at most
   * ttlSec + 1 s for that key to go, then fails with `already-exists`.
   */
  static async join(client: Etcd3, keys: FleetKeys, replica: string, ttlSec: number, info: ReplicaInfo, opts: MembershipOptions = {}): Promise<Membership> {
    checkReplicaName(replica);
    const log = (opts.log ?? silentLogger).with({ replica });
    const registered = await register(client, keys, replica, ttlSec, info, log);
    return new Membership(client, keys, replica, ttlSec, info, registered, log);
  }

  private constructor(
    private readonly client: Etcd3,
    private readonly keys: FleetKeys,
    readonly replica: string,
    readonly ttlSec: number,
    private readonly info: ReplicaInfo,
    registered: Registered,
    log: Logger,
  ) {
    super();
    this.log = log;
    this.currentLease = registered.lease;
    this.currentLeaseId = registered.id;
    this.watchLease(registered.lease);
    this.watch = new PrefixWatch(client, keys.replicasPrefix, { reset: (kvs) => this.replace(kvs), events: () => this.reread() }, log);
    this.ready = this.watch.ready;
  }

  /** The live replicas' names, sorted. */
  replicas(): readonly string[] {
    return this.names;
  }

  /** The current lease (owner keys go on it). After `lost`, the dead one until `rejoined`. */
  get leaseId(): string {
    return this.currentLeaseId;
  }

  /** False from `lost` until `rejoined`: keys put on the lease now would be refused. */
  get live(): boolean {
    return this.isLive && !this.closed;
  }

  /** Stops reading and revokes the lease: the replica key and every key on the lease go at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watch.close();
    try {
      await this.currentLease.revoke();
    } catch (err) {
      // It expires within its TTL anyway.
      this.log.warn('could not revoke the lease; it expires on its own', { lease: this.currentLeaseId, error: errorText(err) });
    }
  }

  private watchLease(lease: Lease): void {
    lease.once('lost', (err: Error) => {
      if (this.closed || lease !== this.currentLease) return;
      this.isLive = false;
      this.log.warn('lease lost; joining again', { lease: this.currentLeaseId, error: errorText(err) });
      this.emit('lost', err);
      void this.rejoin();
    });
  }

  private async rejoin(): Promise<void> {
    for (let delay = FIRST_RETRY_MS; !this.closed; delay = Math.min(delay * 2, MAX_RETRY_MS)) {
      try {
        const registered = await register(this.client, this.keys, this.replica, this.ttlSec, this.info, this.log);
        if (this.closed) {
          await registered.lease.revoke().catch(() => undefined);
          return;
        }
        this.currentLease = registered.lease;
        this.currentLeaseId = registered.id;
        this.isLive = true;
        this.watchLease(registered.lease);
        this.log.info('joined again', { lease: registered.id });
        this.emit('rejoined', registered.id);
        return;
      } catch (err) {
        this.log.warn('could not join again; retrying', { error: errorText(err), retryInMs: delay });
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  /** A change under the prefix: the names are read from the watch's own copy of the keys. */
  private reread(): void {
    this.replace(this.watch.values());
  }

  private replace(kvs: Iterable<IKeyValue>): void {
    const prefixBytes = Buffer.byteLength(this.keys.replicasPrefix);
    const names = [...kvs].map((kv) => kv.key.subarray(prefixBytes).toString('utf8')).sort();
    if (names.length === this.names.length && names.every((n, i) => n === this.names[i])) return;
    this.names = Object.freeze(names);
    this.log.debug('replicas changed', { replicas: names });
    this.emit('changed', this.names);
  }
}

function checkReplicaName(name: string): void {
  if (name === '' || name.includes('/') || Buffer.byteLength(name) > 253) throw new CosiError('invalid-argument', `replica name ${JSON.stringify(name)} must be 1-253 bytes without "/"`);
}

interface Registered {
  readonly lease: Lease;
  readonly id: string;
}

/** Grants a lease and creates the replica's key on it, waiting (bounded) for an earlier incarnation's key to go. */
async function register(client: Etcd3, keys: FleetKeys, replica: string, ttlSec: number, info: ReplicaInfo, log: Logger): Promise<Registered> {
  // etcd3 keeps the lease alive every TTL/3 (as etcd's Go client does) and emits `lost` when it cannot.
  const lease = client.lease(ttlSec);
  let id: string;
  try {
    id = await lease.grant();
  } catch (err) {
    throw asStoreError(err, []);
  }
  const key = Buffer.from(keys.replica(replica));
  const create: ITxnRequest = {
    compare: [{ key, target: 'Create', result: 'Equal', create_revision: 0 }],
    success: [{ request_put: { key, value: Buffer.from(JSON.stringify(info)), lease: id } }],
    failure: [{ request_range: { key } }],
  };
  const deadline = Date.now() + (ttlSec + 1) * 1000;
  try {
    for (;;) {
      const res = await client.kv.txn(create);
      if (res.succeeded) return { lease, id };
      const holder = res.responses[0]?.response_range.kvs[0];
      log.info('the replica name is still registered (an earlier incarnation?); waiting for it to go', { key: keys.replica(replica), lease: holder?.lease });
      if (!(await deleted(client, key, BigInt(res.header.revision) + 1n, deadline))) {
        throw new CosiError(
          'already-exists',
          `replica name ${JSON.stringify(replica)} is in use: ${keys.replica(replica)} (lease ${holder?.lease ?? '?'}) stayed for ${ttlSec + 1} s; is another replica running with this name?`,
        );
      }
    }
  } catch (err) {
    await lease.revoke().catch(() => undefined);
    throw asStoreError(err, []);
  }
}

/** Whether `key` is deleted at `from` or later, before `deadline` (ms since the epoch). */
async function deleted(client: Etcd3, key: Buffer, from: bigint, deadline: number): Promise<boolean> {
  const watcher = client.watch().key(key).startRevision(String(from)).watcher();
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<boolean>((resolve, reject) => {
      timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
      watcher.on('delete', () => resolve(true));
      watcher.on('error', reject);
    });
  } finally {
    clearTimeout(timer);
    void watcher.cancel().catch(() => undefined);
  }
}

/** What a PrefixWatch tells its owner. */
export interface PrefixHandler {
  /** The keys under the prefix as read in full: first, and again after the watch broke off (compaction). */
  reset(kvs: readonly IKeyValue[]): void;
  /** One watch response was applied to `values()`; the changed keys' new state (undefined: deleted). */
  events(changes: ReadonlyMap<string, IKeyValue | undefined>): void;
}

/**
 * The keys under a prefix, kept current: a full read, then a watch from the revision after it. etcd3 resumes a
 * broken stream from the last revision it saw; a watch that etcd cancels (its start was compacted) is replaced by
 * a new full read and watch.
 */
export class PrefixWatch {
  private readonly kvs = new Map<string, IKeyValue>();
  private watcher: Watcher | undefined;
  private closed = false;
  private seen = 0n;
  /** Ends the current wait (a retry's delay, or following the watch) when the view is closed. */
  private wake: (() => void) | undefined;
  readonly ready: Promise<void>;

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    private readonly handler: PrefixHandler,
    private readonly log: Logger,
  ) {
    let ready!: () => void;
    this.ready = new Promise((r) => (ready = r));
    void this.run(ready);
  }

  /** The keys under the prefix (whole keys, as latin1 strings of their bytes) and their last seen state. */
  values(): IterableIterator<IKeyValue> {
    return this.kvs.values();
  }

  /** The latest etcd revision this view reflects (0 before the first read). */
  get revision(): bigint {
    return this.seen;
  }

  close(): void {
    this.closed = true;
    void this.watcher?.cancel().catch(() => undefined);
    this.wake?.();
  }

  private async run(ready: () => void): Promise<void> {
    for (let delay = FIRST_RETRY_MS; !this.closed; ) {
      try {
        const start = Buffer.from(this.prefix);
        const res = await this.client.kv.range({ key: start, range_end: prefixEnd(start) });
        if (this.closed) return;
        this.kvs.clear();
        for (const kv of res.kvs) this.kvs.set(kv.key.toString('latin1'), kv);
        this.seen = BigInt(res.header.revision);
        this.handler.reset(res.kvs);
        ready();
        delay = FIRST_RETRY_MS;
        const ended = await this.follow(this.seen + 1n);
        if (ended !== undefined) throw ended;
      } catch (err) {
        if (this.closed) return;
        this.log.warn('could not read or watch; reading again', { prefix: this.prefix, error: errorText(err), retryInMs: delay });
        await new Promise<void>((r) => {
          this.wake = r;
          setTimeout(r, delay);
        });
        delay = Math.min(delay * 2, MAX_RETRY_MS);
      }
    }
  }

  /** Applies watch responses from `from` until the watch ends: with its error, or undefined once closed. */
  private follow(from: bigint): Promise<Error | undefined> {
    const watcher = this.client.watch().prefix(this.prefix).startRevision(String(from)).watcher();
    this.watcher = watcher;
    if (this.closed) void watcher.cancel().catch(() => undefined);
    watcher.on('data', (res) => {
      const changes = new Map<string, IKeyValue | undefined>();
      for (const ev of res.events) {
        const k = ev.kv.key.toString('latin1');
        if (ev.type === 'Delete') this.kvs.delete(k);
        else this.kvs.set(k, ev.kv);
        changes.set(k, ev.type === 'Delete' ? undefined : ev.kv);
      }
      const revision = BigInt(res.header.revision);
      if (revision > this.seen) this.seen = revision;
      if (changes.size > 0) this.handler.events(changes);
    });
    return new Promise((resolve) => {
      // A watcher cancelled before etcd confirmed it ends without an 'end' event: close() wakes this too.
      this.wake = () => resolve(undefined);
      watcher.once('end', () => resolve(undefined));
      // `on`, not `once`: an 'error' with no listener would throw.
      watcher.on('error', (err: Error) => {
        void watcher.cancel().catch(() => undefined);
        resolve(this.closed ? undefined : err);
      });
    });
  }
}

/** The end of the range of every key that starts with `prefix`. */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // all keys
}
