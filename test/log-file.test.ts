// readLog and tailOffset on real files in a temporary folder (no container runtime): the last N lines across block
// boundaries, long and binary lines as stored, and a follower that lives through truncation, rotation (with the
// runtime's last line in the old file), its directory vanishing, an abort, and a consumer that stops pulling.
// Waits are for events (a chunk arriving, the generator ending) with bounded deadlines, never sleeps.
import { appendFileSync } from 'node:fs';
import fc from 'fast-check';
import { appendFile, mkdir, mkdtemp, open, realpath, rename, rm, symlink, truncate, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LogGone, readLog, tailOffset, type ReadLogOptions } from '../server/runtime/log-file.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
/** Buffers in use after a full collection (ArrayBuffers are swept after the GC itself: let that run too). */
async function buffersInUse(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
  return process.memoryUsage().arrayBuffers;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const NL = 0x0a;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cosi-logfile-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Every chunk and the generator's return value (a non-following read). */
async function readAll(path: string, opts: Partial<ReadLogOptions> = {}): Promise<{ chunks: Buffer[]; data: Buffer; ret: LogGone | undefined }> {
  const gen = readLog(path, { tailLines: -1, follow: false, ...opts });
  const chunks: Buffer[] = [];
  for (;;) {
    const r = await gen.next();
    if (r.done === true) return { chunks, data: Buffer.concat(chunks), ret: r.value };
    chunks.push(r.value);
  }
}

/** The reference: the last `n` lines of `content` (a final line without its newline counts; n < 0: all). */
function lastLines(content: Buffer, n: number): Buffer {
  if (n < 0) return content;
  if (n === 0) return Buffer.alloc(0);
  const starts = [0];
  for (let i = 0; i < content.length; i++) if (content[i] === NL && i + 1 < content.length) starts.push(i + 1);
  if (content.length === 0) return content;
  return content.subarray(starts[Math.max(0, starts.length - n)] ?? 0);
}

/** Every chunk but the last ends a line, unless it is a full chunk of one longer line. */
function expectWholeLines(chunks: Buffer[], chunkBytes: number): void {
  chunks.forEach((c, i) => {
    expect(c.length).toBeGreaterThan(0);
    expect(c.length).toBeLessThanOrEqual(chunkBytes);
    if (i < chunks.length - 1) expect(c.at(-1) === NL || c.length === chunkBytes, `chunk ${i} of ${chunks.length} (${c.length} bytes)`).toBe(true);
  });
}

/** A follower pulling continuously in the background; `until` waits for what it has seen, with a deadline. */
function follow(path: string, opts: Partial<ReadLogOptions> = {}) {
  const abort = new AbortController();
  const gen = readLog(path, { tailLines: -1, follow: true, signal: abort.signal, ...opts });
  const chunks: Buffer[] = [];
  let ended: { value: LogGone | undefined } | undefined;
  let failed: unknown;
  let wake: () => void = () => {};
  const pump = (async () => {
    try {
      for (;;) {
        const r = await gen.next();
        if (r.done === true) {
          ended = { value: r.value };
          return;
        }
        chunks.push(r.value);
        wake();
      }
    } catch (err) {
      failed = err;
    } finally {
      wake();
    }
  })();
  const text = () => Buffer.concat(chunks).toString('latin1');
  return {
    chunks,
    text,
    get ended() {
      return ended;
    },
    /** Resolves once `pred` holds; fails if the follower ends or throws first, or after `ms`. */
    async until(pred: () => boolean, what: string, ms = 20_000): Promise<void> {
      const deadline = Date.now() + ms;
      while (!pred()) {
        if (failed !== undefined) throw failed;
        if (ended !== undefined) throw new Error(`the follower ended before ${what}; it saw ${JSON.stringify(text().slice(-300))}`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out waiting for ${what}; the follower saw ${JSON.stringify(text().slice(-300))}`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    },
    /** Waits for the generator to end by itself (no abort). */
    async end(ms = 20_000): Promise<LogGone | undefined> {
      await this.until(() => ended !== undefined || failed !== undefined, 'the end', ms).catch((err: unknown) => {
        if (ended === undefined) throw err;
      });
      if (failed !== undefined) throw failed;
      return ended?.value;
    },
    async stop(): Promise<void> {
      abort.abort();
      await pump;
      if (failed !== undefined) throw failed;
    },
  };
}

const numbered = (from: number, to: number, prefix = 'line') => Array.from({ length: to - from + 1 }, (_, i) => `${prefix} ${from + i}\n`).join('');
const numbersIn = (text: string, prefix = 'line') => [...text.matchAll(new RegExp(`^${prefix} (\\d+)$`, 'gm'))].map((m) => Number(m[1]));
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Counts what every FileHandle in this process reads (readLog and tailOffset read through FileHandle.read). */
async function countReads(): Promise<{ bytes: () => number; calls: () => number; restore: () => void }> {
  const probe = await open(join(dir, '.probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { read: FileHandle['read'] };
  await probe.close();
  const original = proto.read;
  let bytes = 0;
  let calls = 0;
  proto.read = async function (this: FileHandle, ...args: unknown[]) {
    const r = await (original as (...a: unknown[]) => Promise<{ bytesRead: number }>).apply(this, args);
    calls++;
    bytes += r.bytesRead;
    return r;
  } as FileHandle['read'];
  return { bytes: () => bytes, calls: () => calls, restore: () => void (proto.read = original) };
}

describe('the last N lines', () => {
  it('of small files, with and without a final newline, N larger than the file, N = 0, N < 0', async () => {
    const cases: [string, number, string][] = [
      ['a\nb\nc\n', 1, 'c\n'],
      ['a\nb\nc\n', 2, 'b\nc\n'],
      ['a\nb\nc', 1, 'c'],
      ['a\nb\nc', 2, 'b\nc'],
      ['a\nb\nc\n', 3, 'a\nb\nc\n'],
      ['a\nb\nc\n', 10, 'a\nb\nc\n'],
      ['a\nb\nc', 10, 'a\nb\nc'],
      ['a\nb\nc\n', 0, ''],
      ['a\nb\nc\n', -1, 'a\nb\nc\n'],
      ['a\nb\nc', -5, 'a\nb\nc'],
      ['\n\n\n', 2, '\n\n'],
      ['a\n\n', 1, '\n'],
      ['no newline at all', 1, 'no newline at all'],
      ['', 3, ''],
      ['', -1, ''],
      ['\n', 1, '\n'],
    ];
    for (const [content, n, want] of cases) {
      const path = join(dir, 'small.log');
      await writeFile(path, content);
      const { data, chunks, ret } = await readAll(path, { tailLines: n });
      expect(data.toString(), `${JSON.stringify(content)} tail ${n}`).toBe(want);
      expect(ret).toBeUndefined();
      expectWholeLines(chunks, BLOCK);
      expect(Buffer.from(want).equals(lastLines(Buffer.from(content), n)), 'the reference agrees').toBe(true);
    }
  });

  it('of multi-block files: lines that span the 64 KiB blocks, newlines exactly at block edges', async () => {
    const path = join(dir, 'blocks.log');
    const line = (len: number, c: string) => c.repeat(len - 1) + '\n';
    const files = [
      // A newline exactly at size - BLOCK, one before and one after it.
      Buffer.from(line(1000, 'a') + line(BLOCK, 'b') + line(10, 'c')),
      Buffer.from(line(BLOCK, 'a') + line(BLOCK, 'b')),
      Buffer.from(line(BLOCK + 1, 'a') + line(BLOCK - 1, 'b') + 'tail without newline'),
      Buffer.from(line(3 * BLOCK + 17, 'a') + line(5, 'b') + line(2 * BLOCK, 'c')),
      Buffer.from(line(5, 'x').repeat(40_000)),
      Buffer.from('z'.repeat(5 * BLOCK)),
    ];
    for (const content of files) {
      await writeFile(path, content);
      const lines = lastLines(content, -1).toString().split('\n').length;
      for (const n of [0, 1, 2, 3, 100, lines - 1, lines, lines + 1, 1_000_000, -1]) {
        for (const chunkBytes of [1024, BLOCK]) {
          const { data, chunks } = await readAll(path, { tailLines: n, chunkBytes });
          expect(data.equals(lastLines(content, n)), `${content.length} bytes, tail ${n}, chunks of ${chunkBytes}`).toBe(true);
          expectWholeLines(chunks, chunkBytes);
        }
      }
    }
  });

  it('agrees with the reference on random files (property)', async () => {
    const path = join(dir, 'random.log');
    const lineArb = fc.oneof(
      { arbitrary: fc.nat(80), weight: 6 },
      { arbitrary: fc.integer({ min: BLOCK - 3, max: BLOCK + 3 }), weight: 2 },
      { arbitrary: fc.integer({ min: 100_000, max: 200_000 }), weight: 1 },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(lineArb, { maxLength: 30 }), fc.boolean(), fc.integer({ min: -2, max: 40 }), fc.constantFrom(1024, 4096, BLOCK), async (lengths, finalNewline, n, chunkBytes) => {
        const body = lengths.map((len, i) => String.fromCharCode(97 + (i % 26)).repeat(len)).join('\n');
        const content = Buffer.from(finalNewline && body.length > 0 ? `${body}\n` : body);
        await writeFile(path, content);
        const { data, chunks } = await readAll(path, { tailLines: n, chunkBytes });
        expect(data.equals(lastLines(content, n))).toBe(true);
        expectWholeLines(chunks, chunkBytes);
      }),
      { numRuns: 60, seed: 10 },
    );
  });

  it('of a 200 MiB file costs a few blocks, not the file', async () => {
    const path = join(dir, 'big.log');
    const fh = await open(path, 'w');
    await fh.truncate(200 * MiB); // sparse: nothing on disk
    await fh.write(numbered(1, 50), 200 * MiB);
    await fh.close();
    const reads = await countReads();
    try {
      const { data } = await readAll(path, { tailLines: 10 });
      expect(numbersIn(data.toString())).toEqual(range(41, 50));
      expect(reads.bytes()).toBeLessThan(2 * BLOCK);
      const h = await open(path, 'r');
      const offset = await tailOffset(h, (await h.stat()).size, 3);
      await h.close();
      expect(offset).toBe(200 * MiB + numbered(1, 47).length);
    } finally {
      reads.restore();
    }
  });
});

describe('confined to a directory (the pod logs directory)', () => {
  /** pods/default_web_uid/web/0.log inside, and outside/ beside pods/ holding the canary. */
  async function layout() {
    const pods = join(dir, 'pods');
    const ctrDir = join(pods, 'default_web_uid', 'web');
    const outside = join(dir, 'outside');
    await mkdir(ctrDir, { recursive: true });
    await mkdir(outside);
    const canary = 'CANARY the secret outside\n';
    await writeFile(join(outside, '0.log'), canary);
    const path = join(ctrDir, '0.log');
    await writeFile(path, numbered(1, 3));
    return { pods: await realpath(pods), ctrDir, outside, canary, path };
  }

  // The consumer holds still while the files are swapped (the generator reads only when pulled), so the follower
  // sees the swap whole, never the moment between the rename and the new symlink.
  it('a rotation that puts a symlink to a file outside in place of the log: refused, the outside file never served', async () => {
    const { pods, outside, canary, path } = await layout();
    const gen = readLog(path, { tailLines: -1, follow: true, confineTo: pods, pollMs: 100 });
    const first = await gen.next();
    expect(first.value?.toString()).toBe(numbered(1, 3));
    await rename(path, `${path}.20250101-000000`);
    await symlink(join(outside, '0.log'), path);
    expect((await readAll(join(outside, '0.log'))).data.toString()).toBe(canary);
    await expect(gen.next()).rejects.toMatchObject({ code: 'ELOOP' });
  });

  it('a rotation that swaps the directory for a symlink to one outside: refused (the open file itself is checked)', async () => {
    const { pods, ctrDir, outside, path } = await layout();
    const gen = readLog(path, { tailLines: -1, follow: true, confineTo: pods, pollMs: 100 });
    const first = await gen.next();
    expect(first.value?.toString()).toBe(numbered(1, 3));
    await rename(ctrDir, `${ctrDir}.old`);
    await symlink(outside, ctrDir);
    await expect(gen.next()).rejects.toMatchObject({ kind: 'permission-denied' });
  });

  it('refused from the start when the path leads outside; a FIFO does not block the open', async () => {
    const { pods, outside, path } = await layout();
    await rm(path);
    await symlink(join(outside, '0.log'), path);
    await expect(readAll(path, { confineTo: pods })).rejects.toMatchObject({ code: 'ELOOP' });
    await expect(readAll(join(outside, '0.log'), { confineTo: pods })).rejects.toMatchObject({ kind: 'permission-denied' });
    const { execFileSync } = await import('node:child_process');
    const fifo = join(pods, 'default_web_uid', 'web', 'fifo.log');
    execFileSync('mkfifo', [fifo]);
    await expect(readAll(fifo, { confineTo: pods })).rejects.toMatchObject({ code: 'EISDIR' });
  });

  it('unconfined (the kubelet log named by --kubelet-log): a symlink is followed, as configured', async () => {
    const { outside, path } = await layout();
    const link = join(dir, 'kubelet.log');
    await symlink(path, link);
    expect((await readAll(link)).data.toString()).toBe(numbered(1, 3));
    expect((await readAll(join(outside, '0.log'))).data.toString()).toContain('CANARY');
  });
});

describe('lines as stored', () => {
  it('a 1 MiB line without a newline inside comes out in chunks of at most chunkBytes, identical when joined', async () => {
    const path = join(dir, 'long.log');
    const long = Buffer.alloc(MiB, 'x');
    const content = Buffer.concat([Buffer.from('before\n'), long, Buffer.from('\nafter\n')]);
    await writeFile(path, content);
    for (const chunkBytes of [1024, 10_000, BLOCK, undefined]) {
      const { chunks, data } = await readAll(path, chunkBytes === undefined ? {} : { chunkBytes });
      expect(data.equals(content)).toBe(true);
      expectWholeLines(chunks, chunkBytes ?? BLOCK);
      expect(chunks.length).toBeGreaterThanOrEqual(MiB / (chunkBytes ?? BLOCK));
    }
    // Tail 2 starts at the long line.
    expect((await readAll(path, { tailLines: 2 })).data.equals(Buffer.concat([long, Buffer.from('\nafter\n')]))).toBe(true);
  });

  it('binary lines (NUL, every byte value, invalid UTF-8) are byte-identical', async () => {
    const path = join(dir, 'binary.log');
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const content = Buffer.concat([
      Buffer.from([0x00, 0x00, NL]),
      all,
      Buffer.from([NL, 0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82, NL, 0xed, 0xa0, 0x80, NL]),
      Buffer.from('2025-01-01T00:00:00Z stdout F \u0000\u001b[31mred\u001b[0m \uFFFD\n'),
      Buffer.alloc(3 * BLOCK, 0x00),
      Buffer.from([NL, 0x80]),
    ]);
    await writeFile(path, content);
    for (const n of [-1, 1, 2, 3, 5, 100]) {
      for (const chunkBytes of [1024, BLOCK]) {
        const { data, chunks } = await readAll(path, { tailLines: n, chunkBytes });
        expect(data.equals(lastLines(content, n)), `tail ${n}, chunks of ${chunkBytes}`).toBe(true);
        expectWholeLines(chunks, chunkBytes);
      }
    }
  });

  it('a missing file and a directory are errors the service can name', async () => {
    await expect(readAll(join(dir, 'absent.log'))).rejects.toMatchObject({ code: 'ENOENT' });
    await mkdir(join(dir, 'a-dir'));
    await expect(readAll(join(dir, 'a-dir'))).rejects.toMatchObject({ code: 'EISDIR' });
  });
});

describe('following', () => {
  it('a 1 MiB line written in pieces arrives in chunks, identical when joined; a partial line waits for its end', async () => {
    const path = join(dir, '0.log');
    await writeFile(path, 'first\n');
    const f = follow(path);
    try {
      // Following once the file's content has arrived.
      await f.until(() => f.text() === 'first\n', 'the first line');
      await appendFile(path, 'start\n');
      await f.until(() => f.text() === 'first\nstart\n', 'the second line');
      const long = Buffer.alloc(MiB, 'y');
      for (let at = 0; at < long.length; at += 100_000) await appendFile(path, long.subarray(at, at + 100_000));
      await appendFile(path, '\nend\n');
      await f.until(() => f.text().endsWith('\nend\n'), 'the end of the long line');
      expect(Buffer.concat(f.chunks).equals(Buffer.concat([Buffer.from('first\nstart\n'), long, Buffer.from('\nend\n')]))).toBe(true);
      expectWholeLines(f.chunks, BLOCK);
      // A line being written is not served half: it comes whole once its newline is there.
      const before = f.chunks.length;
      await appendFile(path, 'half a li');
      await appendFile(path, 'ne\n');
      await f.until(() => f.text().endsWith('end\nhalf a line\n'), 'the completed line');
      expect(Buffer.concat(f.chunks.slice(before)).toString()).toBe('half a line\n');
    } finally {
      await f.stop();
    }
  });

  it('truncation in place: continues from the new start, nothing repeated, no crash', async () => {
    const path = join(dir, '0.log');
    await writeFile(path, numbered(1, 50, 'before'));
    const f = follow(path);
    try {
      await f.until(() => numbersIn(f.text(), 'before').length === 50, 'the 50 lines');
      // Truncated to nothing, then less written than was there: the reader must start over, not skip.
      await truncate(path, 0);
      await appendFile(path, 'after 1\n');
      await f.until(() => f.text().includes('after 1\n'), 'the first line after the truncation');
      await appendFile(path, numbered(2, 20, 'after'));
      await f.until(() => numbersIn(f.text(), 'after').length >= 20, 'the lines after the truncation');
      expect(numbersIn(f.text(), 'before')).toEqual(range(1, 50));
      expect(numbersIn(f.text(), 'after')).toEqual(range(1, 20));
      // Truncated again mid-stream, to a few bytes.
      await truncate(path, 0);
      await appendFile(path, 'again 1\n');
      await f.until(() => f.text().endsWith('again 1\n'), 'the line after the second truncation');
      expect(f.ended).toBeUndefined();
    } finally {
      await f.stop();
    }
  });

  it('rotation by rename + new file, five times: no line lost or repeated, in order', async () => {
    const path = join(dir, '0.log');
    await writeFile(path, numbered(1, 10));
    const f = follow(path);
    try {
      let last = 10;
      await f.until(() => numbersIn(f.text()).length === last, `lines 1..${last}`);
      for (let r = 1; r <= 5; r++) {
        // The kubelet renames; the runtime opens a new file and writes on.
        await rename(path, `${path}.2025010${r}-000000`);
        await writeFile(path, numbered(last + 1, last + 7));
        last += 7;
        await appendFile(path, numbered(last + 1, last + 3));
        last += 3;
        await f.until(() => numbersIn(f.text()).length >= last, `lines up to ${last} after rotation ${r}`);
      }
      expect(numbersIn(f.text())).toEqual(range(1, last));
    } finally {
      await f.stop();
    }
  });

  it("rotation: a line written to the old file after the rename is read, before and after the new file appears (the grace read)", async () => {
    const path = join(dir, '0.log');
    const rotated = `${path}.20250101-000000`;
    await writeFile(path, numbered(1, 5));
    const f = follow(path, { rotationGraceMs: 60_000 });
    try {
      await f.until(() => numbersIn(f.text()).length === 5, 'lines 1..5');
      // Renamed away, and the runtime still writes to its open file before reopening: read from the old file.
      await rename(path, rotated);
      await appendFile(rotated, numbered(6, 6));
      await f.until(() => numbersIn(f.text()).includes(6), 'line 6, written to the renamed file');
      // The new file appears; the follower has switched once it sees a line of it.
      await writeFile(path, numbered(7, 7));
      await f.until(() => numbersIn(f.text()).includes(7), 'line 7, the first of the new file');
      // The old file gets one more line after the switch: read within the grace period.
      await appendFile(rotated, numbered(8, 8));
      await f.until(() => numbersIn(f.text()).includes(8), 'line 8, written to the old file after the switch');
      await appendFile(path, numbered(9, 12));
      await f.until(() => numbersIn(f.text()).length >= 12, 'lines up to 12');
      expect(numbersIn(f.text())).toEqual(range(1, 12));
    } finally {
      await f.stop();
    }
  });

  it('rotation: the last line the runtime wrote to the old file comes before the first line of the new one', async () => {
    const path = join(dir, '0.log');
    const rotated = `${path}.20250101-000000`;
    await writeFile(path, numbered(1, 3));
    const f = follow(path, { rotationGraceMs: 60_000 });
    try {
      await f.until(() => numbersIn(f.text()).length === 3, 'lines 1..3');
      await rename(path, rotated);
      // The new file appears (the runtime reopened it) and the follower switches: it has read the marker.
      await writeFile(path, 'marker\n');
      await f.until(() => f.text().includes('marker'), 'the marker, the first line of the new file');
      // Both written before the follower runs again: line 4 went to the old file before the runtime switched to the
      // new one, where line 5 went.
      appendFileSync(rotated, numbered(4, 4));
      appendFileSync(path, numbered(5, 5));
      await f.until(() => numbersIn(f.text()).length === 5, 'lines 4 and 5');
      expect(numbersIn(f.text())).toEqual(range(1, 5));
    } finally {
      await f.stop();
    }
  });

  it("rotation: the old file's last line is never glued to the new file's unfinished line", async () => {
    const path = join(dir, '0.log');
    const rotated = `${path}.20250101-000000`;
    await writeFile(path, 'a1\n');
    const f = follow(path, { rotationGraceMs: 60_000 });
    try {
      await f.until(() => f.text() === 'a1\n', 'a1');
      await rename(path, rotated);
      await writeFile(path, 'marker\n');
      await f.until(() => f.text().includes('marker\n'), 'the marker of the new file');
      // The new file's line is half written when the old file gets its last line.
      appendFileSync(path, 'new-partial');
      appendFileSync(rotated, 'old-last\n');
      await f.until(() => f.text().includes('old-last\n'), "the old file's last line");
      appendFileSync(path, '-end\n');
      await f.until(() => f.text().includes('-end\n'), 'the end of the new line');
      expect(f.text().split('\n').filter((l) => l !== '')).toEqual(expect.arrayContaining(['a1', 'marker', 'old-last', 'new-partial-end']));
      expect(f.text()).not.toContain('new-partialold-last');
    } finally {
      await f.stop();
    }
  });

  it('its directory removed mid-follow: the generator returns a LogGone (no throw), with the last partial line', async () => {
    const logDir = join(dir, 'default_web_uid', 'web');
    await mkdir(logDir, { recursive: true });
    const path = join(logDir, '0.log');
    await writeFile(path, numbered(1, 3));
    const f = follow(path);
    try {
      await f.until(() => numbersIn(f.text()).length === 3, 'lines 1..3');
      await appendFile(path, 'no newline yet');
      await rm(join(dir, 'default_web_uid'), { recursive: true });
      const ret = await f.end();
      expect(ret).toBeInstanceOf(LogGone);
      expect((ret as LogGone).path).toBe(path);
      expect(f.text()).toBe(`${numbered(1, 3)}no newline yet`);
    } finally {
      await f.stop();
    }
  });

  it('its directory replaced by a file mid-follow: a LogGone too, not an error', async () => {
    const logDir = join(dir, 'default_web_uid');
    await mkdir(logDir);
    const path = join(logDir, '0.log');
    await writeFile(path, numbered(1, 2));
    const f = follow(path, { pollMs: 100 });
    try {
      await f.until(() => numbersIn(f.text()).length === 2, 'lines 1..2');
      await rm(logDir, { recursive: true });
      await writeFile(logDir, 'a file where the directory was');
      const ret = await f.end();
      expect(ret).toBeInstanceOf(LogGone);
    } finally {
      await f.stop();
    }
  });

  it('the file removed but its directory kept: waits (a runtime may recreate it), ends on abort', async () => {
    const path = join(dir, '0.log');
    await writeFile(path, numbered(1, 2));
    const f = follow(path, { pollMs: 50 });
    try {
      await f.until(() => numbersIn(f.text()).length === 2, 'lines 1..2');
      await rm(path);
      await writeFile(path, numbered(3, 4));
      await f.until(() => numbersIn(f.text()).length === 4, 'lines 3..4 from the recreated file');
      expect(f.ended).toBeUndefined();
    } finally {
      await f.stop();
    }
    expect(f.ended).toEqual({ value: undefined });
  });

  it('an abort ends a waiting follower promptly (not at its next poll)', async () => {
    const path = join(dir, '0.log');
    await writeFile(path, 'one\n');
    const abort = new AbortController();
    const gen = readLog(path, { tailLines: -1, follow: true, signal: abort.signal, pollMs: 600_000 });
    expect((await gen.next()).value?.toString()).toBe('one\n');
    const waiting = gen.next();
    const t0 = Date.now();
    abort.abort();
    expect(await waiting).toEqual({ done: true, value: undefined });
    expect(Date.now() - t0).toBeLessThan(5_000);
    // An already aborted signal: nothing is read.
    const gen2 = readLog(path, { tailLines: -1, follow: true, signal: abort.signal });
    expect(await gen2.next()).toEqual({ done: true, value: undefined });
  });

  it('a consumer that stops pulling stops the reading: at most a chunk read ahead, memory flat, nothing lost on resume', async () => {
    const path = join(dir, 'big.log');
    const size = 200 * MiB;
    const fh = await open(path, 'w');
    await fh.truncate(size); // 200 MiB of NUL bytes, sparse
    await fh.write(`\n${numbered(1, 5)}`, size);
    await fh.close();
    const expectedTotal = size + 1 + numbered(1, 1000).length;
    const reads = await countReads();
    try {
      const baseline = await buffersInUse();
      const abort = new AbortController();
      const gen = readLog(path, { tailLines: -1, follow: true, signal: abort.signal });
      const first = await gen.next();
      if (first.done === true) throw new Error('nothing read');
      expect(first.value.length).toBe(BLOCK);
      const readAtPause = reads.bytes();
      expect(readAtPause).toBeLessThanOrEqual(2 * BLOCK);
      // Paused: give a reader that would read ahead every chance to (timers, I/O, microtasks), then look.
      for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 10));
      expect(reads.bytes()).toBe(readAtPause);
      // Lines appended while paused are all there on resume, in order.
      await appendFile(path, numbered(6, 1000));
      expect((await buffersInUse()) - baseline).toBeLessThan(16 * MiB);
      // Resume: the whole file streams through with memory flat (sampled every 32 MiB).
      let total = first.value.length;
      const withLines: Buffer[] = [];
      let peak = 0;
      let sampledAt = 0;
      while (total < expectedTotal) {
        const r = await gen.next();
        if (r.done === true) throw new Error('the follower ended');
        total += r.value.length;
        if (r.value.includes(NL)) withLines.push(r.value);
        if (total - sampledAt > 32 * MiB) {
          sampledAt = total;
          peak = Math.max(peak, (await buffersInUse()) - baseline);
        }
      }
      abort.abort();
      expect(await gen.next()).toEqual({ done: true, value: undefined });
      expect(total).toBe(expectedTotal);
      expect(numbersIn(Buffer.concat(withLines).toString('latin1'))).toEqual(range(1, 1000));
      // Flat: far below the 200 MiB that went through.
      expect(peak).toBeLessThan(16 * MiB);
      // Read once, in chunks: no byte read twice.
      expect(reads.bytes()).toBeLessThan(expectedTotal + 2 * BLOCK);
    } finally {
      reads.restore();
    }
  });
});
