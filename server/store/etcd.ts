// The store on etcd. A resource is one key, `<prefix><namespace>/<type>/<id>`; its version is the key's etcd version,
// and every write is a transaction that compares the key's mod_revision with the one it read (compare-and-swap), so
// concurrent writers never overwrite each other. The feed keeps one etcd watch per kind, shared by every API
// watcher of that kind, bootstrapped from one consistent range read; revisions and bookmarks are etcd revisions, so a
// watch resumes across a restart of cosid, and on any cosid that serves the same etcd and prefix.
import { ExponentialBackoff, type IBackoff } from 'cockatiel';
import { createHash, randomBytes } from 'node:crypto';
import { Etcd3, type IKeyValue, type IWatchResponse, type Watcher } from 'etcd3';
import { CosiError, isCosiError } from '../../shared/errors.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import { describePointer, kindKey, type Kind, type Metadata, type Pointer, type Resource } from '../../shared/resource.js';
import type { Json } from '../../shared/wire.js';
import { historyLimits, KindLog, sortById, type HistoryLimits, type HistoryOptions } from './kind-log.js';
import { mutate, MutatingStore, storedResource, storedSpecJson, type Mutation } from './mutations.js';
import type { Change, ChangeFeed, KindHistory, ResourceStore } from './store.js';

export interface EtcdStoreOptions {
  /** Client URLs, e.g. https://127.0.0.1:2379. */
  endpoints: readonly string[];
  /** Mutual TLS to etcd; without it the endpoints must be http:// on loopback (checked). */
  tls?: { caPem: string; certPem: string; keyPem: string };
  /** Every key starts with this (default /cosi/). One prefix per node: /cosi/<node>/. */
  prefix?: string;
  history?: HistoryOptions;
  /** Deadline of each etcd call (default 5 s): past it, the call answers unavailable. */
  callTimeoutMs?: number;
  /** A kind's watch may be disconnected this long (a member failing over) before its readers hear of it (default 2 s). */
  watchGraceMs?: number;
  log?: Logger;
}

/** First line of a stored value: its format. The metadata line and the spec's JSON text follow. */
const FORMAT = 'cosi-resource/1';
/** More compare-and-swap rounds than this for one write means a writer storm: the write gives up (aborted). */
const MAX_CAS_ATTEMPTS = 64;

export class EtcdStore extends MutatingStore implements ResourceStore, ChangeFeed {
  readonly backend = 'etcd';
  readonly feed: ChangeFeed = this;
  private readonly kinds = new Map<string, Promise<EtcdKind>>();
  private readonly ready = new Map<string, EtcdKind>();
  private readonly limits: HistoryLimits;
  private closed = false;

  private constructor(
    readonly client: Etcd3,
    readonly instance: string,
    readonly prefix: string,
    private readonly opts: EtcdStoreOptions,
    readonly log: Logger,
  ) {
    super();
    this.limits = historyLimits(opts.history);
  }

  /** Connects and checks that etcd answers (within the call deadline): a clear error at start beats a silent wait. */
  static async connect(opts: EtcdStoreOptions): Promise<EtcdStore> {
    const endpoints = [...opts.endpoints];
    if (endpoints.length === 0) throw new Error('etcd: no endpoint given');
    for (const e of endpoints) checkEndpoint(e, opts.tls !== undefined);
    const prefix = opts.prefix ?? '/cosi/';
    if (prefix === '' || !prefix.endsWith('/')) throw new Error(`etcd prefix ${JSON.stringify(prefix)} must end with "/"`);
    const timeout = opts.callTimeoutMs ?? 5000;
    const client = new Etcd3({
      hosts: endpoints,
      ...(opts.tls !== undefined
        ? { credentials: { rootCertificate: Buffer.from(opts.tls.caPem), certChain: Buffer.from(opts.tls.certPem), privateKey: Buffer.from(opts.tls.keyPem) } }
        : {}),
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
      dialTimeout: timeout,
      // A watch stream that broke reconnects within a second or two once etcd is back (the default waits up to 30 s).
      // (etcd3 types this as a backoff state but, like its own default, takes the factory: it calls next() first.)
      faultHandling: { watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown> },
      grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000, 'grpc.max_receive_message_length': 256 << 20 },
    });
    let clusterId: string;
    try {
      const status = await client.maintenance.status({});
      clusterId = status.header.cluster_id;
    } catch (err) {
      client.close();
      throw new Error(`cannot reach etcd at ${endpoints.join(',')}: ${errorText(err)}`, { cause: err });
    }
    // Bookmarks name the history they belong to: this cluster's keys under this prefix.
    const instance = createHash('sha256').update(`${clusterId}\u0000${prefix}`).digest('hex').slice(0, 16);
    const log = (opts.log ?? silentLogger).with({ store: 'etcd' });
    log.info('connected to etcd', { endpoints, prefix, cluster: clusterId });
    return new EtcdStore(client, instance, prefix, opts, log);
  }

  get callTimeoutMs(): number {
    return this.opts.callTimeoutMs ?? 5000;
  }

  get watchGraceMs(): number {
    return this.opts.watchGraceMs ?? 2000;
  }

  /** The key prefix of a kind: a kind's watch and list cover exactly its keys (and its fence, the prefix itself). */
  kindPrefix(k: Kind): string {
    return `${this.prefix}${escapeSegment(k.namespace)}/${escapeSegment(k.type)}/`;
  }

  // ----- ResourceStore -----

  async get(p: Pointer): Promise<Resource> {
    const kv = await this.call(() => this.readKey(p));
    if (kv === undefined) throw new CosiError('not-found', `${describePointer(p)} doesn't exist`);
    return decodeOrThrow(p, kv);
  }

  /** A value that does not decode is left out (and logged): one bad key must not stop every reader of the kind. */
  async list(k: Kind): Promise<Resource[]> {
    const prefix = this.kindPrefix(k);
    const res = await this.call(() => this.client.getAll().prefix(prefix).exec());
    return sortById(decodeAll(k, prefix, res.kvs, this.log));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const kinds = await Promise.allSettled([...this.kinds.values()]);
    for (const k of kinds) if (k.status === 'fulfilled') k.value.close();
    this.kinds.clear();
    this.ready.clear();
    this.client.close();
  }

  /** Read, decide (mutations.ts), then commit only if the key is still as read; another writer in between: again. */
  /**
   * The first attempt decides on the kind's watch cache, when it is open: the compare-and-swap on the cached
   * mod_revision proves the cache was current, so a write costs one round trip. Anything but a successful swap
   * (a conflict, an error, "unchanged") is decided again on an authoritative read, as every later attempt is.
   */
  protected async write(p: Pointer, m: Mutation): Promise<Resource> {
    const key = this.keyOf(p);
    const cached = this.ready.get(kindKey(p));
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      let current: Resource | undefined;
      let modRevision: string | undefined;
      let outcome: ReturnType<typeof mutate>;
      if (attempt === 0 && cached !== undefined && cached.log.unavailable === undefined) {
        current = cached.log.current(p.id);
        const mod = cached.modRevision(p.id);
        if ((current === undefined) !== (mod === undefined)) continue;
        modRevision = mod === undefined ? undefined : String(mod);
        try {
          outcome = mutate(current, m, new Date(), storedSpecJson);
        } catch {
          continue;
        }
        if (outcome === 'unchanged') continue;
      } else {
        const kv = await this.call(() => this.readKey(p));
        current = kv === undefined ? undefined : decodeOrThrow(p, kv);
        modRevision = kv?.mod_revision;
        outcome = mutate(current, m, new Date(), storedSpecJson);
        if (outcome === 'unchanged') return current as Resource;
      }
      // Absent: its create_revision is 0. Present: nobody has written it since it was read.
      const txn = modRevision === undefined ? this.client.if(key, 'Create', '==', 0) : this.client.if(key, 'Mod', '==', modRevision);
      let result: Resource;
      if (outcome === 'destroy') {
        txn.then(this.client.delete().key(key));
        result = current as Resource;
      } else {
        result = storedResource(outcome.put, outcome.specJson);
        txn.then(this.client.put(key).value(encodeValue(outcome.put, outcome.specJson)));
      }
      const res = await this.call(() => txn.commit());
      if (res.succeeded) return result;
    }
    throw new CosiError('aborted', `${describePointer(p)}: more than ${MAX_CAS_ATTEMPTS} concurrent writers in a row; try again`);
  }

  private async readKey(p: Pointer): Promise<IKeyValue | undefined> {
    const res = await this.client.get(this.keyOf(p)).exec();
    return res.kvs[0];
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

  // ----- ChangeFeed -----

  opened(): KindHistory[] {
    return [...this.ready.values()].map((k) => k.log);
  }

  async history(kind: Kind): Promise<KindHistory> {
    return (await this.kindOf(kind)).log;
  }

  async reach(kind: Kind, after: number): Promise<void> {
    const k = await this.kindOf(kind);
    await k.reach(after);
  }

  async listAt(kind: Kind, revision: number): Promise<Resource[]> {
    const k = await this.kindOf(kind);
    if (revision > k.log.revision) await k.reach(revision);
    if (revision >= k.log.oldestRevision) return k.log.listAt(revision);
    const prefix = this.kindPrefix(kind);
    const res = await this.call(() => this.client.getAll().prefix(prefix).revision(revision).exec());
    return sortById(decodeAll(kind, prefix, res.kvs, this.log));
  }

  /**
   * A watch of the keys under `prefix` from `start`, once etcd has confirmed it (within the call deadline: etcd3
   * would otherwise wait for ever for an etcd that is gone).
   */
  async createWatch(prefix: string, start: number, onData: (res: IWatchResponse) => void, previousValues = false): Promise<Watcher> {
    if (this.closed) throw new CosiError('unavailable', 'the etcd store is closed');
    const builder = this.client.watch().prefix(prefix).startRevision(String(start));
    // Previous values double what etcd sends: only a replay of history needs them (live, the log has the old state).
    const w = (previousValues ? builder.withPreviousKV() : builder).watcher();
    // Before the creation is confirmed: etcd3 may emit the first events in the same tick as 'connected'.
    w.on('data', onData);
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer to a watch request within ${this.callTimeoutMs} ms`)), this.callTimeoutMs);
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

  private kindOf(kind: Kind): Promise<EtcdKind> {
    if (this.closed) return Promise.reject(new CosiError('unavailable', 'the etcd store is closed'));
    const key = kindKey(kind);
    let k = this.kinds.get(key);
    if (k === undefined) {
      k = EtcdKind.open(this, { namespace: kind.namespace, type: kind.type }, this.limits);
      this.kinds.set(key, k);
      k.then((opened) => this.ready.set(key, opened), () => undefined);
      // A kind that could not be opened (etcd unreachable) is tried again by the next reader.
      k.catch(() => this.kinds.delete(key));
    }
    return k;
  }
}

/**
 * One kind's watch cache: a KindLog fed, in revision order, by one etcd watch of the kind's prefix. Also fetches
 * older history for resumes from before the log began (after a restart), and fences for resumes from the future.
 */
class EtcdKind {
  private watcher: Watcher | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private readonly waiters: { revision: number; resolve: () => void; reject: (err: CosiError) => void }[] = [];
  /** The etcd mod_revision of each resource the log holds: what a write's compare-and-swap compares. */
  private readonly mods = new Map<string, number>();
  private backfills: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly prefix: string;
  private readonly prefixBytes: number;

  private constructor(
    private readonly store: EtcdStore,
    readonly log: KindLog,
  ) {
    this.prefix = store.kindPrefix(log.kind);
    this.prefixBytes = Buffer.byteLength(this.prefix);
  }

  static async open(store: EtcdStore, kind: Kind, limits: HistoryLimits): Promise<EtcdKind> {
    const { revision, items, mods } = await EtcdKind.snapshot(store, kind);
    const k = new EtcdKind(store, new KindLog(kind, limits, revision, items));
    for (const [id, mod] of mods) k.mods.set(id, mod);
    await k.watchFrom(revision + 1);
    return k;
  }

  /** The mod_revision of the resource as the log holds it (undefined: the log holds none). */
  modRevision(id: string): number | undefined {
    return this.log.current(id) === undefined ? undefined : this.mods.get(id);
  }

  /** The kind at one revision, from one range read. A value that does not decode is left out, and logged. */
  private static async snapshot(store: EtcdStore, kind: Kind): Promise<{ revision: number; items: Resource[]; mods: Map<string, number> }> {
    const prefix = store.kindPrefix(kind);
    const res = await store.call(() => store.client.getAll().prefix(prefix).exec());
    const mods = new Map(res.kvs.filter((kv) => kv.key.length > Buffer.byteLength(prefix)).map((kv) => [idOf(kv, prefix), Number(kv.mod_revision)] as const));
    return { revision: Number(res.header.revision), items: decodeAll(kind, prefix, res.kvs, store.log), mods };
  }

  private async watchFrom(start: number): Promise<void> {
    const w = await this.store.createWatch(this.prefix, start, (res) => this.ingest(res));
    if (this.closed) {
      void w.cancel().catch(() => undefined);
      return;
    }
    this.watcher = w;
    keepResumePoint(w, () => this.log.revision + 1);
    w.on('disconnected', (err: Error) => this.disconnected(err));
    w.on('connected', () => this.reconnected());
    w.on('error', (err: Error) => void this.restart(err));
  }

  /** Takes one watch response into the log, in revision order, and wakes fences it reached. */
  private ingest(res: IWatchResponse): void {
    for (const ev of res.events) {
      const revision = Number(ev.kv.mod_revision);
      // Older than the log: already applied. Equal: another key of the same transaction (or the fence's own).
      if (revision < this.log.revision) continue;
      if (ev.kv.key.length <= this.prefixBytes) {
        this.log.advance(revision); // a fence
        continue;
      }
      const id = idOf(ev.kv, this.prefix);
      if (ev.type === 'Delete') this.mods.delete(id);
      else this.mods.set(id, revision);
      const change = this.changeOf(ev.type, ev.kv, undefined);
      if (change !== undefined) this.log.commit(change);
      else this.log.advance(revision);
    }
    this.settleWaiters();
  }

  /**
   * A watch event as a change. Live, the old state is the log's own (the same object watchers and the frame cache
   * hold); in a backfill it is decoded from the event's previous value.
   */
  changeOf(type: 'Put' | 'Delete', kv: IKeyValue, prev: IKeyValue | undefined, live = true): Change | undefined {
    const revision = Number(kv.mod_revision);
    const p = { ...this.log.kind, id: idOf(kv, this.prefix) };
    const old = live ? this.log.current(p.id) : prev !== undefined ? decodeValue(p, prev) : undefined;
    const oldResource = typeof old === 'string' ? undefined : old;
    const committedAt = Date.now();
    if (type === 'Delete') {
      if (oldResource === undefined) return undefined; // nothing known to delete (its value never decoded)
      return Object.freeze({ revision, type: 'destroyed' as const, resource: oldResource, old: oldResource, committedAt });
    }
    const decoded = decodeValue(p, kv);
    const changeType = oldResource === undefined ? ('created' as const) : ('updated' as const);
    if (typeof decoded === 'string') {
      this.store.log.error('stored value does not decode: reported to watchers as ERRORED', { key: kv.key.toString('utf8'), revision, error: decoded });
      const error = `${describePointer(p)} at etcd revision ${revision} does not decode: ${decoded}`;
      return Object.freeze({ revision, type: changeType, resource: placeholder(p), old: oldResource, committedAt, error });
    }
    return Object.freeze({ revision, type: changeType, resource: decoded, old: oldResource, committedAt });
  }

  /** Every change committed before this call is in the log once this resolves: the fence's own event came back. */
  async fence(): Promise<void> {
    if (this.log.unavailable !== undefined) throw this.log.unavailable;
    const token = randomBytes(8).toString('hex');
    const res = await this.store.call(() => this.store.client.put(this.prefix).value(token).exec());
    await this.until(Number(res.header.revision));
  }

  private until(revision: number): Promise<void> {
    if (this.log.revision >= revision) return Promise.resolve();
    if (this.log.unavailable !== undefined) return Promise.reject(this.log.unavailable);
    return new Promise((resolve, reject) => this.waiters.push({ revision, resolve, reject }));
  }

  private settleWaiters(): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i];
      if (w !== undefined && w.revision <= this.log.revision) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  /** Makes a resume after `after` servable: from the future, wait for it; from before the log, fetch the gap. */
  async reach(after: number): Promise<void> {
    if (after > this.log.revision) {
      await this.fence();
      if (after > this.log.revision) throw new CosiError('invalid-bookmark', `revision ${after} is in the future (etcd is at ${this.log.revision})`);
    }
    if (after >= this.log.oldestRevision) return;
    // One backfill at a time per kind; a later one that is already covered returns at once.
    const run = this.backfills.then(() => (after >= this.log.oldestRevision ? undefined : this.backfill(after)));
    this.backfills = run.catch(() => undefined);
    await run;
  }

  /**
   * Fetches the kind's changes after `after` up to where the log begins, from etcd's history: a watch from
   * after+1 replays them in order, and a fence written after it was created marks where the replay is complete.
   */
  private async backfill(after: number): Promise<void> {
    const changes: Change[] = [];
    let fenceRevision = Number.POSITIVE_INFINITY;
    let seen = after;
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
    const limit = this.log.limits.maxSize;
    // Compacted history answers a read at that revision with an error (too-old); a watch would only be cancelled.
    await this.store.call(() => this.store.client.getAll().prefix(this.prefix).revision(after + 1).limit(1).exec());
    const onData = (res: IWatchResponse) => {
      for (const ev of res.events) {
        const revision = Number(ev.kv.mod_revision);
        seen = Math.max(seen, revision);
        if (revision >= fenceRevision) return done();
        if (ev.kv.key.length <= this.prefixBytes) continue;
        const c = this.changeOf(ev.type, ev.kv, ev.prev_kv ?? undefined, false);
        // All of them: the log may forget more of its oldest changes before the fence comes back.
        if (c !== undefined) changes.push(c);
        if (changes.length > limit) return fail(new CosiError('too-old', `more than ${limit} changes of ${this.log.kind.type} since revision ${after}; list again`));
      }
    };
    const epoch = this.log.epoch;
    const replay = await this.store.createWatch(this.prefix, after + 1, onData, true);
    try {
      replay.on('error', (err: Error) => fail(asStoreError(err, [])));
      replay.on('disconnected', (err: Error) => fail(new CosiError('unavailable', `etcd went away while reading history: ${errorText(err)}`)));
      const put = this.store.call(() => this.store.client.put(this.prefix).value(randomBytes(8).toString('hex')).exec());
      put.catch(() => undefined); // a replay that failed first ends the backfill; the put's own failure then goes unheard
      // `finished` cannot resolve before the fence's revision is known: the race ends early only on a failed replay.
      const res = await Promise.race([put, finished.then(() => put)]);
      fenceRevision = Number(res.header.revision);
      // The fence's event may have come before the answer to its put.
      if (seen >= fenceRevision) done();
      await finished;
    } finally {
      void replay.cancel().catch(() => undefined);
    }
    if (this.log.epoch !== epoch) throw new CosiError('too-old', `the history of ${this.log.kind.type} started over while revision ${after} was being fetched; list again`);
    if (!this.log.prepend(after, changes)) {
      throw new CosiError('too-old', `more than ${limit} changes of ${this.log.kind.type} since revision ${after}; list again`);
    }
    this.store.log.debug('history fetched from etcd', { kind: this.log.kind.type, after, changes: changes.length });
  }

  private disconnected(err: Error): void {
    if (this.closed || this.graceTimer !== undefined || this.log.unavailable !== undefined) return;
    // A member failing over reconnects within the grace; etcd gone for longer is the readers' business.
    this.graceTimer = setTimeout(() => {
      this.graceTimer = undefined;
      const lost = new CosiError('unavailable', `etcd is unreachable (${errorText(err)}); reconnect and resume from your last bookmark`);
      this.log.fail(lost);
      for (const w of this.waiters.splice(0)) w.reject(lost);
    }, this.store.watchGraceMs);
    this.graceTimer.unref();
  }

  private reconnected(): void {
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
    if (this.log.unavailable !== undefined) this.store.log.info('etcd reachable again: watch resumed', { kind: this.log.kind.type, after: this.log.revision });
    this.log.recover();
  }

  /** The watch was cancelled by etcd (its history was compacted past where it was): start over from a fresh read. */
  private async restart(err: Error): Promise<void> {
    if (this.closed) return;
    this.watcher = undefined;
    this.store.log.warn('etcd cancelled the watch; reading the kind again', { kind: this.log.kind.type, error: errorText(err) });
    for (let delay = 100; !this.closed; delay = Math.min(delay * 2, 5000)) {
      try {
        const { revision, items, mods } = await EtcdKind.snapshot(this.store, this.log.kind);
        this.mods.clear();
        for (const [id, mod] of mods) this.mods.set(id, mod);
        this.log.reset(revision, items, new CosiError('too-old', `etcd compacted its history past this watch (${errorText(err)}); list again`));
        await this.watchFrom(revision + 1);
        this.settleWaiters();
        return;
      } catch (again) {
        this.log.fail(asStoreError(again, []));
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
      }
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.graceTimer);
    const closed = new CosiError('unavailable', 'the etcd store is closed');
    for (const w of this.waiters.splice(0)) w.reject(closed);
    void this.watcher?.cancel().catch(() => undefined);
  }
}

/**
 * etcd3's watcher resumes after a reconnect from the revision in the last response header plus one, which can skip
 * events etcd had not sent yet (a header may be ahead of the events). The resume point is set after every response
 * to the log's own revision plus one instead. This reaches into the watcher's request, which etcd3 1.1 keeps as
 * `request.start_revision`: checked here, so a version without it fails at once rather than losing events.
 */
function keepResumePoint(w: Watcher, next: () => number): void {
  const request = (w as unknown as { request?: { start_revision?: unknown } }).request;
  if (request === undefined || typeof request.start_revision !== 'string') {
    throw new Error('etcd3 watcher internals changed: cannot set where a watch resumes (pin etcd3 1.1)');
  }
  const set = () => {
    request.start_revision = String(next());
  };
  // Now (etcd3 set it from the creation answer's header), just before every create request etcd3 sends on a
  // reconnect, and after etcd3's own listeners, which move it to a header's revision.
  set();
  w.on('connecting', set);
  w.on('data', set);
  w.on('connected', set);
}

// ----- values -----

function encodeValue(md: Metadata, specJson: string): string {
  const meta = {
    owner: md.owner,
    phase: md.phase,
    created: md.created.getTime(),
    updated: md.updated.getTime(),
    labels: md.labels,
    annotations: md.annotations,
    finalizers: md.finalizers,
  };
  // JSON text never holds a raw newline, so the three parts split unambiguously.
  return `${FORMAT}\n${JSON.stringify(meta)}\n${specJson}`;
}

/** The resource a key holds, or why it does not decode. */
function decodeValue(p: Pointer, kv: IKeyValue): Resource | string {
  const text = kv.value.toString('utf8');
  const first = text.indexOf('\n');
  const second = first < 0 ? -1 : text.indexOf('\n', first + 1);
  if (first < 0 || second < 0 || text.slice(0, first) !== FORMAT) return `not a ${FORMAT} value`;
  let meta: unknown;
  const specJson = text.slice(second + 1);
  try {
    meta = JSON.parse(text.slice(first + 1, second));
    JSON.parse(specJson) as Json;
  } catch (err) {
    return `invalid JSON: ${errorText(err)}`;
  }
  if (meta === null || typeof meta !== 'object') return 'metadata is not an object';
  const m = meta as Record<string, unknown>;
  const strings = (v: unknown): v is Record<string, string> => v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
  const finalizers = m['finalizers'];
  if (
    typeof m['owner'] !== 'string' ||
    (m['phase'] !== 'running' && m['phase'] !== 'tearingDown') ||
    typeof m['created'] !== 'number' ||
    typeof m['updated'] !== 'number' ||
    !strings(m['labels']) ||
    !strings(m['annotations']) ||
    !Array.isArray(finalizers) ||
    !finalizers.every((f) => typeof f === 'string')
  ) {
    return 'metadata fields are missing or of the wrong type';
  }
  const md: Metadata = {
    namespace: p.namespace,
    type: p.type,
    id: p.id,
    version: Number(kv.version),
    owner: m['owner'],
    phase: m['phase'],
    created: new Date(m['created']),
    updated: new Date(m['updated']),
    labels: m['labels'],
    annotations: m['annotations'],
    finalizers: finalizers as string[],
  };
  return storedResource(md, specJson);
}

/** The resources of a range read of a kind; a value that does not decode is left out and logged. */
function decodeAll(kind: Kind, prefix: string, kvs: readonly IKeyValue[], log: Logger): Resource[] {
  const items: Resource[] = [];
  for (const kv of kvs) {
    if (kv.key.length <= Buffer.byteLength(prefix)) continue;
    const decoded = decodeValue({ ...kind, id: idOf(kv, prefix) }, kv);
    if (typeof decoded === 'string') log.error('stored value does not decode; left out', { key: kv.key.toString('utf8'), revision: Number(kv.mod_revision), error: decoded });
    else items.push(decoded);
  }
  return items;
}

function decodeOrThrow(p: Pointer, kv: IKeyValue): Resource {
  const r = decodeValue(p, kv);
  if (typeof r === 'string') throw new CosiError('data-loss', `${describePointer(p)}: the value stored at ${kv.key.toString('utf8')} does not decode: ${r}`);
  return r;
}

/** What names a resource whose value does not decode. */
function placeholder(p: Pointer): Resource {
  const epoch = new Date(0);
  return { metadata: { ...p, version: 0, owner: '', phase: 'running', created: epoch, updated: epoch, labels: {}, annotations: {}, finalizers: [] }, spec: null };
}

function idOf(kv: IKeyValue, prefix: string): string {
  return kv.key.subarray(Buffer.byteLength(prefix)).toString('utf8');
}

/** Namespaces and types may not hold "/" or "%" in a key segment: escaped, so two kinds never share a prefix. */
function escapeSegment(s: string): string {
  return s.replace(/%/g, '%25').replace(/\//g, '%2F');
}

function checkEndpoint(url: string, tls: boolean): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`etcd endpoint ${JSON.stringify(url)} is not a URL (use https://host:port)`);
  }
  if (tls && u.protocol !== 'https:') throw new Error(`etcd endpoint ${url}: with TLS credentials use https://`);
  if (!tls) {
    const loopback = u.hostname === '127.0.0.1' || u.hostname === '[::1]' || u.hostname === 'localhost';
    if (u.protocol !== 'http:' || !loopback) throw new Error(`etcd endpoint ${url}: plaintext is allowed only on loopback (http://127.0.0.1:PORT); give --etcd-ca/--etcd-cert/--etcd-key for mTLS`);
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** An etcd client failure as the store's error: compaction is too-old, everything else means etcd is out of reach. */
function asStoreError(err: unknown, endpoints: readonly string[]): CosiError {
  if (isCosiError(err)) return err;
  const text = errorText(err);
  // etcd cancels a watch whose start was compacted without saying why: etcd3 reports "Watcher canceled: ".
  if (/compacted/i.test(text) || /^Watcher canceled:\s*$/.test(text)) return new CosiError('too-old', `etcd no longer holds that revision (${text}); list again`, { cause: err });
  if (/permission denied|not capable|authentication/i.test(text)) return new CosiError('internal', `etcd refused the request: ${text}`, { cause: err });
  const where = endpoints.length > 0 ? ` at ${endpoints.join(',')}` : '';
  return new CosiError('unavailable', `etcd${where} is unreachable: ${text}`, { cause: err });
}
