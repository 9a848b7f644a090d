// The in-memory store: one KindLog per kind (state and bounded history), one revision counter for all. Its feed is
// those logs themselves: a commit lands in its kind's log before the writer's promise settles. It needs no watch
// cache (cacher.ts): its logs are its storage, so there is no watch to keep connected, no fence to wait for and no
// older history to fetch; a cache over them would hold every resource twice.
import { randomBytes } from 'node:crypto';
import { CosiError } from '../../shared/errors.js';
import { describePointer, kindKey, type Kind, type Pointer, type Resource } from '../../shared/resource.js';
import { historyLimits, KindLog, type HistoryLimits, type HistoryOptions } from './kind-log.js';
import { mutate, MutatingStore, storedResource, storedSpecJson, type Mutation } from './mutations.js';
import type { ChangeFeed, KindHistory, ResourceStore } from './store.js';

export type MemoryStoreOptions = HistoryOptions;

/** The memory store's feed: the kinds' logs, which are its storage too. */
export class MemoryFeed implements ChangeFeed {
  readonly instance = randomBytes(8).toString('hex');
  private readonly kinds = new Map<string, KindLog>();

  constructor(readonly limits: HistoryLimits) {}

  /** The kind's log, opened on first use: a kind seen for the first time has had no change, so it is complete. */
  log(k: Kind): KindLog {
    const key = kindKey(k);
    let log = this.kinds.get(key);
    if (log === undefined) {
      log = new KindLog({ namespace: k.namespace, type: k.type }, this.limits, 0);
      this.kinds.set(key, log);
    }
    return log;
  }

  /** The kind's log if it was ever opened (reads of a kind never written open nothing). */
  peek(k: Kind): KindLog | undefined {
    return this.kinds.get(kindKey(k));
  }

  opened(): KindHistory[] {
    return [...this.kinds.values()];
  }

  history(kind: Kind): Promise<KindHistory> {
    return Promise.resolve(this.log(kind));
  }

  async reach(kind: Kind, after: number): Promise<void> {
    // Memory has no history beyond the window, and commits reach it before their writer's promise settles:
    // readChanges says too-old or future.
    this.log(kind).readChanges(after, 0);
  }

  async listAt(kind: Kind, revision: number): Promise<Resource[]> {
    return this.log(kind).listAt(revision);
  }
}

export class MemoryStore extends MutatingStore implements ResourceStore {
  readonly backend = 'memory';
  readonly feed: MemoryFeed;
  private rev = 0;

  constructor(opts: MemoryStoreOptions = {}) {
    super();
    this.feed = new MemoryFeed(historyLimits(opts));
  }

  /** The revision of the last commit (0 when empty). */
  get revision(): number {
    return this.rev;
  }

  /** The kind's history, synchronously (memory only; the contract's history() is async). */
  log(k: Kind): KindLog {
    return this.feed.log(k);
  }

  get(p: Pointer): Promise<Resource> {
    const r = this.feed.peek(p)?.current(p.id);
    return r === undefined ? Promise.reject(new CosiError('not-found', `${describePointer(p)} doesn't exist`)) : Promise.resolve(r);
  }

  list(k: Kind): Promise<Resource[]> {
    return Promise.resolve(this.feed.peek(k)?.list() ?? []);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Runs synchronously: the change is committed (and watchers told) before the returned promise settles. */
  protected write(p: Pointer, m: Mutation): Promise<Resource> {
    try {
      const log = this.log(p);
      const current = log.current(p.id);
      const now = this.feed.limits.now();
      const outcome = mutate(current, m, new Date(now), storedSpecJson);
      if (outcome === 'unchanged') return Promise.resolve(current as Resource);
      this.rev++;
      if (outcome === 'destroy') {
        const old = current as Resource;
        log.commit(Object.freeze({ revision: this.rev, type: 'destroyed', resource: old, old, committedAt: now }));
        return Promise.resolve(old);
      }
      const r = storedResource(outcome.put, outcome.specJson);
      log.commit(Object.freeze({ revision: this.rev, type: current === undefined ? 'created' : 'updated', resource: r, old: current, committedAt: now }));
      return Promise.resolve(r);
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }
}
