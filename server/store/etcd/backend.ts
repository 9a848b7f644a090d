// etcd as the store's storage: keys and values (codec.ts), the etcd3 calls with their deadline and error mapping,
// the authoritative reads, and what the watch cache needs of a backend (../backend.ts): a kind read at one
// revision, a watch of the kind's prefix, a replay of its history, and fences. A fence is a write of the kind's
// prefix key itself, which the kind's watch sees and which names no resource.
import { randomBytes } from 'node:crypto';
import type { Etcd3, IKeyValue, IWatchResponse, Watcher } from 'etcd3';
import { CosiError } from '../../../shared/errors.js';
import type { Logger } from '../../../shared/log.js';
import { describePointer, type Kind, type Pointer, type Resource } from '../../../shared/resource.js';
import { Undecodable, type Backend, type BackendEvent, type BackendWatch, type KindSnapshot, type PastChange, type StoredValue, type WatchSink } from '../backend.js';
import { sortById } from '../kind-log.js';
import { decodeValue, kindPrefixOf } from './codec.js';
import { asStoreError, errorText } from './errors.js';
import { keepResumePoint } from './resume-point.js';
import { SwapBatcher, type Swap, type SwapResult } from './swap-batcher.js';

/**
 * Store revisions on etcd: etcd's revision times REVISION_SLOTS plus the change's place among the kind's changes
 * of that etcd revision. One etcd transaction may change several keys of a kind at one etcd revision (the swap
 * batcher's group commits, the fleet writer's); a position "after revision R" would resume past the rest of them.
 * With a slot per change every change has its own position, and `wholeRevision(R)` is "every change of R".
 */
const REVISION_SLOTS = 1024;

/** The store revision after every change of etcd revision `r`. */
export function wholeRevision(r: number): number {
  return r * REVISION_SLOTS + (REVISION_SLOTS - 1);
}

/** The etcd revision a store revision belongs to. */
export function etcdRevisionOf(storeRevision: number): number {
  return Math.floor(storeRevision / REVISION_SLOTS);
}

/** The first etcd revision with a change after store revision `after`. */
function etcdStartAfter(after: number): number {
  return after % REVISION_SLOTS === REVISION_SLOTS - 1 ? etcdRevisionOf(after) + 1 : etcdRevisionOf(after);
}

/** Numbers the changes of each etcd revision in a watch response, in order. */
function slotted<T extends { kv: IKeyValue }>(events: readonly T[]): { ev: T; etcd: number; revision: number }[] {
  let last = -1;
  let slot = 0;
  return events.map((ev) => {
    const etcd = Number(ev.kv.mod_revision);
    slot = etcd === last ? Math.min(slot + 1, REVISION_SLOTS - 2) : 0;
    last = etcd;
    return { ev, etcd, revision: etcd * REVISION_SLOTS + slot };
  });
}

export interface EtcdBackendOptions {
  readonly client: Etcd3;
  /** Names the history in bookmarks: this cluster's keys under this prefix. */
  readonly instance: string;
  readonly prefix: string;
  /** For errors: where etcd was expected. */
  readonly endpoints: readonly string[];
  readonly callTimeoutMs: number;
  readonly log: Logger;
}

/** A value this process wrote, kept until the kind's watch brings it back, so that it is not decoded again. */
interface Written {
  readonly value: Buffer;
  readonly resource: Resource;
  /** Where it was committed, once etcd said. */
  revision?: number;
}

export class EtcdBackend implements Backend {
  readonly name = 'etcd';
  readonly client: Etcd3;
  readonly instance: string;
  readonly prefix: string;
  private readonly log: Logger;
  private readonly swaps: SwapBatcher;
  /** By key: the last value this process wrote there, until its watch event. */
  private readonly written = new Map<string, Written>();
  private closed = false;

  constructor(private readonly opts: EtcdBackendOptions) {
    this.client = opts.client;
    this.instance = opts.instance;
    this.prefix = opts.prefix;
    this.log = opts.log;
    this.swaps = new SwapBatcher((req) => this.call(() => this.client.kv.txn(req)));
  }

  /** The key prefix of a kind: a kind's watch and list cover exactly its keys (and its fence, the prefix itself). */
  kindPrefix(k: Kind): string {
    return kindPrefixOf(this.prefix, k);
  }

  keyOf(p: Pointer): string {
    return this.kindPrefix(p) + p.id;
  }

  /** Runs an etcd call; its failure becomes a CosiError (unreachable: unavailable). */
  async call<T>(f: () => Promise<T>): Promise<T> {
    if (this.closed) throw new CosiError('unavailable', 'the etcd store is closed');
    try {
      return await f();
    } catch (err) {
      throw asStoreError(err, this.opts.endpoints);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client.close();
  }

  // ----- authoritative reads -----

  /** The key as etcd holds it now, or undefined. */
  async read(p: Pointer): Promise<IKeyValue | undefined> {
    const key = this.keyOf(p);
    const res = await this.call(() => this.client.get(key).exec());
    return res.kvs[0];
  }

  /** The resource as etcd holds it now. Throws not-found, data-loss (it does not decode), unavailable. */
  async get(p: Pointer): Promise<Resource> {
    const kv = await this.read(p);
    if (kv === undefined) throw new CosiError('not-found', `${describePointer(p)} doesn't exist`);
    return this.decodeOrThrow(p, kv);
  }

  decodeOrThrow(p: Pointer, kv: IKeyValue): Resource {
    const r = decodeValue(p, kv);
    if (typeof r === 'string') throw new CosiError('data-loss', `${describePointer(p)}: the value stored at ${kv.key.toString('utf8')} does not decode: ${r}`);
    return r;
  }

  /** The kind now (or at `revision`), sorted by ID. A value that does not decode is left out (and logged). */
  async list(k: Kind, revision?: number): Promise<Resource[]> {
    return sortById([...(await this.range(k, revision)).items]);
  }

  /**
   * Commits one compare-and-swap (swap-batcher.ts); `resource` is what the value decodes to, which the kind's watch
   * then takes instead of decoding the value again.
   */
  async swap(swap: Swap, resource: Resource, alone: boolean): Promise<SwapResult> {
    const key = swap.key.toString('utf8');
    const written: Written | undefined = swap.value === undefined ? undefined : { value: swap.value, resource };
    if (written !== undefined) this.written.set(key, written);
    // A swap that fails with an error may have been committed all the same: its watch event then still finds it.
    const result = await this.swaps.swap(swap, alone);
    if (written === undefined) return result;
    if (result.swapped) written.revision = result.revision;
    else if (this.written.get(key) === written) this.written.delete(key);
    return result;
  }

  // ----- the watch cache's backend -----

  snapshot(kind: Kind): Promise<KindSnapshot> {
    return this.range(kind);
  }

  listAt(kind: Kind, revision: number): Promise<Resource[]> {
    return this.list(kind, revision);
  }

  async fence(kind: Kind): Promise<number> {
    const prefix = this.kindPrefix(kind);
    const res = await this.call(() => this.client.put(prefix).value(randomBytes(8).toString('hex')).exec());
    return wholeRevision(Number(res.header.revision));
  }

  async watch(kind: Kind, after: number, sink: WatchSink): Promise<BackendWatch> {
    const prefix = this.kindPrefix(kind);
    const prefixBytes = Buffer.byteLength(prefix);
    const w = await this.createWatch(prefix, etcdStartAfter(after), (res) => {
      // A reconnect resumes at the etcd revision of the position: its changes already taken are left out.
      const position = sink.position();
      const events = slotted(res.events).filter((e) => e.revision > position).map((e) => this.eventOf(kind, prefix, prefixBytes, e.ev, e.revision));
      const last = res.events.at(-1);
      // Every change of the response's last etcd revision is in it: the kind has reached all of that revision.
      if (last !== undefined) events.push({ type: 'progress', revision: wholeRevision(Number(last.kv.mod_revision)) });
      if (events.length > 0) sink.events(events);
    });
    keepResumePoint(w, () => etcdStartAfter(sink.position()));
    w.on('disconnected', (err: Error) => sink.disconnected(err));
    w.on('connected', () => sink.reconnected());
    // etcd3 reports a watch etcd cancelled (its start was compacted) as an error.
    w.on('error', (err: Error) => sink.ended(err));
    return { cancel: () => void w.cancel().catch(() => undefined) };
  }

  /**
   * A watch from after+1 with previous values replays the kind's history in order; a fence written once that watch
   * exists marks where the replay is complete.
   */
  async history(kind: Kind, after: number, max: number): Promise<{ changes: PastChange[]; through: number }> {
    const prefix = this.kindPrefix(kind);
    const prefixBytes = Buffer.byteLength(prefix);
    const changes: PastChange[] = [];
    let fenceRevision = Number.POSITIVE_INFINITY;
    // etcd revisions: the last seen, and the fence's.
    let seen = 0;
    let done!: () => void;
    let fail!: (err: CosiError) => void;
    const finished = new Promise<void>((resolve, reject) => {
      done = resolve;
      fail = reject;
    });
    // The replay's handlers may reject it before it is awaited (while the watch is created or the fence written),
    // or when it never is (the fence's put failed): handled here, so a broken replay never becomes an unhandled
    // rejection, which would end the process.
    finished.catch(() => undefined);
    // Compacted history answers a read at that revision with an error (too-old); a watch would only be cancelled.
    const start = etcdStartAfter(after);
    await this.call(() => this.client.getAll().prefix(prefix).revision(start).limit(1).exec());
    const onData = (res: IWatchResponse) => {
      for (const { ev, etcd, revision } of slotted(res.events)) {
        seen = Math.max(seen, etcd);
        if (etcd >= fenceRevision) return done();
        if (ev.kv.key.length <= prefixBytes || revision <= after) continue;
        const p = { ...kind, id: idOf(ev.kv, prefixBytes) };
        const prev = ev.prev_kv === undefined || ev.prev_kv === null ? undefined : decodeValue(p, ev.prev_kv);
        const old = typeof prev === 'string' ? new Undecodable(prev) : prev;
        // All of them: the cache's log may forget more of its oldest changes before the fence comes back.
        changes.push({ id: p.id, revision, value: ev.type === 'Delete' ? undefined : this.decodeReported(p, ev.kv), old });
        if (changes.length > max) return fail(new CosiError('too-old', `more than ${max} changes of ${kind.type} since revision ${after}; list again`));
      }
    };
    const replay = await this.createWatch(prefix, start, onData, true);
    try {
      replay.on('error', (err: Error) => fail(asStoreError(err, [])));
      replay.on('disconnected', (err: Error) => fail(new CosiError('unavailable', `etcd went away while reading history: ${errorText(err)}`)));
      const put = this.fence(kind).then(etcdRevisionOf);
      put.catch(() => undefined); // a replay that failed first ends the fetch; the put's own failure then goes unheard
      // `finished` cannot resolve before the fence's revision is known: the race ends early only on a failed replay.
      fenceRevision = await Promise.race([put, finished.then(() => put)]);
      // The fence's event may have come before the answer to its put.
      if (seen >= fenceRevision) done();
      await finished;
    } finally {
      void replay.cancel().catch(() => undefined);
    }
    this.log.debug('history fetched from etcd', { kind: kind.type, after, changes: changes.length });
    return { changes, through: wholeRevision(fenceRevision) };
  }

  /**
   * A watch of the keys under `prefix` from `start`, once etcd has confirmed it (within the call deadline: etcd3
   * would otherwise wait for ever for an etcd that is gone).
   */
  async createWatch(prefix: string, start: number, onData: (res: IWatchResponse) => void, previousValues = false): Promise<Watcher> {
    if (this.closed) throw new CosiError('unavailable', 'the etcd store is closed');
    const builder = this.client.watch().prefix(prefix).startRevision(String(start));
    // Previous values double what etcd sends: only a replay of history needs them (live, the cache has the old state).
    const w = (previousValues ? builder.withPreviousKV() : builder).watcher();
    // Before the creation is confirmed: etcd3 may emit the first events in the same tick as 'connected'.
    w.on('data', onData);
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer to a watch request within ${this.opts.callTimeoutMs} ms`)), this.opts.callTimeoutMs);
        w.once('connected', () => resolve());
        w.once('error', (err: Error) => reject(err));
      });
      return w;
    } catch (err) {
      void w.cancel().catch(() => undefined);
      throw asStoreError(err, this.opts.endpoints);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The kind from one range read, now or at `revision`. A value that does not decode is left out, and logged. */
  private async range(kind: Kind, revision?: number): Promise<KindSnapshot> {
    const prefix = this.kindPrefix(kind);
    const prefixBytes = Buffer.byteLength(prefix);
    const read = this.client.getAll().prefix(prefix);
    const res = await this.call(() => (revision === undefined ? read : read.revision(etcdRevisionOf(revision))).exec());
    const items: Resource[] = [];
    const modRevisions = new Map<string, number>();
    for (const kv of res.kvs) {
      if (kv.key.length <= prefixBytes) continue; // the fence
      const id = idOf(kv, prefixBytes);
      const decoded = decodeValue({ ...kind, id }, kv);
      if (typeof decoded === 'string') {
        this.log.error('stored value does not decode; left out', { key: kv.key.toString('utf8'), revision: Number(kv.mod_revision), error: decoded });
        continue;
      }
      items.push(decoded);
      modRevisions.set(id, wholeRevision(Number(kv.mod_revision)));
    }
    return { revision: wholeRevision(Number(res.header.revision)), items, modRevisions };
  }

  private eventOf(kind: Kind, prefix: string, prefixBytes: number, ev: IWatchResponse['events'][number], revision: number): BackendEvent {
    if (ev.kv.key.length <= prefixBytes) return { type: 'progress', revision: wholeRevision(Number(ev.kv.mod_revision)) };
    const id = idOf(ev.kv, prefixBytes);
    if (ev.type === 'Delete') return { type: 'delete', id, revision };
    return { type: 'put', id, revision, value: this.ownWrite(prefix + id, ev.kv) ?? this.decodeReported({ ...kind, id }, ev.kv) };
  }

  /** The resource this process wrote as this event's value, if it did (the same bytes, at the key's new version). */
  private ownWrite(key: string, kv: IKeyValue): Resource | undefined {
    const written = this.written.get(key);
    if (written === undefined) return undefined;
    const revision = Number(kv.mod_revision);
    if (written.resource.metadata.version === Number(kv.version) && written.value.equals(kv.value)) {
      this.written.delete(key);
      return written.resource;
    }
    // Someone else's change after ours: ours has come and gone.
    if (written.revision !== undefined && revision >= written.revision) this.written.delete(key);
    return undefined;
  }

  /** A watched value, decoded; one that does not decode is logged, and watchers are told (ERRORED). */
  private decodeReported(p: Pointer, kv: IKeyValue): StoredValue {
    const decoded = decodeValue(p, kv);
    if (typeof decoded !== 'string') return decoded;
    const revision = Number(kv.mod_revision);
    this.log.error('stored value does not decode: reported to watchers as ERRORED', { key: kv.key.toString('utf8'), revision, error: decoded });
    return new Undecodable(`${describePointer(p)} at etcd revision ${revision} does not decode: ${decoded}`);
  }
}

function idOf(kv: IKeyValue, prefixBytes: number): string {
  return kv.key.subarray(prefixBytes).toString('utf8');
}
