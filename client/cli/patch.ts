// cosictl patch machineconfig: per node, reads MachineConfig v1alpha1 (its text and version), patches it locally
// and applies the result, carrying the version it read so that a change made in between is refused, not overwritten.
import { CosiError } from '../../shared/errors.js';
import type { CosiClient } from '../client.js';
import { applyPatches, loadPatches } from './config-patch.js';
import { forEachNode, printApplyResult, type ApplyFlags } from './apply-config.js';
import type { TargetOptions } from './get.js';
import { UsageError } from './usage.js';

export const MACHINE_CONFIG_TYPE = 'MachineConfigs.config.talos.dev';
export const RUNNING_CONFIG_ID = 'v1alpha1';
const MACHINE_CONFIG_NAMES = ['machineconfig', 'machineconfigs', 'mc', 'mcs', MACHINE_CONFIG_TYPE.toLowerCase()];

/** patch and edit take `machineconfig` (or an alias) and optionally the ID `v1alpha1`, as talosctl does. */
export function checkMachineConfigArgs(command: string, args: readonly string[]): void {
  const [type, id, ...extra] = args;
  if (type === undefined) throw new UsageError(`${command} needs what to change: cosictl ${command} machineconfig`);
  if (!MACHINE_CONFIG_NAMES.includes(type.toLowerCase())) throw new UsageError(`${command} changes the machine config only (machineconfig, mc), not ${JSON.stringify(type)}`);
  if (id !== undefined && id !== RUNNING_CONFIG_ID) throw new UsageError(`${command} changes the running config (${RUNNING_CONFIG_ID}) only, not ${JSON.stringify(id)}`);
  if (extra.length > 0) throw new UsageError(`${command} takes machineconfig and at most the ID ${RUNNING_CONFIG_ID}; unexpected ${JSON.stringify(extra.join(' '))}`);
}

/** The running config's text and the version it was read at. */
export async function readMachineConfig(client: CosiClient): Promise<{ text: string; version: number }> {
  const r = await client.get(MACHINE_CONFIG_TYPE, RUNNING_CONFIG_ID);
  // Its YAML spec is the config text as a YAML string.
  if (typeof r.spec !== 'string') throw new CosiError('internal', `${MACHINE_CONFIG_TYPE}/${RUNNING_CONFIG_ID} has no config text`);
  return { text: r.spec, version: r.metadata.version };
}

export interface PatchOptions extends TargetOptions, ApplyFlags {
  args: string[];
  patches: string[];
}

export async function runPatch(o: PatchOptions): Promise<number> {
  checkMachineConfigArgs('patch', o.args);
  if (o.patches.length === 0) throw new UsageError('patch needs a patch: -p @patch.yaml, -p \'<json patch>\' or --patch-file FILE');
  // Read once, before any node is asked: a bad patch fails for all alike.
  const patches = await loadPatches(o.patches);
  return forEachNode(o, async (t, label, several) => {
    const { text, version } = await readMachineConfig(t.client);
    const patched = applyPatches(text, patches);
    if (!patched.changed) {
      process.stderr.write(`${several ? `node ${label()}: ` : ''}Apply was skipped: no changes detected.\n`);
      return;
    }
    const result = await t.client.applyConfiguration(patched.text, { mode: o.mode, dryRun: o.dryRun, expectedVersion: version, ...(o.tryTimeoutMs !== undefined ? { tryTimeoutMs: o.tryTimeoutMs } : {}) });
    process.stderr.write(`patched ${MACHINE_CONFIG_TYPE}/${RUNNING_CONFIG_ID} at the node ${label()}\n`);
    printApplyResult(result, several ? label() : undefined);
  });
}
