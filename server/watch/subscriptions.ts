// The per-kind fan-out: one subscription to each watched kind's history, and what its news means for every session
// of the kind (a commit wakes them, a trimmed change may cost them their place, a lost history ends them).
import type { CosiError } from '../../shared/errors.js';
import { kindKey } from '../../shared/resource.js';
import type { KindHistory } from '../store/store.js';
import type { EncodedEvents } from './events.js';
import type { EventForm } from './frames.js';
import type { WatchSession } from './session.js';

/** The sessions of one kind, and the subscription to its history. */
export class KindFanOut {
  readonly sessions = new Set<WatchSession>();
  /** How many sessions use each event form: a change is encoded at commit in those forms only. */
  private readonly forms = new Map<EventForm, number>();
  private readonly unsubscribe: () => void;

  constructor(
    readonly history: KindHistory,
    events: EncodedEvents,
    wake: (session: WatchSession) => void,
  ) {
    const { sessions, forms } = this;
    this.unsubscribe = history.subscribe({
      committed: (c) => {
        for (const s of sessions) wake(s);
        events.committed(c, forms.keys(), history);
      },
      // Lag counts only in events a watcher would receive: when history forgets a change, a watcher still
      // before it skips it if it would not deliver it, and only loses its place if it would.
      trimmed: (c) => {
        for (const s of [...sessions]) s.forgotten(c);
      },
      // The backend went away or cut its history: every watch of the kind ends with that status (after a last
      // bookmark when it can resume), and the clients reconnect or list again.
      lost: (err) => {
        for (const s of [...sessions]) s.stop(err);
      },
    });
  }

  add(session: WatchSession): void {
    this.sessions.add(session);
    const form = session.plan.form;
    this.forms.set(form, (this.forms.get(form) ?? 0) + 1);
  }

  delete(session: WatchSession): void {
    if (!this.sessions.delete(session)) return;
    const form = session.plan.form;
    const left = (this.forms.get(form) ?? 1) - 1;
    if (left > 0) this.forms.set(form, left);
    else this.forms.delete(form);
  }

  close(): void {
    this.unsubscribe();
  }
}

/** Every watched kind's fan-out, made on a kind's first watch. */
export class Subscriptions {
  private readonly byKind = new Map<string, KindFanOut>();

  constructor(
    private readonly events: EncodedEvents,
    private readonly wake: (session: WatchSession) => void,
  ) {}

  /** The kind's fan-out, subscribing to its history on first use. */
  of(history: KindHistory): KindFanOut {
    const key = kindKey(history.kind);
    let fanOut = this.byKind.get(key);
    if (fanOut === undefined) {
      fanOut = new KindFanOut(history, this.events, this.wake);
      this.byKind.set(key, fanOut);
    }
    return fanOut;
  }

  delete(session: WatchSession): void {
    this.byKind.get(kindKey(session.plan.kind))?.delete(session);
  }

  *sessions(): Iterable<WatchSession> {
    for (const fanOut of this.byKind.values()) yield* fanOut.sessions;
  }

  /** Stops every session (see WatchSession.stop) and every subscription. */
  stopAll(error: CosiError | undefined): void {
    for (const fanOut of [...this.byKind.values()]) {
      for (const s of [...fanOut.sessions]) s.stop(error);
      fanOut.close();
    }
    this.byKind.clear();
  }
}
