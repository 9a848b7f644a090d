// Compare-and-swaps of one key each, sent to etcd as transactions. Swaps of distinct keys that wait at the same
// time go as one transaction: its compares are all theirs (a transaction is all or nothing), and its failure branch
// reads every key, so that each swap learns its key's state from the answer, without a read of its own.
import type { IKeyValue, IRequestOp, ITxnRequest, ITxnResponse } from 'etcd3';

export interface Swap {
  readonly key: Buffer;
  /** The mod_revision the key must still have; undefined: the key must not exist. */
  readonly expectedMod: string | undefined;
  /** The value to put; undefined: delete the key. */
  readonly value: Buffer | undefined;
}

export type SwapResult = { readonly swapped: true; readonly revision: number } | { readonly swapped: false; readonly current: IKeyValue | undefined };

/** etcd refuses a transaction with more than 128 operations in a branch (--max-txn-ops). */
const MAX_SWAPS = 64;
/** etcd refuses a request over 1.5 MiB (--max-request-bytes); a larger swap goes alone. */
const MAX_BATCH_BYTES = 512 * 1024;
/** Transactions of batched swaps under way at once; swaps that come meanwhile wait, and go together. */
const MAX_IN_FLIGHT = 4;

interface Waiting {
  readonly swap: Swap;
  readonly resolve: (r: SwapResult) => void;
  readonly reject: (err: unknown) => void;
}

export class SwapBatcher {
  private readonly waiting: Waiting[] = [];
  private inFlight = 0;

  constructor(private readonly txn: (req: ITxnRequest) => Promise<ITxnResponse>) {}

  /**
   * Commits `swap`. `alone`: in a transaction of its own, for a retry, which another key's conflict must not fail
   * again (a swap can be failed once by its batch; its retry then decides on the state the failure read).
   */
  swap(swap: Swap, alone: boolean): Promise<SwapResult> {
    if (alone) return this.commit([swap]).then((results) => results[0] as SwapResult);
    return new Promise((resolve, reject) => {
      this.waiting.push({ swap, resolve, reject });
      this.drain();
    });
  }

  private drain(): void {
    while (this.inFlight < MAX_IN_FLIGHT && this.waiting.length > 0) {
      const batch = this.takeBatch();
      this.inFlight++;
      this.commit(batch.map((w) => w.swap))
        .then(
          (results) => batch.forEach((w, i) => w.resolve(results[i] as SwapResult)),
          (err: unknown) => batch.forEach((w) => w.reject(err)),
        )
        .finally(() => {
          this.inFlight--;
          this.drain();
        });
    }
  }

  /** The first waiting swaps of distinct keys (etcd refuses a transaction that writes one key twice), within the limits. */
  private takeBatch(): Waiting[] {
    const batch: Waiting[] = [];
    const keys = new Set<string>();
    let bytes = 0;
    for (let i = 0; i < this.waiting.length && batch.length < MAX_SWAPS; ) {
      const w = this.waiting[i] as Waiting;
      const key = w.swap.key.toString('latin1');
      const size = w.swap.key.length + (w.swap.value?.length ?? 0);
      if (keys.has(key) || (batch.length > 0 && bytes + size > MAX_BATCH_BYTES)) {
        i++;
        continue;
      }
      keys.add(key);
      bytes += size;
      batch.push(w);
      this.waiting.splice(i, 1);
    }
    return batch;
  }

  private async commit(swaps: readonly Swap[]): Promise<SwapResult[]> {
    const res = await this.txn({
      // Absent: its create_revision is 0. Present: nobody has written it since it was read.
      compare: swaps.map((s) =>
        s.expectedMod === undefined ? { key: s.key, result: 'Equal', target: 'Create', create_revision: 0 } : { key: s.key, result: 'Equal', target: 'Mod', mod_revision: s.expectedMod },
      ),
      success: swaps.map((s): IRequestOp => (s.value === undefined ? { request_delete_range: { key: s.key } } : { request_put: { key: s.key, value: s.value } })),
      failure: swaps.map((s): IRequestOp => ({ request_range: { key: s.key } })),
    });
    if (res.succeeded) {
      const revision = Number(res.header.revision);
      return swaps.map(() => ({ swapped: true, revision }));
    }
    return swaps.map((_, i) => ({ swapped: false, current: res.responses[i]?.response_range.kvs[0] }));
  }
}
