// The store on etcd. A resource is one key, `<prefix><namespace>/<type>/<id>`; its version is the key's etcd version,
// and every write is a transaction that compares the key's mod_revision with the one it read (compare-and-swap), so
// concurrent writers never overwrite each other. The feed keeps one etcd watch per kind, shared by every API
// watcher of that kind, bootstrapped from one consistent range read; revisions and bookmarks are etcd revisions, so a
// watch resumes across a restart of cosid, and on any cosid that serves the same etcd and prefix.
// Its parts, under etcd/: the client and its endpoint policy (client.ts), keys and values (codec.ts), the
// compare-and-swap writer (cas-writer.ts), each kind's watch cache (kind-cache.ts), the error mapping (errors.ts)
// and a patch of etcd3's watcher (resume-point.ts).
import { createHash } from 'node:crypto';
import type { Etcd3, IWatchResponse, Watcher } from 'etcd3';
import { CosiError } from '../../shared/errors.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import { describePointer, type Kind, type Pointer, type Resource } from '../../shared/resource.js';
import { readKey, writeByCas } from './etcd/cas-writer.js';
import { etcdClient, type EtcdTls } from './etcd/client.js';
import { decodeAll, decodeOrThrow, kindPrefixOf } from './etcd/codec.js';
import { asStoreError, errorText } from './etcd/errors.js';
import { EtcdFeed } from './etcd/feed.js';
import { historyLimits, sortById, type HistoryOptions } from './kind-log.js';
import { MutatingStore, type Mutation } from './mutations.js';
import type { ResourceStore } from './store.js';

export interface EtcdStoreOptions {
  /** Client URLs, e.g. https://127.0.0.1:2379. */
  endpoints: readonly string[];
  /** Mutual TLS to etcd; without it the endpoints must be http:// on loopback (checked). */
  tls?: EtcdTls;
  /** Every key starts with this (default /cosi/). One prefix per node: /cosi/<node>/. */
  prefix?: string;
  history?: HistoryOptions;
  /** Deadline of each etcd call (default 5 s): past it, the call answers unavailable. */
  callTimeoutMs?: number;
  /** A kind's watch may be disconnected this long (a member failing over) before its readers hear of it (default 2 s). */
  watchGraceMs?: number;
  log?: Logger;
}

export class EtcdStore extends MutatingStore implements ResourceStore {
  readonly backend = 'etcd';
  /** Each kind's watch cache (etcd/feed.ts). */
  readonly feed: EtcdFeed;
  private closed = false;

  private constructor(
    readonly client: Etcd3,
    readonly instance: string,
    readonly prefix: string,
    private readonly opts: EtcdStoreOptions,
    readonly log: Logger,
  ) {
    super();
    this.feed = new EtcdFeed(this, instance, historyLimits(opts.history));
  }

  /** Connects and checks that etcd answers (within the call deadline): a clear error at start beats a silent wait. */
  static async connect(opts: EtcdStoreOptions): Promise<EtcdStore> {
    const endpoints = [...opts.endpoints];
    const prefix = opts.prefix ?? '/cosi/';
    if (prefix === '' || !prefix.endsWith('/')) throw new Error(`etcd prefix ${JSON.stringify(prefix)} must end with "/"`);
    const client = etcdClient(endpoints, opts.tls, opts.callTimeoutMs ?? 5000);
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
    return kindPrefixOf(this.prefix, k);
  }

  // ----- ResourceStore -----

  async get(p: Pointer): Promise<Resource> {
    const kv = await this.call(() => readKey(this.client, this.keyOf(p)));
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
    await this.feed.close();
    this.client.close();
  }

  /** Decides and commits one write by compare-and-swap (etcd/cas-writer.ts), first on the kind's cache when open. */
  protected write(p: Pointer, m: Mutation): Promise<Resource> {
    return writeByCas(this, this.feed.cached(p), p, m);
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
}
