// The fleet's writer (docs/design/fleet.md §4): the followers' ops, committed to etcd in fenced transactions. Each
// node has a FIFO queue and at most one transaction in flight, which keeps its order; up to 4 transactions are in
// flight in all, and what waits meanwhile goes together in the next ones (group commit, as the store's SwapBatcher).
// A transaction commits for all its nodes or for none: when a compare fails, its failure branch tells which owner
// keys are gone or were made again; those nodes are fenced, and the others are sent again at once. When etcd does
// not answer, nothing is dropped: the transaction waits with backoff, and a commit whose answer was lost is checked
// by reading its keys before it is sent again, so that a value is never written twice.
import type { Etcd3, IKeyValue, ITxnRequest, ITxnResponse } from 'etcd3';
import { CosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { asStoreError, errorText } from '../store/etcd/errors.js';
import type { Acquired, NodeOp, SubmitResult } from './contracts.js';
import type { FleetKeys } from './keys.js';
import { checkRequest, commitRequest, planTxn, TXN_LIMITS, type NodeQueue, type PlannedNode, type TxnLimits, type TxnPlan } from './txn-plan.js';

export interface FleetWriterOptions {
  readonly limits?: TxnLimits;
  /** Transactions in flight at once. Default 4. */
  readonly maxInFlight?: number;
  /** For error messages: where etcd was expected. */
  readonly endpoints?: readonly string[];
  /** Backoff while etcd does not answer: the first delay, doubling to the cap (each with up to half off at random). */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
  /** After each commit: `count` ops of `node` are in etcd at `revision` (for lag and metrics). */
  readonly onCommit?: (node: string, count: number, revision: number) => void;
  /** An acquisition was found lost: every write under `token` is refused from now on. */
  readonly onFenced?: (node: string, token: string) => void;
}

export interface FleetWriterStats {
  /** Transactions that committed. */
  txns: number;
  opsCommitted: number;
  /** Acquisitions found lost. */
  fenced: number;
}

/** A submit() call, done when its last op is committed. */
interface Submission {
  readonly count: number;
  left: number;
  readonly resolve: (r: SubmitResult) => void;
  readonly reject: (err: unknown) => void;
}

/** One acquisition's queue: a node under one token. */
interface NodeState {
  readonly id: string;
  readonly node: string;
  readonly token: string;
  readonly ops: NodeOp[];
  /** The submission of each queued op, in step with `ops`. */
  readonly subs: Submission[];
  inFlight: boolean;
}

const stateId = (node: string, token: string): string => `${node}\0${token}`;

/**
 * `client`'s own retries should be off for the writer (etcd3's default global policy sends a call again after a
 * deadline, and a commit sent again by it writes its values a second time; the writer's own retry reads first).
 */
export class FleetWriter {
  private readonly limits: TxnLimits;
  private readonly maxInFlight: number;
  /** By node: its queues (more than one only while a lost acquisition's ops are being fenced). */
  private readonly states = new Map<string, NodeState[]>();
  /** Queues with ops and no transaction in flight, in the order they are served (round-robin). */
  private ready = new Map<string, NodeState>();
  /** Acquisitions found lost (node \0 token): a later submit under one is refused at once. */
  private readonly fencedIds = new Set<string>();
  private readonly waits = new Set<{ timer: NodeJS.Timeout; done: () => void }>();
  private inFlight = 0;
  private closed = false;
  private readonly counts: FleetWriterStats = { txns: 0, opsCommitted: 0, fenced: 0 };

  constructor(
    private readonly client: Etcd3,
    private readonly keys: FleetKeys,
    private readonly log: Logger,
    private readonly opts: FleetWriterOptions = {},
  ) {
    this.limits = opts.limits ?? TXN_LIMITS;
    this.maxInFlight = opts.maxInFlight ?? 4;
  }

  /** Commits `ops` in order after the node's earlier ones, all under `a.token`; 'fenced' once the node is not ours. */
  submit(a: Acquired, ops: readonly NodeOp[]): Promise<SubmitResult> {
    if (this.closed) return Promise.reject(new CosiError('unavailable', 'the fleet writer is closed'));
    const id = stateId(a.node, a.token);
    if (this.fencedIds.has(id)) return Promise.resolve('fenced');
    if (ops.length === 0) return Promise.resolve({ committed: 0 });
    return new Promise((resolve, reject) => {
      const sub: Submission = { count: ops.length, left: ops.length, resolve, reject };
      const state = this.stateOf(a.node, a.token, id);
      for (const op of ops) {
        state.ops.push(op);
        state.subs.push(sub);
      }
      if (!state.inFlight) this.ready.set(id, state);
      this.pump();
    });
  }

  /** Ops of the node waiting or in flight (the follower stops pulling above its threshold). */
  pending(node: string): number {
    let n = 0;
    for (const s of this.states.get(node) ?? []) n += s.ops.length;
    return n;
  }

  isFenced(node: string, token: string): boolean {
    return this.fencedIds.has(stateId(node, token));
  }

  get stats(): FleetWriterStats {
    return { ...this.counts };
  }

  /** Refuses what is pending (unavailable) and every later submit. Does not close the etcd client. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waits) {
      clearTimeout(w.timer);
      w.done();
    }
    this.waits.clear();
    const err = new CosiError('unavailable', 'the fleet writer is closed');
    for (const list of this.states.values()) for (const s of list) for (const sub of new Set(s.subs)) sub.reject(err);
    this.states.clear();
    this.ready.clear();
  }

  private stateOf(node: string, token: string, id: string): NodeState {
    const list = this.states.get(node) ?? [];
    let state = list.find((s) => s.id === id);
    if (state === undefined) {
      state = { id, node, token, ops: [], subs: [], inFlight: false };
      list.push(state);
      this.states.set(node, list);
    }
    return state;
  }

  private dropState(s: NodeState): void {
    this.ready.delete(s.id);
    const list = (this.states.get(s.node) ?? []).filter((x) => x !== s);
    if (list.length === 0) this.states.delete(s.node);
    else this.states.set(s.node, list);
  }

  /** Sends transactions while there are slots and ops that may go. */
  private pump(): void {
    while (!this.closed && this.inFlight < this.maxInFlight && this.ready.size > 0) {
      const queues: NodeQueue[] = [];
      const candidates = new Map<string, NodeState>();
      for (const s of this.ready.values()) {
        if (queues.length >= this.limits.maxCompares) break;
        // One transaction in flight per node, whatever its token, and one compare per owner key in a transaction.
        if (candidates.has(s.node) || (this.states.get(s.node) ?? []).some((x) => x.inFlight)) continue;
        candidates.set(s.node, s);
        queues.push({ node: s.node, token: s.token, ops: s.ops });
      }
      if (queues.length === 0) return;
      const plan = planTxn(queues, this.limits, this.keys);
      const taken = plan.nodes.map((n) => candidates.get(n.node) as NodeState);
      for (const s of taken) {
        s.inFlight = true;
        this.ready.delete(s.id);
      }
      this.inFlight++;
      void this.run(plan, taken)
        .catch((err: unknown) => this.log.error('fleet writer: unexpected failure', { err }))
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }

  /** Settles one planned transaction: committed, fenced, or sent again, whatever it takes while etcd is away. */
  private async run(first: TxnPlan, firstStates: readonly NodeState[]): Promise<void> {
    let nodes = first.nodes;
    let states = firstStates;
    // After an error the commit may have gone through: from then on, read before writing again.
    let unsure = false;
    for (let attempt = 0; ; ) {
      if (this.closed) return;
      const plan: TxnPlan = { ...first, nodes };
      let res: ITxnResponse;
      try {
        res = await this.txn(unsure ? checkRequest(plan) : commitRequest(plan));
      } catch (err) {
        if (this.closed) return;
        const e = asStoreError(err, this.opts.endpoints ?? []);
        if (e.kind !== 'unavailable' || REFUSED.test(errorText(err))) {
          this.log.error('fleet writer: etcd refused a transaction; its nodes must resync', { nodes: nodes.length, err: errorText(err) });
          for (const s of states) this.failState(s, e);
          return;
        }
        if (attempt === 0) this.log.warn('fleet writer: etcd does not answer; retrying', { nodes: nodes.length, err: errorText(err) });
        unsure = true;
        await this.wait(attempt++);
        continue;
      }
      if (this.closed) return;
      const revision = Number(res.header.revision);
      if (res.succeeded) {
        if (!unsure) {
          this.counts.txns++;
          nodes.forEach((n, i) => this.committed(states[i] as NodeState, n.ops.length, revision));
          return;
        }
        this.settleChecked(nodes, states, res, revision);
        return;
      }
      // Which owner keys are gone or new: those nodes are fenced; the others were refused with them.
      const keep: PlannedNode[] = [];
      const keepStates: NodeState[] = [];
      nodes.forEach((n, i) => {
        const owner = res.responses[i]?.response_range?.kvs[0];
        const s = states[i] as NodeState;
        if (owner === undefined || String(owner.create_revision) !== n.token) this.fence(s);
        else {
          keep.push(n);
          keepStates.push(s);
        }
      });
      if (keep.length === 0) return;
      if (keep.length === nodes.length) {
        // Every owner key reads as ours though a compare failed: not expected; wait rather than spin.
        this.log.warn('fleet writer: a transaction failed its compares with every owner key in place; retrying', { nodes: nodes.length });
        await this.wait(attempt++);
      }
      if (!unsure) {
        this.requeueFirst(keepStates);
        return;
      }
      nodes = keep;
      states = keepStates;
    }
  }

  /** A check after a lost answer read every key the commit writes: a node whose keys all hold its values is done. */
  private settleChecked(nodes: readonly PlannedNode[], states: readonly NodeState[], res: ITxnResponse, revision: number): void {
    const retry: NodeState[] = [];
    let i = 0;
    let done = false;
    nodes.forEach((n, k) => {
      let holds = true;
      let at = 0;
      const read = (): IKeyValue | undefined => res.responses[i++]?.response_range?.kvs[0];
      for (const op of n.ops) {
        const kv = read();
        if (op.value === null ? kv !== undefined : kv === undefined || !kv.value.equals(Buffer.from(op.value))) holds = false;
        if (kv !== undefined) at = Math.max(at, Number(kv.mod_revision));
      }
      for (const b of n.bookmarks) {
        const kv = read();
        if (kv === undefined || !kv.value.equals(Buffer.from(b.value))) holds = false;
        else at = Math.max(at, Number(kv.mod_revision));
      }
      const s = states[k] as NodeState;
      if (holds) {
        done = true;
        this.committed(s, n.ops.length, at > 0 ? at : revision);
      } else retry.push(s);
    });
    if (done) this.counts.txns++;
    this.requeueFirst(retry);
  }

  private committed(s: NodeState, count: number, revision: number): void {
    s.inFlight = false;
    s.ops.splice(0, count);
    for (const sub of s.subs.splice(0, count)) {
      if (--sub.left === 0) sub.resolve({ committed: sub.count });
    }
    this.counts.opsCommitted += count;
    this.opts.onCommit?.(s.node, count, revision);
    if (s.ops.length > 0) this.ready.set(s.id, s);
    else this.dropState(s);
  }

  private fence(s: NodeState): void {
    this.fencedIds.add(s.id);
    this.counts.fenced++;
    this.log.warn('fleet writer: node no longer ours; its writes are refused', { node: s.node, token: s.token, dropped: s.ops.length });
    for (const sub of new Set(s.subs)) sub.resolve('fenced');
    s.ops.length = 0;
    s.subs.length = 0;
    this.dropState(s);
    this.opts.onFenced?.(s.node, s.token);
  }

  private failState(s: NodeState, err: unknown): void {
    for (const sub of new Set(s.subs)) sub.reject(err);
    s.ops.length = 0;
    s.subs.length = 0;
    this.dropState(s);
  }

  /** Refused with a fenced node, or not written after a lost answer: these go first, at once. */
  private requeueFirst(states: readonly NodeState[]): void {
    if (states.length === 0) return;
    for (const s of states) s.inFlight = false;
    this.ready = new Map([...states.map((s): [string, NodeState] => [s.id, s]), ...this.ready]);
  }

  private txn(req: ITxnRequest): Promise<ITxnResponse> {
    return this.client.kv.txn(req);
  }

  private wait(attempt: number): Promise<void> {
    const initial = this.opts.retryInitialMs ?? 100;
    const cap = this.opts.retryMaxMs ?? 2000;
    const ms = Math.min(cap, initial * 2 ** Math.min(attempt, 20)) * (1 - Math.random() / 2);
    return new Promise((resolve) => {
      const w = { timer: setTimeout(() => w.done(), ms), done: () => (this.waits.delete(w), resolve()) };
      this.waits.add(w);
    });
  }
}

/** etcd answered, refusing the request itself: sending it again cannot help (a bug in planning, or a huge value). */
const REFUSED = /too many operations|duplicate key|request is too large|larger than max|exceeds? (the )?(maximum|limit)/i;
