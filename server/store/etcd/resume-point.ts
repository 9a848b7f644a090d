// A patch of etcd3's watcher: where it resumes after a reconnect.
import type { Watcher } from 'etcd3';

/**
 * etcd3's watcher resumes after a reconnect from the revision in the last response header plus one, which can skip
 * events etcd had not sent yet (a header may be ahead of the events). The resume point is set after every response
 * to the log's own revision plus one instead. This reaches into the watcher's request, which etcd3 1.1 keeps as
 * `request.start_revision`: checked here, so a version without it fails at once rather than losing events.
 */
export function keepResumePoint(w: Watcher, next: () => number): void {
  const request = (w as unknown as { request?: { start_revision?: unknown } }).request;
  if (request === undefined || typeof request.start_revision !== 'string') {
    throw new Error('etcd3 watcher internals changed: cannot set where a watch resumes (pin etcd3 1.1)');
  }
  const set = () => {
    request.start_revision = String(next());
  };
  // Now (etcd3 set it from the creation answer's header), just before every create request etcd3 sends on a
  // reconnect, and after etcd3's own listeners, which move it to a header's revision.
  set();
  w.on('connecting', set);
  w.on('data', set);
  w.on('connected', set);
}
