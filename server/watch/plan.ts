// Turns a WatchRequest into a validated plan (every set-up error becomes the call's status), and says which changes
// a watcher of that plan gets, and as what.
import { CosiError } from '../../shared/errors.js';
import type { Kind } from '../../shared/resource.js';
import { EventType, type WireWatchRequest } from '../../shared/wire.js';
import { compileSelector, type Selector } from '../store/query.js';
import type { Change, KindHistory } from '../store/store.js';
import { decodeBookmark, type Position } from './bookmark.js';
import type { EventForm } from './frames.js';

export interface WatchPlan {
  readonly kind: Kind;
  /** Set: watch this one resource. */
  readonly id: string | undefined;
  readonly selector: Selector;
  readonly bootstrapContents: boolean;
  readonly tailEvents: number;
  readonly aggregated: boolean;
  readonly bootstrapBookmark: boolean;
  readonly resumeFrom: Position | undefined;
  /** 0: no BOOTSTRAPPED or ERRORED events (NOOP still comes, as from the reference). */
  readonly apiVersion: number;
  /** How events are encoded (request metadata `cosi-event-form`; default full). */
  readonly form: EventForm;
  /** NOOP bookmarks while idle (request metadata `cosi-idle-bookmarks: on`; the reference never sends them). */
  readonly idleBookmarks: boolean;
}

export const MAX_TAIL_EVENTS = 100_000;

export function planWatch(req: WireWatchRequest, instance: string): WatchPlan {
  const o = req.options;
  const bootstrapContents = o?.bootstrapContents ?? false;
  const tailEvents = o?.tailEvents ?? 0;
  const bookmark = o?.startFromBookmark;
  const hasBookmark = bookmark != null;
  const labelQueries = o?.labelQuery ?? [];
  const idQuery = o?.idQuery;
  if (tailEvents < 0) throw new CosiError('invalid-argument', `tail_events must not be negative (got ${tailEvents})`);
  if (tailEvents > MAX_TAIL_EVENTS) throw new CosiError('invalid-argument', `tail_events ${tailEvents} exceeds the limit of ${MAX_TAIL_EVENTS}`);
  if (req.apiVersion < 0) throw new CosiError('invalid-argument', `api_version must not be negative (got ${req.apiVersion})`);
  if (tailEvents > 0 && hasBookmark) throw new CosiError('invalid-argument', 'tail_events and start_from_bookmark are mutually exclusive');
  if (bootstrapContents && (tailEvents > 0 || hasBookmark)) {
    throw new CosiError('invalid-argument', 'bootstrap_contents cannot be combined with tail_events or start_from_bookmark');
  }
  if (req.id !== undefined) {
    if (bootstrapContents) throw new CosiError('unimplemented', 'bootstrap_contents is not supported when watching a single resource (the first event is its current state)');
    if (labelQueries.length > 0 || (idQuery?.regexp ?? '') !== '') {
      throw new CosiError('unimplemented', 'label and ID queries are not supported when watching a single resource');
    }
  }
  return {
    kind: { namespace: req.namespace, type: req.type },
    id: req.id,
    selector: compileSelector(labelQueries, idQuery),
    bootstrapContents,
    tailEvents,
    aggregated: o?.aggregated ?? false,
    bootstrapBookmark: o?.bootstrapBookmark ?? false,
    resumeFrom: hasBookmark ? decodeBookmark(instance, bookmark) : undefined,
    apiVersion: req.apiVersion,
    form: 'full',
    idleBookmarks: false,
  };
}

/** api_version 0 clients get no BOOTSTRAPPED or ERRORED events. */
export function sendsAll(plan: WatchPlan): boolean {
  return plan.apiVersion >= 1;
}

/** How a change reaches a watcher of this plan, if at all (label queries turn updates into creates/destroys). */
export function deliveredAs(plan: WatchPlan, c: Change): EventType | undefined {
  if (plan.id !== undefined && c.resource.metadata.id !== plan.id) return undefined;
  // A value that does not decode is reported, not skipped; api_version 0 clients cannot be told (cosid logs it).
  if (c.error !== undefined) return sendsAll(plan) ? EventType.ERRORED : undefined;
  const sel = plan.selector;
  if (c.type === 'created') return sel.matches(c.resource.metadata) ? EventType.CREATED : undefined;
  if (c.type === 'destroyed') return sel.matches(c.resource.metadata) ? EventType.DESTROYED : undefined;
  if (sel.everything) return EventType.UPDATED;
  const before = c.old !== undefined && sel.matches(c.old.metadata);
  const after = sel.matches(c.resource.metadata);
  if (before && after) return EventType.UPDATED;
  if (before) return EventType.DESTROYED;
  if (after) return EventType.CREATED;
  return undefined;
}

/** The revision a watch starts from so that the last `tailEvents` changes it delivers (before `now`) are replayed. */
export function tailStart(plan: WatchPlan, history: KindHistory, now: number): number {
  const revisions: number[] = [];
  let after = history.oldestRevision;
  for (;;) {
    const batch = history.readChanges(after, 4096);
    for (const c of batch.changes) if (deliveredAs(plan, c) !== undefined) revisions.push(c.revision);
    if (batch.through >= now || batch.changes.length === 0) break;
    after = batch.through;
  }
  const firstKept = revisions[Math.max(0, revisions.length - plan.tailEvents)];
  return firstKept === undefined ? now : firstKept - 1;
}
