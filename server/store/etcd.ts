// The store on etcd. A resource is one key, `<prefix><namespace>/<type>/<id>`; its version is the key's etcd version,
// and every write is a transaction that compares the key's mod_revision with the one it read (compare-and-swap), so
// concurrent writers never overwrite each other. The feed is the watch cache (cacher.ts) over etcd: one etcd watch
// per kind, shared by every API watcher of that kind, bootstrapped from one consistent range read; revisions and
// bookmarks are etcd revisions, so a watch resumes across a restart of cosid, and on any cosid that serves the same
// etcd and prefix.
// Its parts, under etcd/: etcd as the cache's backend and the authoritative reads (backend.ts), the client and its
// endpoint policy (client.ts), keys and values (codec.ts), the compare-and-swap writer (cas-writer.ts), the error
// mapping (errors.ts) and a patch of etcd3's watcher (resume-point.ts).
import { createHash } from 'node:crypto';
import { silentLogger, type Logger } from '../../shared/log.js';
import type { Kind, Pointer, Resource } from '../../shared/resource.js';
import { Cacher } from './cacher.js';
import { EtcdBackend } from './etcd/backend.js';
import { writeByCas } from './etcd/cas-writer.js';
import { etcdClient, type EtcdTls } from './etcd/client.js';
import { errorText } from './etcd/errors.js';
import { historyLimits, type HistoryOptions } from './kind-log.js';
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
  /** Each kind's watch cache over etcd. */
  readonly feed: Cacher;
  private closed = false;

  /** etcd: its client, keys, calls, reads and watches. */
  private constructor(readonly etcd: EtcdBackend, opts: EtcdStoreOptions, log: Logger) {
    super();
    this.feed = new Cacher(etcd, { limits: historyLimits(opts.history), graceMs: opts.watchGraceMs ?? 2000, log });
  }

  /** Connects and checks that etcd answers (within the call deadline): a clear error at start beats a silent wait. */
  static async connect(opts: EtcdStoreOptions): Promise<EtcdStore> {
    const endpoints = [...opts.endpoints];
    const prefix = opts.prefix ?? '/cosi/';
    if (prefix === '' || !prefix.endsWith('/')) throw new Error(`etcd prefix ${JSON.stringify(prefix)} must end with "/"`);
    const callTimeoutMs = opts.callTimeoutMs ?? 5000;
    const client = etcdClient(endpoints, opts.tls, callTimeoutMs);
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
    return new EtcdStore(new EtcdBackend({ client, instance, prefix, endpoints, callTimeoutMs, log }), opts, log);
  }

  get(p: Pointer): Promise<Resource> {
    return this.etcd.get(p);
  }

  /** A value that does not decode is left out (and logged): one bad key must not stop every reader of the kind. */
  list(k: Kind): Promise<Resource[]> {
    return this.etcd.list(k);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.feed.close();
    this.etcd.close();
  }

  /**
   * Decides and commits one write by compare-and-swap (etcd/cas-writer.ts), first on the kind's cache: opened here
   * if no reader has yet, so that a write costs one round trip (and its watch event is not decoded again).
   */
  protected async write(p: Pointer, m: Mutation): Promise<Resource> {
    const cache = this.feed.cached(p) ?? (await this.feed.open(p).catch(() => undefined));
    return writeByCas(this.etcd, cache, p, m);
  }
}
