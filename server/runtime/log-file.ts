// Reads a container's (or the kubelet's) log file: the last N lines without reading the file whole, then, when
// following, every new line as it is written, across the kubelet's rotation (rename + new file) and truncation.
import { constants, watch, type FSWatcher } from 'node:fs';
import { open, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { assertConfined } from './log-confinement.js';

export interface ReadLogOptions {
  /** Lines from the end to start with; negative: the whole file. */
  tailLines: number;
  follow: boolean;
  signal?: AbortSignal;
  /** Upper bound of one chunk; chunks end at a line end unless one line is longer than this. */
  chunkBytes?: number;
  /** Safety net beside inotify: how often a follower looks for changes it was not told about. */
  pollMs?: number;
  /** How long a follower still reads the file it rotated away from (the runtime may write a last line there). */
  rotationGraceMs?: number;
  /**
   * The real path of a directory every file opened must lie in (the pod logs directory). Each open, the first and
   * those after a rotation, then follows no symlink as the last component (ELOOP), does not block on a FIFO, and
   * checks where the open file really is (/proc/self/fd) by the rule of log-confinement.ts, so a rotation cannot
   * lead the follower outside.
   */
  confineTo?: string;
}

const NEWLINE = 0x0a;
const BLOCK = 64 * 1024;

/** Why a follow ended without an error: the file and its directory are gone (the container was removed). */
export class LogGone {
  constructor(readonly path: string) {}
}

/**
 * Chunks of whole lines, as stored. Memory stays bounded by one chunk plus one read: a consumer that stops pulling
 * stops the reading, and a line longer than a chunk goes out in pieces.
 */
export async function* readLog(path: string, opts: ReadLogOptions): AsyncGenerator<Buffer, LogGone | undefined> {
  const chunkBytes = Math.max(1024, opts.chunkBytes ?? BLOCK);
  const pollMs = opts.pollMs ?? 1000;
  const graceMs = opts.rotationGraceMs ?? 2000;
  let current = await openLog(path, opts.confineTo);
  let pos: number;
  try {
    pos = opts.tailLines < 0 ? 0 : await tailOffset(current.fh, current.size, opts.tailLines);
  } catch (err) {
    await current.fh.close();
    throw err;
  }
  let pending: Buffer = Buffer.alloc(0);
  /** The file rotated away from, read until its grace ends. */
  let previous: { fh: FileHandle; pos: number; until: number; pending: Buffer } | undefined;
  const waker = opts.follow ? new ChangeWaker(dirname(path), pollMs, opts.signal) : undefined;
  const buf = Buffer.allocUnsafe(chunkBytes);

  /** Complete lines out of pending (all of it when `flush`, or when one line fills a chunk). */
  function* drainPending(flush: boolean): Generator<Buffer> {
    while (pending.length > 0) {
      const window = pending.subarray(0, chunkBytes);
      const end = window.lastIndexOf(NEWLINE);
      if (end >= 0) {
        const out = Buffer.from(pending.subarray(0, end + 1));
        pending = pending.subarray(end + 1);
        yield out;
      } else if (pending.length >= chunkBytes || flush) {
        const out = Buffer.from(window);
        pending = pending.subarray(window.length);
        yield out;
      } else {
        return;
      }
    }
  }

  async function readFrom(fh: FileHandle, at: number, limit = Infinity): Promise<number> {
    const { bytesRead } = await fh.read(buf, 0, Math.min(limit, chunkBytes - Math.min(pending.length, chunkBytes - 1024)), at);
    if (bytesRead > 0) pending = pending.length === 0 ? Buffer.from(buf.subarray(0, bytesRead)) : Buffer.concat([pending, buf.subarray(0, bytesRead)]);
    return bytesRead;
  }

  // Without follow, the answer is the file as it was when asked: lines written meanwhile would make "the last N"
  // more than N.
  const endAtOpen = opts.follow ? Infinity : current.size;
  try {
    for (;;) {
      if (opts.signal?.aborted === true) return undefined;
      if (pos >= endAtOpen) {
        yield* drainPending(true);
        return undefined;
      }
      // The file rotated away from comes first: whatever the runtime wrote there (before it switched to the new
      // file) precedes every line of the new one.
      if (previous !== undefined) {
        // Its own partial line: never glued to one of the new file.
        const ofCurrent = pending;
        pending = previous.pending;
        const m = await readFrom(previous.fh, previous.pos);
        previous.pos += m;
        if (m > 0) yield* drainPending(false);
        previous.pending = pending;
        pending = ofCurrent;
        if (m > 0) continue;
        if (Date.now() > previous.until) {
          // Whatever it still holds is its last (unfinished) line.
          pending = previous.pending;
          yield* drainPending(true);
          pending = ofCurrent;
          await previous.fh.close();
          previous = undefined;
        }
      }
      const n = await readFrom(current.fh, pos, endAtOpen - pos);
      pos += n;
      if (n > 0) {
        yield* drainPending(false);
        continue;
      }
      // At the end of the file.
      if (waker === undefined) {
        yield* drainPending(true);
        return undefined;
      }
      const onDisk = await stat(path).catch((err: NodeJS.ErrnoException) => {
        // Gone (ENOTDIR: its directory was replaced by a file).
        if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
        throw err;
      });
      if (onDisk !== undefined && onDisk.ino !== current.ino) {
        // Rotated: what the old file holds was read above; the rest of the stream is the new file.
        yield* drainPending(true);
        await previous?.fh.close();
        previous = { fh: current.fh, pos, until: Date.now() + graceMs, pending: Buffer.alloc(0) };
        current = await openLog(path, opts.confineTo);
        pos = 0;
        continue;
      }
      if (onDisk !== undefined && onDisk.size < pos) {
        // Truncated in place: start again from its beginning.
        pending = Buffer.alloc(0);
        pos = 0;
        continue;
      }
      if (onDisk === undefined && !(await isDirectory(dirname(path)))) {
        // The container's log directory is gone: nothing more will be written here.
        yield* drainPending(true);
        return new LogGone(path);
      }
      await waker.next();
    }
  } finally {
    waker?.close();
    await current.fh.close().catch(() => {});
    await previous?.fh.close().catch(() => {});
  }
}

async function openLog(path: string, confineTo: string | undefined): Promise<{ fh: FileHandle; ino: number; size: number }> {
  const fh = await open(path, confineTo === undefined ? 'r' : constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const s = await fh.stat();
    if (!s.isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: 'EISDIR' });
    if (confineTo !== undefined) {
      const real = await readlink(`/proc/self/fd/${fh.fd}`).catch(() => realpath(path));
      assertConfined(real, confineTo, path);
    }
    return { fh, ino: s.ino, size: s.size };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * The offset where the last `lines` lines start, found by reading blocks backwards from the end: a 1 GiB file
 * costs a few blocks, not a gigabyte. A final line without its newline counts as a line.
 */
export async function tailOffset(fh: FileHandle, size: number, lines: number): Promise<number> {
  if (lines <= 0) return size;
  const block = Buffer.allocUnsafe(BLOCK);
  let end = size;
  let found = 0;
  let skipFinal = true;
  while (end > 0) {
    const start = Math.max(0, end - BLOCK);
    const { bytesRead } = await fh.read(block, 0, end - start, start);
    for (let i = bytesRead - 1; i >= 0; i--) {
      if (block[i] !== NEWLINE) {
        skipFinal = false;
        continue;
      }
      // The newline that ends the file ends the last line; it does not start one.
      if (skipFinal && start + i === size - 1) {
        skipFinal = false;
        continue;
      }
      if (++found === lines) return start + i + 1;
    }
    end = start;
  }
  return 0;
}

async function isDirectory(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

/** Resolves next() on any change in a directory (inotify), after pollMs at the latest, or on abort. */
class ChangeWaker {
  private watcher: FSWatcher | undefined;
  private changed = false;
  private wake: (() => void) | undefined;
  private readonly onAbort = () => this.fire();

  constructor(
    dir: string,
    private readonly pollMs: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    try {
      this.watcher = watch(dir, { persistent: false }, () => this.fire());
      // A directory removed under the watcher: the poll carries on alone.
      this.watcher.on('error', () => this.closeWatcher());
    } catch {
      this.watcher = undefined;
    }
    signal?.addEventListener('abort', this.onAbort);
  }

  next(): Promise<void> {
    if (this.changed || this.signal?.aborted === true) {
      this.changed = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.fire(), this.pollMs);
      this.wake = () => {
        clearTimeout(timer);
        this.changed = false;
        resolve();
      };
    });
  }

  close(): void {
    this.closeWatcher();
    this.signal?.removeEventListener('abort', this.onAbort);
    this.fire();
  }

  private fire(): void {
    this.changed = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private closeWatcher(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }
}
