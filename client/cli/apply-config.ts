// cosictl apply-config: a whole machine config from a local file (with local patches), sent to each node with
// Talos's ApplyConfiguration; and what apply-config, patch and edit share (mode, try timeout, printing the answer).
import { readFile } from 'node:fs/promises';
import { CosiError } from '../../shared/errors.js';
import type { ApplyConfigurationResult, ApplyMode } from '../client.js';
import type { NodeTarget } from '../nodes.js';
import { applyPatches, loadPatches } from './config-patch.js';
import { parseDuration } from './duration.js';
import { openTargets, type TargetOptions } from './get.js';
import { UsageError } from './usage.js';

/** How a change is applied, as the commands' flags give it. */
export interface ApplyFlags {
  mode: ApplyMode;
  dryRun: boolean;
  /** The TRY timeout (`--timeout`), when given. */
  tryTimeoutMs: number | undefined;
}

const MODES: readonly ApplyMode[] = ['auto', 'no-reboot', 'staged', 'try'];

/** --mode: talosctl's names; reboot is refused (cosid has nothing to reboot). */
export function parseMode(value: string | undefined): ApplyMode {
  if (value === undefined) return 'auto';
  const mode = MODES.find((m) => m === value);
  if (mode !== undefined) return mode;
  if (value === 'reboot') throw new UsageError('--mode reboot is not supported: cosid has nothing to reboot; use auto, no-reboot, staged or try');
  throw new UsageError(`--mode must be one of auto, no-reboot, staged, try; not ${JSON.stringify(value)}`);
}

/** --timeout as talosctl takes it (a Go duration: 1m, 30s, 1m30s, 500ms); positive. */
export function parseTryTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseDuration(value);
  if (ms === undefined || !(ms > 0)) throw new UsageError(`--timeout needs a positive duration such as 1m, 30s or 1m30s, not ${JSON.stringify(value)}`);
  return ms;
}

/** Warnings as talosctl prints them, then the mode details; on stderr. With several nodes each line names its node. */
export function printApplyResult(result: ApplyConfigurationResult, node: string | undefined): void {
  const prefix = node === undefined ? '' : `node ${node}: `;
  for (const w of result.warnings) process.stderr.write(`${prefix}WARNING: ${w}\n`);
  if (result.modeDetails !== '') process.stderr.write(`${result.modeDetails.replace(/^/gm, prefix)}\n`);
}

export function asCosiError(err: unknown): CosiError {
  return err instanceof CosiError ? err : new CosiError('internal', err instanceof Error ? err.message : String(err));
}

/**
 * Runs `each` on every node, one after the other; a failing node is reported and the others go on. With one node
 * its failure is the command's error. Returns the exit code.
 */
export async function forEachNode(o: TargetOptions, each: (t: NodeTarget, label: () => string, several: boolean) => Promise<void>): Promise<number> {
  const { targets, labelOf } = await openTargets(o);
  try {
    let failed = 0;
    for (const t of targets) {
      try {
        await each(t, () => labelOf(t.node), targets.length > 1);
      } catch (err) {
        if (targets.length === 1 || err instanceof UsageError) throw err;
        failed++;
        process.stderr.write(`error: node ${labelOf(t.node)}: ${asCosiError(err).message}\n`);
      }
    }
    return failed > 0 ? 1 : 0;
  } finally {
    for (const t of targets) t.client.close();
  }
}

export interface ApplyConfigOptions extends TargetOptions, ApplyFlags {
  file: string | undefined;
  patches: string[];
}

export async function runApplyConfig(o: ApplyConfigOptions): Promise<number> {
  if (o.file === undefined) throw new UsageError('apply-config needs the config file: cosictl apply-config -f FILE');
  let text: string;
  try {
    text = await readFile(o.file, 'utf8');
  } catch (err) {
    throw new CosiError('invalid-argument', `failed to read configuration from ${JSON.stringify(o.file)}: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (text.trim() === '') throw new CosiError('invalid-argument', `no configuration data in ${JSON.stringify(o.file)}`);
  // The patches are applied here, once, before anything is sent: as talosctl, apply-config does not read the node.
  if (o.patches.length > 0) text = applyPatches(text, await loadPatches(o.patches)).text;
  const config = text;
  return forEachNode(o, async (t, label, several) => {
    const result = await t.client.applyConfiguration(config, { mode: o.mode, dryRun: o.dryRun, ...(o.tryTimeoutMs !== undefined ? { tryTimeoutMs: o.tryTimeoutMs } : {}) });
    printApplyResult(result, several ? label() : undefined);
  });
}
