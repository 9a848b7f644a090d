// Review: untilWritten adds one 'abort' listener to the stop signal per failed attempt and never removes it when
// the wait ends normally: a long outage piles listeners (and their closures) on a controller's signal for its life.
import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { CosiError } from '../shared/errors.js';
import { silentLogger } from '../shared/log.js';
import { untilWritten } from '../server/controllers/retry.js';

describe('review: untilWritten', () => {
  it('leaves no listener on the signal once the write landed', async () => {
    const stop = new AbortController();
    let failures = 20;
    const write = () => (failures-- > 0 ? Promise.reject(new CosiError('unavailable', 'etcd is unreachable')) : Promise.resolve('ok'));
    await expect(untilWritten('thing', write, silentLogger, { signal: stop.signal, initialDelayMs: 1, maxDelayMs: 1 })).resolves.toBe('ok');
    expect(getEventListeners(stop.signal, 'abort').length).toBe(0);
  });
});
