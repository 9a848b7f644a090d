// cosictl edit machineconfig: per node, the running config in an editor ($COSI_EDITOR, else $EDITOR, else vi) under
// a `#` header; what is saved is applied with the version that was read. An empty file or no change skips the
// apply; an invalid config reopens the editor with the error as `#` lines on top, as kubectl and talosctl do, until
// the user fixes it, empties the file, or saves it unchanged (which cancels and keeps a copy).
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CosiError, isCosiError } from '../../shared/errors.js';
import { asCosiError, forEachNode, printApplyResult, type ApplyFlags } from './apply-config.js';
import type { TargetOptions } from './get.js';
import { checkMachineConfigArgs, MACHINE_CONFIG_TYPE, readMachineConfig, RUNNING_CONFIG_ID } from './patch.js';

export interface EditOptions extends TargetOptions, ApplyFlags {
  args: string[];
}

/** Rounds of edit -> refused -> edit again, at most (each needs the user to change the file). */
const MAX_ROUNDS = 100;

/** The editor command: run through sh, so "code --wait" works as in kubectl and git. */
export function editorCommand(env: NodeJS.ProcessEnv = process.env): string {
  for (const name of ['COSI_EDITOR', 'EDITOR']) {
    const v = env[name]?.trim();
    if (v !== undefined && v !== '') return v;
  }
  return 'vi';
}

function runEditor(editor: string, file: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', `${editor} "$1"`, 'sh', file], { stdio: 'inherit' });
    child.on('error', (err) => reject(new CosiError('invalid-argument', `cannot start the editor ${JSON.stringify(editor)}: ${err.message}`)));
    child.on('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(new CosiError('cancelled', `the editor ${JSON.stringify(editor)} ${signal !== null ? `was killed by ${signal}` : `exited with code ${String(code)}`}; nothing was applied`));
    });
  });
}

/** The text without its comment lines and trailing blanks: what decides "unchanged" and "empty". */
function meaningful(text: string): string {
  return text
    .split('\n')
    .filter((l) => !/^\s*#/.test(l))
    .map((l) => l.trimEnd())
    .join('\n')
    .trim();
}

function commentLines(text: string): string {
  return `# \n${text
    .split('\n')
    .map((l) => `# ${l}`)
    .join('\n')}\n`;
}

export async function runEdit(o: EditOptions): Promise<number> {
  checkMachineConfigArgs('edit', o.args);
  const editor = editorCommand();
  const dir = await mkdtemp(join(tmpdir(), 'cosictl-edit-'));
  let keep = false;
  try {
    return await forEachNode(o, async (t, label, several) => {
      const { text: body, version } = await readMachineConfig(t.client);
      const file = join(dir, `${MACHINE_CONFIG_TYPE}-${RUNNING_CONFIG_ID}-${label().replace(/[^A-Za-z0-9.-]/g, '_')}.yaml`);
      const say = (s: string): void => {
        process.stderr.write(`${several ? `node ${label()}: ` : ''}${s}\n`);
      };
      let edited = body;
      let lastError = '';
      for (let round = 0; round < MAX_ROUNDS; round++) {
        const header = `# Editing ${MACHINE_CONFIG_TYPE}/${RUNNING_CONFIG_ID} at node ${label()}\n${lastError !== '' ? commentLines(lastError) : ''}`;
        await writeFile(file, header + edited, { mode: 0o600 });
        await runEditor(editor, file);
        const saved = stripHeader(await readFile(file, 'utf8'), header);
        if (meaningful(saved) === '') return say('Apply was skipped: empty file.');
        if (lastError !== '' && meaningful(saved) === meaningful(edited)) {
          keep = true;
          throw new CosiError('invalid-argument', `${lastError}\nA copy of your changes has been stored to ${JSON.stringify(file)}\nEdit canceled, no valid changes were saved.`);
        }
        if (saved === body || meaningful(saved) === meaningful(body)) return say('Apply was skipped: no changes detected.');
        edited = saved;
        try {
          const result = await t.client.applyConfiguration(saved, { mode: o.mode, dryRun: o.dryRun, expectedVersion: version, ...(o.tryTimeoutMs !== undefined ? { tryTimeoutMs: o.tryTimeoutMs } : {}) });
          printApplyResult(result, several ? label() : undefined);
          return;
        } catch (err) {
          // Only a config the node refused is the user's to fix; anything else (a concurrent change, a role, the
          // connection) would fail again as it is.
          if (!isCosiError(err, 'invalid-argument')) {
            keep = true;
            throw new CosiError(asCosiError(err).kind, `${asCosiError(err).message}\nA copy of your changes has been stored to ${JSON.stringify(file)}`);
          }
          lastError = err.message;
        }
      }
      keep = true;
      throw new CosiError('cancelled', `gave up after ${MAX_ROUNDS} rounds of edits; your last changes are in ${JSON.stringify(file)}`);
    });
  } finally {
    if (!keep) await rm(dir, { recursive: true, force: true });
  }
}

/** The saved text without the header cosictl wrote (its leading `#` lines, however many are still there). */
function stripHeader(saved: string, header: string): string {
  const lines = saved.split('\n');
  let n = 0;
  const max = header.split('\n').length - 1;
  while (n < max && lines[n]?.startsWith('#') === true) n++;
  return lines.slice(n).join('\n');
}
