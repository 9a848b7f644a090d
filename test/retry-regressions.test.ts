// Regressions of untilWritten (server/controllers/retry.ts), the retry of writes while the store is unavailable:
// - it leaves no 'abort' listener on the stop signal once a wait is over (a long outage piled one per attempt);
// - stopped while waiting, it ends at once with the last failure and writes nothing more.
import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { CosiError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { silentLogger } from '../shared/log.js';
import { untilWritten } from '../server/controllers/retry.js';

describe('untilWritten regressions', () => {
  it('leaves no listener on the signal once the write landed', async () => {
    const stop = new AbortController();
    let failures = 20;
    let writes = 0;
    const write = () => {
      writes++;
      return failures-- > 0 ? Promise.reject(new CosiError('unavailable', 'etcd is unreachable')) : Promise.resolve('ok');
    };
    await expect(untilWritten('thing', write, silentLogger, { signal: stop.signal, initialDelayMs: 1, maxDelayMs: 1 })).resolves.toBe('ok');
    expect(writes).toBe(21);
    expect(getEventListeners(stop.signal, 'abort').length).toBe(0);
  });

  it('stopped while waiting, ends with the last failure and writes nothing more', async () => {
    const stop = new AbortController();
    const failures: CosiError[] = [];
    const write = () => {
      const err = new CosiError('unavailable', `etcd is unreachable (attempt ${failures.length + 1})`);
      failures.push(err);
      return Promise.reject(err);
    };
    let waiting!: () => void;
    const firstWait = new Promise<void>((resolve) => (waiting = resolve));
    // untilWritten logs this right before its first wait starts.
    const log: Logger = { debug() {}, info() {}, warn: () => waiting(), error() {}, with: () => log };
    // A wait far longer than the test: only the signal can end it.
    const result = untilWritten('thing', write, log, { signal: stop.signal, initialDelayMs: 600_000, maxDelayMs: 600_000 });
    await firstWait;
    stop.abort();
    await expect(result).rejects.toBe(failures[0]);
    expect(failures.length).toBe(1);
    expect(getEventListeners(stop.signal, 'abort').length).toBe(0);
  });
});
