// Writes that must not be lost while the store is unreachable: retried with backoff until they land.
import { setTimeout as sleep } from 'node:timers/promises';
import { isCosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';

export interface RetryOptions {
  /** First wait after a failure (default 200 ms); doubles up to maxDelayMs (default 10 s). */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** Stops retrying (the last error is thrown). */
  signal?: AbortSignal;
}

/**
 * Runs `write` until it succeeds, waiting between attempts while the store is unavailable (etcd unreachable,
 * timed out). Any other error is the write's own answer and is thrown at once. Logs the first failure and the
 * recovery, not every attempt.
 */
export async function untilWritten<T>(what: string, write: () => Promise<T>, log: Logger, opts: RetryOptions = {}): Promise<T> {
  const max = opts.maxDelayMs ?? 10_000;
  let delay = opts.initialDelayMs ?? 200;
  let failures = 0;
  for (;;) {
    try {
      const result = await write();
      if (failures > 0) log.info('store reachable again: write done', { what, attempts: failures + 1 });
      return result;
    } catch (err) {
      if (!isCosiError(err, 'unavailable') || opts.signal?.aborted === true) throw err;
      if (failures === 0) log.warn('store unavailable: retrying the write until it lands', { what, error: err.message });
      failures++;
      // Stopped while waiting: the last failure is the answer, and nothing more is written.
      await sleep(delay, undefined, opts.signal !== undefined ? { signal: opts.signal } : {}).catch(() => {
        throw err;
      });
      delay = Math.min(max, delay * 2);
    }
  }
}
