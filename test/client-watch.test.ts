// The client's watch core (client/watch.ts): an async iterable with backpressure, reconnects with backoff and jitter
// on a clock the test drives, limits, errors that are not retried, resyncs that are not a tight loop, and the rxjs
// Observable on top. The scripted tests use a scripted transport; the others a real cosid over mTLS.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Timers, type WatchOptions, type WatchStream } from '../client/index.js';
import { CosiError, type ErrorKind } from '../shared/errors.js';
import type { WatchRequest } from '../client/convert.js';
import type { ResourceDefinition, WatchEvent } from '../client/resource.js';
import { isWatchTransport, Reflector, type Delta } from '../client/reflector.js';
import { observeWatch, openWatchStream, type WatchTransport } from '../client/watch.js';
import { upsert } from '../server/store/upsert.js';
import { eventually, makePki, podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';
import { freePort } from './pipeline-harness.js';

/** A clock the test drives: timers fire only when the test says so, and the test can wait for one to be set. */
class ManualTimers implements Timers {
  private time = 1_000_000;
  private readonly pending = new Set<{ at: number; ms: number; fn: () => void }>();
  private readonly waiting: ((ms: number) => void)[] = [];
  private consumed = 0;
  /** Every delay asked for, in order. */
  readonly asked: number[] = [];

  now(): number {
    return this.time;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const t = { at: this.time + ms, ms, fn };
    this.pending.add(t);
    this.asked.push(ms);
    this.flush();
    return t;
  }
  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as { at: number; ms: number; fn: () => void });
  }
  /** Resolves with the delay of the next timer set that no earlier call was given. */
  nextTimer(): Promise<number> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.flush();
    });
  }
  private flush(): void {
    for (;;) {
      const ms = this.asked[this.consumed];
      const waiter = this.waiting[0];
      if (ms === undefined || waiter === undefined) return;
      this.consumed++;
      this.waiting.shift();
      waiter(ms);
    }
  }
  /** Moves the clock to the earliest timer and fires it. */
  fireNext(): void {
    const [first] = [...this.pending].sort((a, b) => a.at - b.at);
    if (first === undefined) throw new Error('no timer pending');
    this.pending.delete(first);
    this.time = Math.max(this.time, first.at);
    first.fn();
  }
  advance(ms: number): void {
    this.time += ms;
  }
  get count(): number {
    return this.pending.size;
  }
}

const DEF: ResourceDefinition = { type: 'Things.test.dev', displayType: 'Thing', defaultNamespace: 'ns', aliases: [], allAliases: ['thing'], printColumns: [], sensitive: false };

const res = (id: string, version: number, spec = `v: ${version}\n`) => ({
  metadata: { namespace: 'ns', type: DEF.type, id, version, owner: '', phase: 'running' as const, created: new Date(0), updated: new Date(0), labels: {}, annotations: {}, finalizers: [] },
  spec: { v: version },
  yamlSpec: spec,
  protoSpec: new Uint8Array(),
});
const mark = (n: number) => new Uint8Array([n]);
const ev = (type: WatchEvent['type'], id: string, version: number, bookmark: number): WatchEvent => ({ type, resource: res(id, version), bookmark: mark(bookmark) });
const BOOTSTRAPPED = (bookmark: number): WatchEvent => ({ type: 'bootstrapped', bookmark: mark(bookmark) });

/** What one attempt does: the batches it sends after "ready", then how it ends. */
interface Attempt {
  /** Fails before "ready" (the call's status). */
  refuse?: ErrorKind;
  batches?: WatchEvent[][];
  /** Ends with this error after the batches; without it the attempt stays open until cancelled. */
  fail?: ErrorKind;
}

/** A transport that plays a script of attempts and records the requests and how each attempt ended. */
class ScriptedTransport implements WatchTransport {
  readonly endpoint = 'scripted:1';
  readonly requests: WatchRequest[] = [];
  readonly lines: { msg: string; fields?: Record<string, unknown> }[] = [];
  readonly log = { debug: (msg: string, fields?: Record<string, unknown>) => void this.lines.push({ msg, ...(fields !== undefined ? { fields } : {}) }) };
  private readonly closing = new AbortController();
  readonly closed = this.closing.signal;
  /** Attempts that were cancelled by the watch (how many). */
  cancelled = 0;
  private readonly attemptWaiters: ((n: number) => void)[] = [];

  constructor(private readonly script: Attempt[]) {}

  resolveType(): Promise<ResourceDefinition> {
    return Promise.resolve(DEF);
  }
  trackWatch(): () => void {
    return () => {};
  }
  /** Resolves once `n` attempts have been made. */
  attempts(n: number): Promise<void> {
    if (this.requests.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.attemptWaiters.push((k) => k >= n && resolve()));
  }
  async *watchOnce(req: WatchRequest, signal: AbortSignal): AsyncGenerator<WatchEvent[]> {
    this.requests.push(req);
    for (const w of this.attemptWaiters) w(this.requests.length);
    const a = this.script[this.requests.length - 1] ?? {};
    // Whether the script ended the attempt (else the watch did: cancelled).
    let scriptEnded = false;
    try {
      if (a.refuse !== undefined) {
        scriptEnded = true;
        throw new CosiError(a.refuse, `refused: ${a.refuse}`);
      }
      yield [];
      for (const b of a.batches ?? []) yield b;
      if (a.fail !== undefined) {
        scriptEnded = true;
        throw new CosiError(a.fail, `failed: ${a.fail}`);
      }
      await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve())));
    } finally {
      if (!scriptEnded) this.cancelled++;
    }
  }
}

/** Pulls n events. */
async function take(w: AsyncIterator<WatchEvent>, n: number): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  while (out.length < n) {
    const r = await w.next();
    if (r.done === true) throw new Error(`the watch ended after ${out.length} of ${n} events`);
    out.push(r.value);
  }
  return out;
}

/** Steps in short, with the first byte of their bookmark. */
const stepSummary = (ds: readonly Delta[]) =>
  ds.map((d) => {
    if (d.op === 'replaced') return `replaced ${[...d.items.values()].map((r) => `${r.metadata.id}@${r.metadata.version}`).join(',')} #${d.bookmark?.[0] ?? '-'}`;
    const e = d.event;
    return `${e.type}${e.resource ? ` ${e.resource.metadata.id}@${e.resource.metadata.version}` : ''}${e.resync === true ? ' resync' : ''} #${e.bookmark?.[0] ?? '-'}`;
  });

const summary = (es: readonly WatchEvent[]) => es.map((e) => `${e.type}${e.resource ? ` ${e.resource.metadata.id}@${e.resource.metadata.version}` : ''}${e.resync === true ? ' resync' : ''}`);

function scripted(script: Attempt[], reconnect: WatchOptions['reconnect'] & object, opts: WatchOptions = { bootstrap: true }) {
  const t = new ScriptedTransport(script);
  const states: string[] = [];
  const w = openWatchStream(t, 'thing', { ...opts, reconnect: { ...reconnect, onState: (s, d) => states.push(d === undefined ? s : `${s}: ${d}`) } });
  return { t, w, states };
}

describe('reconnect backoff on an injected clock', () => {
  it('doubles the delay per failure in a row up to the cap, each drawn with jitter, and resumes from the last bookmark', async () => {
    const timers = new ManualTimers();
    // random() = 0.5 with jitter 0.5: each delay is 75% of its base.
    const { t, w, states } = scripted(
      [{ batches: [[ev('created', 'a', 1, 1), BOOTSTRAPPED(2)]], fail: 'unavailable' }, { refuse: 'unavailable' }, { refuse: 'unavailable' }, { refuse: 'unavailable' }, { batches: [[ev('updated', 'a', 2, 3)]] }],
      { initialDelayMs: 100, maxDelayMs: 300, jitter: 0.5, random: () => 0.5, timers },
    );
    expect(summary(await take(w, 2))).toEqual(['created a@1', 'bootstrapped']);
    const next = w.next();
    for (const expected of [75, 150, 225, 225]) {
      expect(await timers.nextTimer()).toBe(expected);
      timers.fireNext();
    }
    expect(summary([(await next).value as WatchEvent])).toEqual(['updated a@2']);
    expect(timers.asked).toEqual([75, 150, 225, 225]);
    // The first attempt is what was asked for; every later one resumes after the last bookmark seen.
    expect(t.requests.map((r) => [r.bootstrap, r.fromBookmark?.[0]])).toEqual([[true, undefined], [false, 2], [false, 2], [false, 2], [false, 2]]);
    expect(states).toEqual(['connecting', 'streaming', 'reconnecting: failed: unavailable', 'reconnecting: refused: unavailable', 'reconnecting: refused: unavailable', 'reconnecting: refused: unavailable', 'streaming']);
    await w.close();
    expect(states.at(-1)).toBe('closed');
    expect(t.cancelled).toBe(1);
  });

  it('starts the doubling over once a stream has stayed up as long as the longest delay', async () => {
    const timers = new ManualTimers();
    const { t, w } = scripted(
      [{ fail: 'unavailable' }, { fail: 'unavailable' }, { batches: [[BOOTSTRAPPED(1)]], fail: 'unavailable' }, {}],
      { initialDelayMs: 100, maxDelayMs: 1000, jitter: 0, timers },
      { bootstrap: true },
    );
    const first = w.next();
    expect(await timers.nextTimer()).toBe(100);
    timers.fireNext();
    expect(await timers.nextTimer()).toBe(200);
    // The third attempt streams; it fails after it was up for the longest delay.
    timers.fireNext();
    expect((await first).value?.type).toBe('bootstrapped');
    timers.advance(1000);
    const afterHealthy = w.next();
    expect(await timers.nextTimer()).toBe(100);
    timers.fireNext();
    await t.attempts(4);
    await w.close();
    expect((await afterHealthy).done).toBe(true);
  });

  it('gives up after maxRetries failures in a row with the last failure, kind kept', async () => {
    const timers = new ManualTimers();
    const { t, w } = scripted([{ refuse: 'unavailable' }, { refuse: 'unavailable' }, { refuse: 'resource-exhausted' }], { initialDelayMs: 10, jitter: 0, maxRetries: 2, timers });
    const ended = w.next();
    for (let i = 0; i < 2; i++) {
      await timers.nextTimer();
      timers.fireNext();
    }
    await expect(ended).rejects.toMatchObject({ kind: 'resource-exhausted', message: expect.stringContaining('gave up after 3 failed attempts') });
    expect(t.requests.length).toBe(3);
    expect(timers.count).toBe(0);
  });

  it('gives up when the next attempt would start more than maxElapsedMs after the first failure', async () => {
    const timers = new ManualTimers();
    const { t, w } = scripted(Array.from({ length: 10 }, () => ({ refuse: 'unavailable' as const })), { initialDelayMs: 100, maxDelayMs: 10_000, jitter: 0, maxElapsedMs: 500, timers });
    const ended = w.next();
    // Delays 100 and 200 fit (the next attempt at 300 ms); 400 more would start at 700 ms.
    for (let i = 0; i < 2; i++) {
      await timers.nextTimer();
      timers.fireNext();
    }
    await expect(ended).rejects.toMatchObject({ kind: 'unavailable', message: expect.stringContaining('gave up after 3 failed attempts in 300 ms') });
    expect(t.requests.length).toBe(3);
  });

  it.each(['unauthenticated', 'permission-denied', 'invalid-argument', 'not-found', 'unimplemented'] as const)('does not retry %s: the watch ends with it at once', async (kind) => {
    const timers = new ManualTimers();
    const { t, w, states } = scripted([{ refuse: kind }, {}], { initialDelayMs: 10, timers });
    await expect(w.next()).rejects.toMatchObject({ kind, message: `refused: ${kind}` });
    expect(t.requests.length).toBe(1);
    expect(timers.asked).toEqual([]);
    expect(states).toEqual(['connecting', 'closed']);
  });

  it('also ends on unauthenticated after a stream that was up: it is not retried forever', async () => {
    const timers = new ManualTimers();
    const { t, w } = scripted([{ batches: [[BOOTSTRAPPED(1)]], fail: 'unavailable' }, { refuse: 'unauthenticated' }], { initialDelayMs: 10, jitter: 0, timers });
    expect(summary(await take(w, 1))).toEqual(['bootstrapped']);
    const ended = w.next();
    await timers.nextTimer();
    timers.fireNext();
    await expect(ended).rejects.toMatchObject({ kind: 'unauthenticated' });
    expect(t.requests.length).toBe(2);
  });
});

describe('resync when the server cannot resume', () => {
  it('lists again at once the first time, yields only the difference, and backs off when it keeps happening', async () => {
    const timers = new ManualTimers();
    const { t, w, states } = scripted(
      [
        { batches: [[ev('created', 'a', 1, 1), ev('created', 'b', 1, 2), BOOTSTRAPPED(3)]], fail: 'too-old' },
        // The resync's list breaks off before it is complete, twice: "cannot resume" is not a tight loop.
        { batches: [[ev('created', 'a', 1, 10)]], fail: 'too-old' },
        { fail: 'too-old' },
        { batches: [[ev('created', 'a', 1, 20), ev('created', 'c', 1, 21)], [BOOTSTRAPPED(22)]] },
      ],
      { initialDelayMs: 100, jitter: 0, timers },
    );
    expect(summary(await take(w, 3))).toEqual(['created a@1', 'created b@1', 'bootstrapped']);
    const diff = take(w, 2);
    expect(await timers.nextTimer()).toBe(200);
    timers.fireNext();
    expect(await timers.nextTimer()).toBe(400);
    timers.fireNext();
    expect(summary(await diff)).toEqual(['destroyed b@1 resync', 'created c@1 resync']);
    // Each resync lists from scratch; none resumes from a bookmark of the lost history.
    expect(t.requests.map((r) => [r.bootstrap, r.fromBookmark?.[0]])).toEqual([[true, undefined], [true, undefined], [true, undefined], [true, undefined]]);
    expect(timers.asked).toEqual([200, 400]);
    expect(states.filter((s) => s.startsWith('resyncing')).length).toBe(3);
    await w.close();
  });

  it('after a server restart lists again at once, however many reconnects failed while it was away, and then backs off from the start', async () => {
    const timers = new ManualTimers();
    const { t, w, states } = scripted(
      [
        { batches: [[ev('created', 'a', 1, 1), BOOTSTRAPPED(2)]], fail: 'unavailable' },
        // The server is away: five reconnects are refused, each after a longer wait.
        ...Array.from({ length: 5 }, () => ({ refuse: 'unavailable' as const })),
        // It is back, a new instance: the old bookmark means nothing to it.
        { refuse: 'too-old' },
        { batches: [[ev('created', 'a', 2, 30), BOOTSTRAPPED(31)]], fail: 'unavailable' },
        { refuse: 'unavailable' },
        {},
      ],
      { initialDelayMs: 100, maxDelayMs: 1000, jitter: 0, timers },
    );
    expect(summary(await take(w, 2))).toEqual(['created a@1', 'bootstrapped']);
    const resynced = w.next();
    for (const expected of [100, 200, 400, 800, 1000, 1000]) {
      expect(await timers.nextTimer()).toBe(expected);
      timers.fireNext();
    }
    // No timer between "too old" and the re-list: its difference arrives with the clock untouched.
    expect(summary([(await resynced).value as WatchEvent])).toEqual(['updated a@2 resync']);
    expect(timers.asked).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(t.requests.slice(6).map((r) => [r.bootstrap, r.fromBookmark?.[0]])).toEqual([[false, 2], [true, undefined]]);
    expect(states.filter((s) => s.startsWith('resyncing'))).toEqual(['resyncing: refused: too-old']);
    // The re-list was a success: the next failures back off from the initial delay again.
    const after = w.next();
    expect(await timers.nextTimer()).toBe(100);
    timers.fireNext();
    expect(await timers.nextTimer()).toBe(200);
    timers.fireNext();
    await t.attempts(10);
    await w.close();
    expect((await after).done).toBe(true);
  });

  it('a resync that finds nothing changed is a success too: the next failure waits the initial delay', async () => {
    const timers = new ManualTimers();
    const { t, w } = scripted(
      [
        { batches: [[ev('created', 'a', 1, 1), BOOTSTRAPPED(2)]], fail: 'unavailable' },
        { refuse: 'unavailable' },
        { refuse: 'unavailable' },
        { refuse: 'too-old' },
        { batches: [[ev('created', 'a', 1, 30), BOOTSTRAPPED(31)]], fail: 'unavailable' },
        {},
      ],
      { initialDelayMs: 100, maxDelayMs: 1000, jitter: 0, timers },
    );
    await take(w, 2);
    const next = w.next();
    for (const expected of [100, 200, 400]) {
      expect(await timers.nextTimer()).toBe(expected);
      timers.fireNext();
    }
    expect(await timers.nextTimer()).toBe(100);
    timers.fireNext();
    await t.attempts(6);
    expect(timers.asked).toEqual([100, 200, 400, 100]);
    await w.close();
    expect((await next).done).toBe(true);
  });

  it('treats a bare FAILED_PRECONDITION on a resume as a lost place (a foreign server\'s invalid bookmark)', async () => {
    const timers = new ManualTimers();
    const { t, w } = scripted([{ batches: [[ev('created', 'a', 1, 1), BOOTSTRAPPED(2)]], fail: 'unavailable' }, { refuse: 'version-conflict' }, { batches: [[ev('created', 'a', 2, 5), BOOTSTRAPPED(6)]] }], {
      initialDelayMs: 10,
      jitter: 0,
      timers,
    });
    await take(w, 2);
    const next = w.next();
    await timers.nextTimer();
    timers.fireNext();
    // The refusal came from a server that answered: the re-list goes at once.
    expect(summary([(await next).value as WatchEvent])).toEqual(['updated a@2 resync']);
    expect(timers.asked).toEqual([10]);
    expect(t.requests[2]?.bootstrap).toBe(true);
    await w.close();
  });

  it('ends a watch without bootstrap with the server\'s kind and says why it cannot re-list', async () => {
    const { w } = scripted([{ batches: [[ev('created', 'a', 1, 1)]], fail: 'invalid-bookmark' }], { initialDelayMs: 10 }, {});
    await take(w, 1);
    await expect(w.next()).rejects.toMatchObject({ kind: 'invalid-bookmark', message: expect.stringContaining('no bootstrap to re-list from') });
  });
});

describe('bootstrap with fromBookmark: resume, and list again only when the server cannot (scripted)', () => {
  it('the first call sends only the bookmark; a too-old lists again and yields only the difference from what the watch saw, with no bootstrapped marker', async () => {
    const { t, w, states } = scripted(
      [
        { batches: [[ev('updated', 'a', 2, 11), ev('created', 'b', 1, 12)]], fail: 'too-old' },
        { batches: [[ev('created', 'a', 2, 20), ev('created', 'c', 1, 21), BOOTSTRAPPED(22)], [ev('destroyed', 'c', 1, 23)]] },
      ],
      { initialDelayMs: 10, jitter: 0, timers: new ManualTimers() },
      { bootstrap: true, fromBookmark: mark(5) },
    );
    // a unchanged since the watch saw it: not told again.
    expect(summary(await take(w, 5))).toEqual(['updated a@2', 'created b@1', 'destroyed b@1 resync', 'created c@1 resync', 'destroyed c@1']);
    expect(t.requests.map((r) => [r.bootstrap, r.fromBookmark?.[0]])).toEqual([[false, 5], [true, undefined]]);
    expect(states).toEqual(['connecting', 'streaming', 'resyncing: failed: too-old', 'streaming']);
    await w.close();
  });

  it('hands out the re-list\'s BOOTSTRAPPED bookmark on `replaced`, and on the resync marker of a first bootstrap cut short', async () => {
    const t = new ScriptedTransport([{ batches: [[ev('created', 'a', 1, 1)]], fail: 'too-old' }, { batches: [[ev('created', 'a', 1, 10), ev('created', 'b', 1, 11), BOOTSTRAPPED(12)]] }]);
    const r = new Reflector(t, 'thing', { bootstrap: true, reconnect: { initialDelayMs: 10, timers: new ManualTimers() } });
    const steps = r.steps();
    expect(stepSummary((await steps.next()).value ?? [])).toEqual(['created a@1 #1']);
    expect(stepSummary((await steps.next()).value ?? [])).toEqual(['replaced a@1,b@1 #12', 'bootstrapped resync #12']);
    await r.close();
  });

  it('one resource (`id`): resumes without bootstrap on the wire, and its re-list is the resource\'s first event, with its bookmark', async () => {
    const t = new ScriptedTransport([{ refuse: 'invalid-bookmark' }, { batches: [[ev('created', 'a', 3, 30)], [ev('updated', 'a', 4, 31)]] }]);
    const r = new Reflector(t, 'thing', { id: 'a', bootstrap: true, fromBookmark: mark(5), reconnect: { initialDelayMs: 10, timers: new ManualTimers() } });
    const steps = r.steps();
    expect(stepSummary((await steps.next()).value ?? [])).toEqual(['replaced a@3 #30']);
    expect(stepSummary((await steps.next()).value ?? [])).toEqual(['updated a@4 #31']);
    expect(t.requests.map((q) => [q.id, q.bootstrap, q.fromBookmark?.[0]])).toEqual([['a', false, 5], ['a', false, undefined]]);
    await r.close();
  });
});

describe('the stream object', () => {
  it('close() ends a pending next() as done and cancels the attempt; asyncDispose does the same', async () => {
    const { t, w } = scripted([{}], {});
    const pending = w.next();
    await t.attempts(1);
    await w.close();
    expect(await pending).toEqual({ done: true, value: undefined });
    expect(t.cancelled).toBe(1);
    expect((await w.next()).done).toBe(true);

    const other = scripted([{}], {});
    const p2 = other.w.next();
    await other.t.attempts(1);
    await other.w[Symbol.asyncDispose]();
    expect((await p2).done).toBe(true);
  });

  it('breaking out of for-await ends the watch', async () => {
    const { t, w, states } = scripted([{ batches: [[ev('created', 'a', 1, 1), ev('created', 'b', 1, 2)]] }], {});
    for await (const e of w) {
      expect(e.type).toBe('created');
      break;
    }
    expect(t.cancelled).toBe(1);
    expect(states.at(-1)).toBe('closed');
  });

  it('the caller\'s signal ends it quietly; timeoutMs ends it with deadline-exceeded on the injected clock', async () => {
    const abort = new AbortController();
    const a = scripted([{}], {}, { signal: abort.signal });
    const pending = a.w.next();
    await a.t.attempts(1);
    abort.abort();
    expect((await pending).done).toBe(true);

    const timers = new ManualTimers();
    const b = scripted([{}], { timers }, { timeoutMs: 5000 });
    const waiting = b.w.next();
    await b.t.attempts(1);
    expect(timers.asked).toEqual([5000]);
    timers.fireNext();
    await expect(waiting).rejects.toMatchObject({ kind: 'deadline-exceeded', message: 'the watch of thing reached its deadline of 5000 ms' });
  });

  it('refuses nonsense options with invalid-argument before connecting', () => {
    const t = new ScriptedTransport([]);
    expect(() => openWatchStream(t, 'thing', { timeoutMs: -1 })).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    expect(() => openWatchStream(t, 'thing', { reconnect: { jitter: 2 } })).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    expect(() => openWatchStream(t, 'thing', { bootstrap: true, fromBookmark: mark(1), tailEvents: 3 })).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    expect(t.requests).toEqual([]);
  });

  it('writes debug lines on state changes and retries through the logger hook', async () => {
    const timers = new ManualTimers();
    const { t, w } = scripted([{ refuse: 'unavailable' }, { batches: [[BOOTSTRAPPED(1)]] }], { initialDelayMs: 10, jitter: 0, timers });
    const first = w.next();
    await timers.nextTimer();
    timers.fireNext();
    await first;
    await w.close();
    expect(t.lines.map((l) => l.msg)).toEqual(['watch connecting', 'watch reconnecting', 'watch retrying', 'watch streaming', 'watch closed']);
    expect(t.lines[2]?.fields).toMatchObject({ endpoint: 'scripted:1', type: 'thing', attempt: 1, delayMs: 10, reason: 'refused: unavailable' });
  });
});

describe('the rxjs Observable on the iterable core', () => {
  it('emits the same events, errors with the same CosiError, and unsubscribing cancels the stream', async () => {
    const t = new ScriptedTransport([{ batches: [[ev('created', 'a', 1, 1), BOOTSTRAPPED(2)]] }]);
    const seen: WatchEvent[] = [];
    const sub = observeWatch(t, 'thing', { bootstrap: true }).subscribe((e) => seen.push(e));
    await eventually(() => expect(summary(seen)).toEqual(['created a@1', 'bootstrapped']));
    sub.unsubscribe();
    await eventually(() => expect(t.cancelled).toBe(1));

    const refused = new ScriptedTransport([{ refuse: 'permission-denied' }]);
    const err = await new Promise<unknown>((resolve) => observeWatch(refused, 'thing', {}).subscribe({ error: resolve }));
    expect(err).toBeInstanceOf(CosiError);
    expect(err).toMatchObject({ kind: 'permission-denied', code: 7 });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Against a real cosid.

let srv: TestServer;
beforeAll(async () => {
  // Room in history for the writes of the backpressure test.
  srv = await startServer({ historySize: 20_000, historyAgeMs: 0 });
});
afterAll(async () => {
  await srv.close();
});

describe('backpressure end to end', () => {
  it('pauses the gRPC stream while the consumer does not pull: cosid parks the watcher, and nothing is lost', async () => {
    const client = srv.client();
    const w: WatchStream = client.watchIter('podstatus', { bootstrap: true, idRegexp: '^bp/' });
    expect(summary(await take(w, 1))).toEqual(['bootstrapped']);
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(1));
    // 16 MiB of changes (each 8 KiB spec travels as YAML and as protobuf) while the consumer pulls nothing: twice
    // the 8 MiB HTTP/2 window and the 16 messages grpc-js buffers. Had the client kept reading, cosid would never
    // park it.
    const big = 'x'.repeat(8192);
    const n = 1000;
    for (let i = 0; i < n; i++) await upsert(srv.cosid.store, { ...STATUSES, id: `bp/${i % 100}`, spec: podStatus(false, { padding: big, i }) }, TEST_OWNER);
    await eventually(() => expect(srv.cosid.hub.stats().parked).toBe(1), 20_000);
    // Now drain: every change once, in order per resource.
    const got = await take(w, n);
    const versions = new Map<string, number[]>();
    for (const e of got) versions.set(e.resource?.metadata.id ?? '', [...(versions.get(e.resource?.metadata.id ?? '') ?? []), e.resource?.metadata.version ?? 0]);
    expect(versions.size).toBe(100);
    for (const v of versions.values()) expect(v).toEqual(Array.from({ length: n / 100 }, (_, k) => k + 1));
    await w.close();
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(0));
  });

  it('closing the client ends its watches (a pending next() resolves done) and fails later calls with cancelled', async () => {
    const client = srv.client();
    const w = client.watchIter('podstatus', { idRegexp: '^never/' });
    const pending = w.next();
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(1));
    await client[Symbol.asyncDispose]();
    expect(await pending).toEqual({ done: true, value: undefined });
    await expect(client.list('podstatus')).rejects.toMatchObject({ kind: 'cancelled', message: 'List was cancelled: the client was closed' });
    await eventually(() => expect(srv.cosid.hub.stats().sessions).toBe(0));
  });

  it('writes its debug lines to the log hook given to connect', async () => {
    const lines: string[] = [];
    const client = connect({ endpoint: srv.endpoint, caPem: srv.pki.ca.certPem, certPem: srv.pki.admin.certPem, keyPem: srv.pki.admin.keyPem, log: { debug: (msg) => lines.push(msg) } });
    const w = client.watchIter('podstatus', { bootstrap: true, idRegexp: '^logged/' });
    expect((await w.next()).value?.type).toBe('bootstrapped');
    await client[Symbol.asyncDispose]();
    expect(lines).toEqual(['watch connecting', 'watch streaming', 'client closing', 'watch closed']);
  });

  it('a permission-denied watch ends at once, without a retry', async () => {
    const client = srv.client(await srv.certWithRoles([]));
    const states: string[] = [];
    const w = client.watchIter('podstatus', { bootstrap: true, reconnect: { initialDelayMs: 10, onState: (s) => states.push(s) } });
    await expect(w.next()).rejects.toMatchObject({ kind: 'permission-denied', code: 7 });
    expect(states).toEqual(['connecting', 'closed']);
  });
});

describe('bootstrap with fromBookmark on a real cosid', () => {
  const put = (id: string, ready: boolean) => upsert(srv.cosid.store, { ...STATUSES, id, spec: podStatus(ready) }, TEST_OWNER);
  const remove = (id: string) => srv.cosid.store.destroy({ ...STATUSES, id }, TEST_OWNER);
  // A bookmark of another cosid instance: the server cannot resume from it ("too old").
  let foreign: Uint8Array;
  beforeAll(async () => {
    const other = await startServer();
    try {
      const first = await take(other.client().watchIter('podstatus', { id: 'any' }), 1);
      foreign = first[0]?.bookmark ?? new Uint8Array();
    } finally {
      await other.close();
    }
  });

  /** The next n events that are not idle bookmarks. */
  async function changes(w: WatchStream, n: number): Promise<WatchEvent[]> {
    const out: WatchEvent[] = [];
    while (out.length < n) {
      const [e] = await take(w, 1);
      if (e !== undefined && e.type !== 'noop') out.push(e);
    }
    return out;
  }

  /** The next pull's steps that are not idle bookmarks (a pull of idle bookmarks alone is skipped). */
  async function nextSteps(steps: AsyncGenerator<readonly Delta[], void, undefined>): Promise<readonly Delta[]> {
    for (;;) {
      const r = await steps.next();
      if (r.done === true) throw new Error('the steps ended');
      const out = r.value.filter((d) => d.op !== 'marker' || d.event.type !== 'noop');
      if (out.length > 0) return out;
    }
  }

  it('resumes from the bookmark: only the changes after it; a lean update has `old` once the watch has seen the resource', async () => {
    await put('pair/a', false);
    await put('pair/b', false);
    const first = srv.client().watchIter('podstatus', { bootstrap: true, idRegexp: '^pair/' });
    const [boot] = (await changes(first, 3)).slice(2);
    await first.close();
    expect(boot?.type).toBe('bootstrapped');
    await put('pair/a', true);
    await put('pair/c', false);
    await remove('pair/b');
    await put('pair/a', false);
    const w = srv.client().watchIter('podstatus', { bootstrap: true, fromBookmark: boot?.bookmark, idRegexp: '^pair/' });
    const got = await changes(w, 4);
    expect(summary(got)).toEqual(['updated pair/a@2', 'created pair/c@1', 'destroyed pair/b@1', 'updated pair/a@3']);
    // Lean events carry no old resource: the watch's view, empty at the start of a resume, fills it in from the
    // second change of a resource on.
    expect(got[0]?.old).toBeUndefined();
    expect(got[3]?.old?.metadata.version).toBe(2);
    await w.close();
  });

  it('a bookmark of another instance is too old: one re-list, a `replaced` step with a bookmark that resumes; watchIter yields the difference', async () => {
    await put('foreign/a', false);
    await put('foreign/b', false);
    const client = srv.client();
    if (!isWatchTransport(client)) throw new Error('the library client is its own transport');
    const states: string[] = [];
    const r = new Reflector(client, 'podstatus', {
      bootstrap: true,
      fromBookmark: foreign,
      idRegexp: '^foreign/',
      eventForm: 'lean',
      reconnect: { onState: (s, d) => states.push(d === undefined ? s : `${s}: ${d}`) },
    });
    const steps = r.steps();
    const first = await nextSteps(steps);
    expect(first.map((d) => (d.op === 'replaced' ? [...d.items.keys()] : d.op))).toEqual([['foreign/a', 'foreign/b']]);
    const resumeAt = first[0]?.op === 'replaced' ? first[0].bookmark : undefined;
    expect(resumeAt).toBeInstanceOf(Uint8Array);
    expect(states).toEqual(['connecting', expect.stringMatching(/^resyncing: .*another server instance/), 'streaming']);
    await put('foreign/a', true);
    const [change] = await nextSteps(steps);
    expect(change?.op === 'updated' && [change.resource.metadata.id, change.resource.metadata.version, change.event.bookmark instanceof Uint8Array]).toEqual(['foreign/a', 2, true]);
    await r.close();

    // The replaced step's bookmark is a place to resume from: after it, that update and nothing before it.
    await put('foreign/z', false);
    const resumed = client.watchIter('podstatus', { bootstrap: true, fromBookmark: resumeAt, idRegexp: '^foreign/' });
    expect(summary(await changes(resumed, 2))).toEqual(['updated foreign/a@2', 'created foreign/z@1']);
    await resumed.close();

    // watchIter starts with an empty view: the re-list's difference is every resource, marked resync, with no
    // bootstrapped marker; then the changes.
    const w = client.watchIter('podstatus', { bootstrap: true, fromBookmark: foreign, idRegexp: '^foreign/' });
    expect(summary(await changes(w, 3))).toEqual(['created foreign/a@2 resync', 'created foreign/b@1 resync', 'created foreign/z@1 resync']);
    await remove('foreign/b');
    expect(summary(await changes(w, 1))).toEqual(['destroyed foreign/b@1']);
    await w.close();
  });

  it('works with `id`: resumes after the bookmark, and a foreign bookmark gets the resource\'s state as a resync', async () => {
    await put('one/a', false);
    const single = srv.client().watchIter('podstatus', { id: 'one/a' });
    const [state] = await take(single, 1);
    await single.close();
    expect(summary(state ? [state] : [])).toEqual(['created one/a@1']);
    await put('one/a', true);
    const w = srv.client().watchIter('podstatus', { id: 'one/a', bootstrap: true, fromBookmark: state?.bookmark });
    expect(summary(await changes(w, 1))).toEqual(['updated one/a@2']);
    await w.close();
    const fresh = srv.client().watchIter('podstatus', { id: 'one/a', bootstrap: true, fromBookmark: foreign });
    expect(summary(await changes(fresh, 1))).toEqual(['created one/a@2 resync']);
    await put('one/a', false);
    const [update] = await changes(fresh, 1);
    expect([update?.type, update?.old?.metadata.version, update?.resource?.metadata.version]).toEqual(['updated', 2, 3]);
    await fresh.close();
  });
});

describe('a watch across a real cosid restart on the same port', () => {
  it('lists again as soon as the new cosid answers "too old", then backs off from the initial delay', async () => {
    const pki = await makePki();
    const port = await freePort();
    const listen = `127.0.0.1:${port}`;
    let server = await startServer({ pki, listen });
    const retries: { delayMs: unknown; reason: unknown }[] = [];
    const client = connect({
      endpoint: listen,
      caPem: pki.ca.certPem,
      certPem: pki.admin.certPem,
      keyPem: pki.admin.keyPem,
      log: { debug: (msg, fields) => void (msg === 'watch retrying' && retries.push({ delayMs: fields?.['delayMs'], reason: fields?.['reason'] })) },
    });
    try {
      await server.cosid.store.create({ ...STATUSES, id: 'restart/a', spec: podStatus(false) }, TEST_OWNER);
      const w = client.watchIter('podstatus', { bootstrap: true, idRegexp: '^restart/', reconnect: { initialDelayMs: 50, maxDelayMs: 400, jitter: 0 } });
      const seen: WatchEvent[] = [];
      const pulled = (async () => {
        for await (const e of w) if (e.type !== 'noop') seen.push(e);
      })();
      await eventually(() => expect(summary(seen)).toEqual(['created restart/a@1', 'bootstrapped']));

      // cosid goes away long enough for the backoff to reach its cap.
      await server.close();
      await eventually(() => expect(retries.map((r) => r.delayMs).slice(0, 5)).toEqual([50, 100, 200, 400, 400]), 20_000);
      server = await startServer({ pki, listen });
      await server.cosid.store.create({ ...STATUSES, id: 'restart/a', spec: podStatus(true) }, TEST_OWNER);
      await eventually(() => expect(summary(seen.slice(2))).toEqual(['updated restart/a@1 resync']), 20_000);
      // The "too old" of the new cosid was followed by the re-list at once, not by a wait of 400 ms.
      const tooOld = retries.filter((r) => r.delayMs !== 400 && r.delayMs !== 200 && r.delayMs !== 100 && r.delayMs !== 50);
      expect(tooOld).toEqual([{ delayMs: 0, reason: expect.stringContaining('another server instance') }]);

      // The re-list was a success: the next outage starts from the initial delay.
      const before = retries.length;
      await server.close();
      await eventually(() => expect(retries.length).toBeGreaterThan(before), 20_000);
      expect(retries[before]?.delayMs).toBe(50);
      await w.close();
      await pulled;
    } finally {
      client.close();
      await server.close();
    }
  });
});
