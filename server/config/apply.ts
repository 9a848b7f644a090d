// A machine config given over the API (machine.MachineService/ApplyConfiguration): how it is checked, what the
// answer says, and the contract between the API (server/api/apply-config.ts) and the machine config controller
// (server/controllers/machine-config.ts), which applies it.
//
// The API is stricter than the file: a config with an invalid pod is refused whole (Talos would accept it and let
// the kubelet fail), where a hand-edited file keeps the pod visible as invalid, because a file cannot be answered.
import { createTwoFilesPatch, FILE_HEADERS_ONLY } from 'diff';
import { CosiError } from '../../shared/errors.js';
import { namesForText } from '../../shared/log.js';
import { MAX_SPEC_DEPTH, specDepth } from '../store/store.js';
import { MachineConfigError, parseMachineConfig, type MachineConfig, type StaticPodEntry } from './machine-config.js';
import { validateStaticPod } from './pod-validation.js';

/** Talos's modes that apply something (AUTO is NO_REBOOT, REBOOT is refused: both are the API's business). */
export type ApplyMode = 'no-reboot' | 'staged' | 'try';

export interface ApplyRequest {
  /** The whole machine config, as text. */
  readonly text: string;
  readonly mode: ApplyMode;
  /** Nothing changes; the answer says what would and shows the diff. */
  readonly dryRun: boolean;
  /** TRY: how long until the previous running config comes back. */
  readonly tryTimeoutMs: number;
  /** The version of the MachineConfig `v1alpha1` the config was made from; refused when the running one moved on. */
  readonly expectedVersion: number | undefined;
}

/** The static pods an apply adds, changes and removes, by ID. */
export interface PodChanges {
  readonly added: readonly string[];
  readonly changed: readonly string[];
  readonly removed: readonly string[];
}

export interface ApplyResult {
  /** Non-fatal findings (none on a dry run, as Talos). */
  readonly warnings: readonly string[];
  /** Talos's mode_details. */
  readonly details: string;
  /** What the apply changed (a dry run: would change) in the running static pods. */
  readonly pods: PodChanges;
}

export interface ConfigApplier {
  /** Throws CosiError: invalid-argument, version-conflict, failed-precondition (busy, file not writable), ... */
  apply(req: ApplyRequest): Promise<ApplyResult>;
}

/** How a config given over the API is named in messages ("config:12:3: unknown key ..."). */
export const APPLY_SOURCE = 'config';
/** Talos's default try_mode_timeout. */
export const DEFAULT_TRY_TIMEOUT_MS = 60_000;
/** The longest try cosid accepts: a try is a short experiment, and Node's timers stop at 2^31 ms (24.8 days). */
export const MAX_TRY_TIMEOUT_MS = 24 * 3_600_000;
/** How many invalid pods a refusal names before it only counts the rest. */
const MAX_PODS_NAMED = 5;

/**
 * Parses and validates a config given over the API: a YAML error (with line and column), an unknown key or document
 * and an invalid static pod (with its ID and field) are all InvalidArgument. The file's size and alias limits hold.
 */
export function checkForApply(text: string): MachineConfig {
  let config: MachineConfig;
  try {
    config = parseMachineConfig(text, APPLY_SOURCE);
  } catch (err) {
    if (err instanceof MachineConfigError) throw new CosiError('invalid-argument', err.message);
    throw err;
  }
  const invalid: string[] = [];
  for (const p of config.pods) {
    const problem = specDepth(p.pod) > MAX_SPEC_DEPTH ? `invalid pod: nested deeper than ${MAX_SPEC_DEPTH} levels` : validateStaticPod(p.pod)?.message;
    if (problem !== undefined) invalid.push(`${p.origin}: static pod ${p.id}: ${problem}`);
  }
  if (invalid.length > 0) {
    const more = invalid.length - MAX_PODS_NAMED;
    throw new CosiError('invalid-argument', `${invalid.slice(0, MAX_PODS_NAMED).join('; ')}${more > 0 ? `; and ${more} more invalid static pods` : ''}; nothing was applied`);
  }
  return config;
}

/** The static pods `next` adds, changes and removes compared with `before`. */
export function podChanges(before: readonly StaticPodEntry[], next: readonly StaticPodEntry[]): PodChanges {
  const old = new Map(before.map((p) => [p.id, JSON.stringify(p.pod)]));
  const added: string[] = [];
  const changed: string[] = [];
  for (const p of next) {
    const was = old.get(p.id);
    if (was === undefined) added.push(p.id);
    else if (was !== JSON.stringify(p.pod)) changed.push(p.id);
    old.delete(p.id);
  }
  return { added, changed, removed: [...old.keys()] };
}

/** "2 added (web, db), 1 removed (cache)" or "no static pod changes". */
export function describePodChanges(c: PodChanges): string {
  const parts = (['added', 'changed', 'removed'] as const).filter((k) => c[k].length > 0).map((k) => `${c[k].length} ${k} (${namesForText(c[k])})`);
  return parts.length === 0 ? 'no static pod changes' : parts.join(', ');
}

/** Talos's mode_details for an apply that happened. */
export function modeDetails(mode: ApplyMode, tryTimeoutMs: number): string {
  if (mode === 'staged') return 'Staged configuration to be applied after the next reboot';
  const applied = 'Applied configuration without a reboot';
  if (mode === 'no-reboot') return applied;
  return `${applied}\nThe config is applied in 'try' mode and will be automatically reverted back in ${goDuration(tryTimeoutMs)}`;
}

/** Talos's mode_details for a dry run: the summary, then the unified diff of the running config against the new one. */
export function dryRunDetails(mode: ApplyMode, running: string, next: string): string {
  const summary = mode === 'staged' ? 'Staged configuration to be applied after the next reboot' : 'Applied configuration without a reboot';
  const diff = configDiff(running, next);
  return `Dry run summary:\n${summary} (skipped in dry-run).\nConfig diff:\n\n${diff === '' ? 'No changes.' : diff}`;
}

/** A unified diff with the header `--- a` / `+++ b`, as Talos shows it; empty when the texts are equal. */
export function configDiff(a: string, b: string): string {
  if (a === b) return '';
  return createTwoFilesPatch('a', 'b', a, b, undefined, undefined, { headerOptions: FILE_HEADERS_ONLY });
}

/** A duration as Go prints one (time.Duration.String): 1m0s, 1m30s, 2s, 1.5s, 500ms, 1h0m0s. */
export function goDuration(ms: number): string {
  if (ms === 0) return '0s';
  if (ms < 1000) return `${ms}ms`;
  const hours = Math.floor(ms / 3_600_000);
  const minutes = Math.floor((ms % 3_600_000) / 60_000);
  const seconds = `${(ms % 60_000) / 1000}s`;
  if (hours > 0) return `${hours}h${minutes}m${seconds}`;
  if (minutes > 0) return `${minutes}m${seconds}`;
  return seconds;
}
