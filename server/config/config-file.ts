// Writing the machine config file so that a crash at any instant leaves the old file or the new one, never a torn
// one: the new text goes to a temporary file in the same folder (same file system, so the rename is atomic), is
// flushed to disk, renamed over the file, and the folder is flushed so the rename itself survives a power loss.
// The file keeps its mode (and, when cosid may, its owner). A symlink to the config stays a symlink: its target is
// replaced.
import { randomBytes } from 'node:crypto';
import { open, readdir, realpath, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CosiError } from '../../shared/errors.js';

/** A new config text on disk beside the file, not yet in its place. */
export interface PreparedWrite {
  /** Puts the new text in place. Throws (the file is then unchanged) when the rename fails. */
  commit(): Promise<{ folderSynced: boolean }>;
  /** Removes the temporary file; the config file is untouched. */
  discard(): Promise<void>;
}

const TEMP_SUFFIX = '.cosid.tmp';

/** `.machine.yaml.3f9a0c1d.cosid.tmp`: hidden, named after the file (cut short), and recognizable as cosid's. */
function tempPrefix(target: string): string {
  return `.${basename(target).slice(0, 100)}.`;
}

/**
 * Writes `text` to a temporary file beside `path` and flushes it. Nothing the config file's readers see changes
 * yet; a folder cosid cannot write is found here, before anything is applied (failed-precondition).
 */
export async function prepareWrite(path: string, text: string): Promise<PreparedWrite> {
  let target: string;
  let mode: number;
  let owner: { uid: number; gid: number };
  try {
    target = await realpath(path);
    const st = await stat(target);
    mode = st.mode & 0o7777;
    owner = { uid: st.uid, gid: st.gid };
  } catch (err) {
    throw notWritable(path, 'cannot read it', err);
  }
  const folder = dirname(target);
  const temp = join(folder, `${tempPrefix(target)}${randomBytes(4).toString('hex')}${TEMP_SUFFIX}`);
  let fh;
  try {
    fh = await open(temp, 'wx', mode);
  } catch (err) {
    throw notWritable(path, `cannot create a file in ${folder}`, err);
  }
  try {
    await fh.writeFile(text, 'utf8');
    // open() applied the umask; the new file gets exactly the old one's mode.
    await fh.chmod(mode);
    if (process.getuid?.() === 0) await fh.chown(owner.uid, owner.gid);
    await fh.sync();
    await fh.close();
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(temp).catch(() => {});
    throw notWritable(path, `cannot write ${temp}`, err);
  }
  return {
    async commit() {
      try {
        await rename(temp, target);
      } catch (err) {
        await unlink(temp).catch(() => {});
        throw notWritable(path, `cannot rename ${temp} over it`, err);
      }
      return { folderSynced: await syncFolder(folder) };
    },
    discard: () => unlink(temp).catch(() => {}),
  };
}

/** Removes the temporary files a killed cosid left beside the config file; returns how many. */
export async function removeStaleTemps(path: string): Promise<number> {
  let target: string;
  try {
    target = await realpath(path);
  } catch {
    return 0;
  }
  const prefix = tempPrefix(target);
  let removed = 0;
  for (const name of await readdir(dirname(target)).catch(() => [] as string[])) {
    if (!name.startsWith(prefix) || !name.endsWith(TEMP_SUFFIX)) continue;
    await unlink(join(dirname(target), name)).then(
      () => removed++,
      () => {},
    );
  }
  return removed;
}

/** Flushes a folder's entries (the rename); false when the file system refuses to. */
async function syncFolder(folder: string): Promise<boolean> {
  try {
    const dir = await open(folder, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    return true;
  } catch {
    return false;
  }
}

function notWritable(path: string, what: string, err: unknown): CosiError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code ?? (err instanceof Error ? err.message : String(err));
  return new CosiError('failed-precondition', `the machine config file ${path} cannot be written (${what}: ${code}); nothing was changed`, { cause: err });
}
