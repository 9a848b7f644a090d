// The one rule for which container log files cosid serves: a file whose real path (every symlink resolved) lies
// inside the real path of the pod logs directory. The inspector applies it to the path the runtime reports; the log
// reader applies it again to every file it opens (the first and those after a rotation), to where the open file
// really is.
import { realpath } from 'node:fs/promises';
import { sep } from 'node:path';
import { CosiError } from '../../shared/errors.js';

/** A log file to serve: its real path, and the real directory every open of it must stay in. */
export interface ConfinedLog {
  path: string;
  confineTo: string;
}

/** Refuses (PERMISSION_DENIED) a resolved path `real` of `file` unless it lies inside the resolved directory `root`. */
export function assertConfined(real: string, root: string, file: string): void {
  if (!real.startsWith(root + sep)) throw new CosiError('permission-denied', `log file ${file} is outside the pod logs directory ${root}`);
}

/** `file` resolved and checked to lie inside `dir`, with `dir` resolved for the opens that follow. */
export async function confineLog(file: string, dir: string): Promise<ConfinedLog> {
  const root = await realpath(dir).catch(() => {
    throw new CosiError('unavailable', `pod logs directory ${dir} does not exist`);
  });
  const real = await realpath(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') throw new CosiError('not-found', `log file ${file} does not exist`);
    throw new CosiError('permission-denied', `log file ${file} cannot be read (${err.code ?? String(err)})`);
  });
  assertConfined(real, root, file);
  return { path: real, confineTo: root };
}
