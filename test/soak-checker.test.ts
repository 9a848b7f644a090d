// The soak's history checker finds what it is there to find: a lost, repeated or reordered change, a missing
// bookmark, and a view that differs from a fresh List (each fed by hand, so a checker that passes everything fails here).
import { describe, expect, it } from 'vitest';
import type { WatchEvent, WatchEventType } from '../client/index.js';
import { HistoryChecker } from './soak/checker.js';

const INSTANCE = Buffer.from('0102030405060708', 'hex');

function bookmark(revision: number, bootstrap = false): Uint8Array {
  const b = Buffer.alloc(18);
  b.writeUInt8(1, 0);
  b.writeUInt8(bootstrap ? 1 : 0, 1);
  INSTANCE.copy(b, 2);
  b.writeBigUInt64BE(BigInt(revision), 10);
  return b;
}

function ev(type: WatchEventType, id: string, version: number, revision: number | undefined, extra: Partial<WatchEvent> = {}): WatchEvent {
  const resource = { metadata: { id, version }, yamlSpec: `v: ${version}\n` } as unknown as NonNullable<WatchEvent['resource']>;
  return { type, resource, ...(revision !== undefined ? { bookmark: bookmark(revision) } : {}), ...extra };
}

function run(bootstrap: boolean, events: WatchEvent[]): HistoryChecker {
  const c = new HistoryChecker('w', bootstrap);
  for (const e of events) c.observe(e);
  return c;
}

const rules = (c: HistoryChecker) => c.violations.map((v) => v.rule);

describe('the soak history checker', () => {
  it('passes a clean history, with and without bootstrap', () => {
    const boot: WatchEvent = { type: 'bootstrapped', bookmark: bookmark(10, true) };
    const initial = { ...ev('created', 'a', 4, undefined), bookmark: bookmark(10, true) };
    expect(rules(run(true, [initial, boot, ev('updated', 'a', 5, 11), ev('created', 'b', 1, 12), ev('destroyed', 'a', 5, 13)]))).toEqual([]);
    expect(rules(run(false, [ev('updated', 'a', 5, 11), ev('created', 'b', 1, 12), ev('destroyed', 'a', 5, 13)]))).toEqual([]);
  });

  it('finds a lost change (a version gap)', () => {
    expect(rules(run(false, [ev('created', 'a', 1, 1), ev('updated', 'a', 3, 3)]))).toEqual(['updates one version at a time (no gap, no repeat)']);
  });

  it('finds a change delivered twice', () => {
    const c = run(false, [ev('created', 'a', 1, 1), ev('updated', 'a', 2, 2), ev('updated', 'a', 2, 2)]);
    expect(rules(c)).toContain('revisions increase (each change once, in order)');
    expect(rules(c)).toContain('updates one version at a time (no gap, no repeat)');
  });

  it('finds changes out of order and a missing bookmark', () => {
    expect(rules(run(false, [ev('created', 'a', 1, 5), ev('created', 'b', 1, 4)]))).toEqual(['revisions increase (each change once, in order)']);
    expect(rules(run(false, [ev('created', 'a', 1, undefined)]))).toEqual(['every event carries a bookmark']);
  });

  it('takes a resync as a new baseline', () => {
    expect(rules(run(false, [ev('created', 'a', 1, 1), ev('updated', 'a', 7, undefined, { resync: true }), ev('updated', 'a', 8, 9)]))).toEqual([]);
  });

  it('compares the view with a fresh List', () => {
    const c = run(false, [ev('created', 'a', 1, 1), ev('created', 'b', 1, 2), ev('destroyed', 'b', 1, 3)]);
    expect(c.differences(new Map([['a', { version: 1, spec: 'v: 1\n' }]]))).toEqual([]);
    // Unseen ids do not count without bootstrap; a stale version does.
    expect(c.differences(new Map([['a', { version: 2, spec: 'v: 2\n' }], ['z', { version: 1, spec: '' }]]))).toEqual(['a: watcher v1, List v2']);
    const boot = run(true, [{ type: 'bootstrapped', bookmark: bookmark(1, true) }]);
    expect(boot.differences(new Map([['z', { version: 1, spec: '' }]]))).toEqual(['z: watcher absent, List v1']);
  });
});
