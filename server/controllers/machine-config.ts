// The machine config: the file cosid was started with (the saved config) and the config the StaticPods come from
// (the running config). Two ways in, one at a time:
// - the file: watched (and reloaded on SIGHUP); a good config reconciles the StaticPods, a bad one changes nothing
//   (the last good state stays served) and is logged and published as the MachineConfigStatus. A config that cannot
//   be applied (a write refused) is undone (reconcileStaticPods is all or nothing); should undoing fail too, the log
//   and the status say which changes stayed.
// - ApplyConfiguration (server/api/apply-config.ts), in Talos's modes: NO_REBOOT applies and saves (the file is
//   written atomically, server/config/config-file.ts), STAGED only saves, TRY only applies and restores the previous
//   running config after a timeout unless a later apply confirms it.
// Both are published as MachineConfig resources: `v1alpha1` (running) and `persistent` (saved).
import { watch, type FSWatcher } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { CosiError } from '../../shared/errors.js';
import { namesForLog, type Logger } from '../../shared/log.js';
import { checkForApply, dryRunDetails, modeDetails, podChanges, type ApplyRequest, type ApplyResult, type ConfigApplier } from '../config/apply.js';
import { prepareWrite, removeStaleTemps, type PreparedWrite } from '../config/config-file.js';
import { MAX_CONFIG_BYTES, MachineConfigError, parseMachineConfig, type StaticPodEntry } from '../config/machine-config.js';
import {
  CONFIG_NAMESPACE,
  MACHINE_CONFIG_STATUS_ID,
  MACHINE_CONFIG_STATUS_TYPE,
  MACHINE_CONFIG_TYPE,
  RUNNING_CONFIG_ID,
  SAVED_CONFIG_ID,
} from '../resources/k8s.js';
import { getOrUndefined, type ResourceStore } from '../store/store.js';
import { upsert } from '../store/upsert.js';
import { untilWritten } from './retry.js';
import { ReconcileError, reconcileStaticPods, type ReconcileResult } from './static-pods.js';

export const MACHINE_CONFIG_OWNER = 'config.MachineConfigController';
// Editors write a file in a few steps; a short pause coalesces them without delaying the change much.
const DEBOUNCE_MS = 10;

/** What the controller reports besides its logs (server/metrics.ts implements it). */
export interface ConfigEvents {
  /** Every load of the file: applied, rejected (nothing changed) or partial (some changes stayed). */
  loaded?(outcome: 'applied' | 'rejected' | 'partial'): void;
  /** A TRY apply timed out and the previous running config came back. */
  tryReverted?(): void;
}

/** A config whose static pods are what the store holds. */
interface Running {
  readonly text: string;
  readonly pods: readonly StaticPodEntry[];
}

/** A TRY apply waiting for its timeout (or for a later apply that confirms it). */
interface PendingTry {
  readonly timer: NodeJS.Timeout;
  /** The running config before the first TRY of a row of them. */
  readonly revertTo: Running;
}

export class MachineConfigController implements ConfigApplier {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Loads, applies and reverts, one at a time, in order. */
  private queue: Promise<unknown> = Promise.resolve();
  private lastGood: { at: string; pods: number; invalid: { id: string; error: string }[] } | undefined;
  private readonly stopped = new AbortController();
  private running: Running | undefined;
  /**
   * The file's text as cosid last read or wrote it. A watcher event that finds exactly this text is cosid's own
   * write (or a touch) coming back: it changes nothing. After STAGED it is ahead of the running config.
   */
  private fileText: string | undefined;
  private pendingTry: PendingTry | undefined;
  /** Set from the moment an apply is asked for until it answered: a second one meanwhile is refused (Talos). */
  private applying = false;

  constructor(
    private readonly store: ResourceStore,
    readonly path: string,
    private readonly log: Logger,
    private readonly events: ConfigEvents = {},
  ) {}

  /**
   * Loads the file now. A load because the file changed that finds the text cosid knows is in it does nothing (cosid's
   * own write coming back); `start` and `SIGHUP` always apply the file (after STAGED: the staged config). Resolves
   * false when the config was rejected.
   */
  reload(reason: string): Promise<boolean> {
    return this.serialize(async () => {
      if (reason === 'start') {
        const removed = await removeStaleTemps(this.path);
        if (removed > 0) this.log.info('removed temporary files of an interrupted config write', { path: this.path, files: removed });
      }
      return this.loadOnce(reason);
    });
  }

  /** Reloads whenever the file changes (editors often replace it, so the folder is watched). */
  watch(): void {
    const name = basename(this.path);
    this.watcher = watch(dirname(this.path), { persistent: false }, (_event, file) => {
      if (file !== null && file !== name) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.reload('file changed'), DEBOUNCE_MS);
    });
    this.watcher.on('error', (err) => this.log.error('cannot watch the machine config; reload with SIGHUP', { path: this.path, error: err }));
  }

  stop(): void {
    this.stopped.abort();
    clearTimeout(this.timer);
    this.cancelTry();
    this.watcher?.close();
  }

  /** Applies a config given over the API (one at a time; loads and reverts wait their turn). */
  async apply(req: ApplyRequest): Promise<ApplyResult> {
    if (this.applying) throw new CosiError('failed-precondition', 'another apply configuration is already in progress');
    this.applying = true;
    try {
      return await this.serialize(() => this.applyOnce(req));
    } finally {
      this.applying = false;
    }
  }

  private serialize<T>(step: () => Promise<T>): Promise<T> {
    const run = this.queue.then(step);
    this.queue = run.catch(() => {});
    return run;
  }

  private async loadOnce(reason: string): Promise<boolean> {
    let text: string | undefined;
    try {
      text = await readLimited(this.path);
      if (reason === 'file changed' && text === this.fileText) {
        this.log.debug('machine config file unchanged', { path: this.path });
        return true;
      }
      this.fileText = text;
      const config = parseMachineConfig(text, this.path);
      for (const w of config.warnings) this.log.warn(w);
      const result = await this.reconcile(config.pods);
      // The file wins over a config being tried: it is what runs now, and what a restart would run.
      this.cancelTry();
      this.running = { text, pods: config.pods };
      this.noteGood(result);
      await this.publish('', { running: text, saved: text });
      this.events.loaded?.('applied');
      this.log.debug('machine config applied', { path: this.path, reason });
      return true;
    } catch (err) {
      const message = err instanceof MachineConfigError ? err.message : `${this.path}: ${err instanceof Error ? err.message : String(err)}`;
      this.events.loaded?.(err instanceof ReconcileError && !err.unchanged ? 'partial' : 'rejected');
      if (err instanceof ReconcileError && !err.unchanged) {
        // Said as it is: the store holds neither the last good state nor the new one.
        this.log.error('machine config applied in part: the last good state is NOT kept', {
          path: this.path,
          reason,
          error: message,
          created: namesForLog(err.applied.created),
          updated: namesForLog(err.applied.updated),
          destroyed: namesForLog(err.applied.destroyed),
          ...(err.uncertain !== undefined ? { uncertain: err.uncertain } : {}),
        });
      } else {
        this.log.error('machine config rejected; keeping the last good state', { path: this.path, reason, error: message });
      }
      // `persistent` shows what the file holds, even when it does not load: it is what the next start would read.
      await this.publish(message, text !== undefined ? { saved: text } : {});
      return false;
    }
  }

  private async applyOnce(req: ApplyRequest): Promise<ApplyResult> {
    const config = checkForApply(req.text);
    const running = this.running;
    if (running === undefined) throw new CosiError('unavailable', 'the machine config is not loaded yet; try again in a moment');
    await this.checkVersion(req.expectedVersion);
    const pods = podChanges(running.pods, config.pods);
    if (req.dryRun) return { warnings: [], details: dryRunDetails(req.mode, running.text, req.text), pods };
    const next: Running = { text: req.text, pods: config.pods };
    switch (req.mode) {
      case 'no-reboot': {
        // The file is written first to a temporary file: a folder cosid cannot write is refused before any change.
        const write = req.text === this.fileText ? undefined : await prepareWrite(this.path, req.text);
        const result = await this.reconcileOrDiscard(next.pods, write);
        if (write !== undefined) await this.commitOrRestore(write, running);
        this.fileText = req.text;
        this.cancelTry();
        this.running = next;
        this.noteGood(result);
        await this.publish('', { running: req.text, saved: req.text });
        break;
      }
      case 'staged': {
        if (req.text !== this.fileText) {
          const write = await prepareWrite(this.path, req.text);
          await this.commit(write);
          this.fileText = req.text;
        }
        this.cancelTry();
        await this.publish(undefined, { saved: req.text });
        break;
      }
      case 'try': {
        const result = await this.reconcileOrDiscard(next.pods, undefined);
        // A TRY after a TRY extends the experiment; what comes back is what ran before the first one.
        const revertTo = this.pendingTry?.revertTo ?? running;
        this.cancelTry();
        const timer = setTimeout(() => void this.revert(timer), req.tryTimeoutMs);
        this.pendingTry = { timer, revertTo };
        this.running = next;
        this.noteGood(result);
        await this.publish('', { running: req.text });
        break;
      }
    }
    return { warnings: config.warnings, details: modeDetails(req.mode, req.tryTimeoutMs), pods };
  }

  /** The TRY whose timer this is timed out: the running config before it comes back (unless confirmed meanwhile). */
  private revert(timer: NodeJS.Timeout): Promise<void> {
    return this.serialize(async () => {
      const pending = this.pendingTry;
      if (pending === undefined || pending.timer !== timer || this.stopped.signal.aborted) return;
      this.pendingTry = undefined;
      try {
        const result = await this.reconcile(pending.revertTo.pods);
        const tried = this.running;
        this.running = pending.revertTo;
        this.noteGood(result);
        await this.publish('', { running: pending.revertTo.text });
        this.events.tryReverted?.();
        this.log.info('try mode timed out: the previous machine config is running again', {
          path: this.path,
          ...(tried !== undefined ? podChangesForLog(podChanges(tried.pods, pending.revertTo.pods)) : {}),
        });
      } catch (err) {
        this.log.error('try mode timed out but the previous machine config could not be restored', { path: this.path, error: err });
      }
    });
  }

  private cancelTry(): void {
    if (this.pendingTry === undefined) return;
    clearTimeout(this.pendingTry.timer);
    this.pendingTry = undefined;
  }

  /** Refused (version-conflict) when the running config is no longer the version the request was made from. */
  private async checkVersion(expected: number | undefined): Promise<void> {
    if (expected === undefined) return;
    const current = await getOrUndefined(this.store, { namespace: CONFIG_NAMESPACE, type: MACHINE_CONFIG_TYPE, id: RUNNING_CONFIG_ID });
    const version = current?.metadata.version;
    if (version === expected) return;
    throw new CosiError(
      'version-conflict',
      `the machine config changed since it was read: the request was made from version ${expected} of ${MACHINE_CONFIG_TYPE}/${RUNNING_CONFIG_ID}, which is now at version ${version ?? '(none)'}; read it again and redo the change (nothing was applied)`,
    );
  }

  /** The store made to hold `pods`; waits while the store is unreachable (the pods are right, the store is not). */
  private reconcile(pods: readonly StaticPodEntry[]): Promise<ReconcileResult> {
    return untilWritten('static pods of the machine config', () => reconcileStaticPods(this.store, pods, this.log), this.log, { signal: this.stopped.signal });
  }

  /** An apply's reconcile: its failure is the call's answer, and the prepared file write is dropped. */
  private async reconcileOrDiscard(pods: readonly StaticPodEntry[], write: PreparedWrite | undefined): Promise<ReconcileResult> {
    try {
      return await this.reconcile(pods);
    } catch (err) {
      await write?.discard();
      if (err instanceof ReconcileError) {
        this.log.error('machine config apply failed', { path: this.path, error: err.message });
        throw new CosiError(err.unchanged ? 'failed-precondition' : 'internal', `the static pods cannot be applied: ${err.message}`);
      }
      throw err;
    }
  }

  /** Puts the new file in place; when that fails, the static pods go back to `running` and the failure is the answer. */
  private async commitOrRestore(write: PreparedWrite, running: Running): Promise<void> {
    try {
      await this.commit(write);
    } catch (err) {
      try {
        await this.reconcile(running.pods);
      } catch (restoreErr) {
        this.log.error('the config file could not be written and the static pods could not be restored', { path: this.path, error: restoreErr });
        throw new CosiError('internal', `${err instanceof Error ? err.message : String(err)}; and the static pods of the new config could not be undone: ${restoreErr instanceof Error ? restoreErr.message : String(restoreErr)}`);
      }
      throw err;
    }
  }

  private async commit(write: PreparedWrite): Promise<void> {
    const { folderSynced } = await write.commit();
    if (!folderSynced) this.log.warn('the machine config folder could not be flushed to disk after the write; a power loss may bring back the old file', { path: this.path });
  }

  private noteGood(result: ReconcileResult): void {
    this.lastGood = { at: new Date().toISOString(), pods: this.running?.pods.length ?? 0, invalid: result.invalid.map((i) => ({ id: i.id, error: i.message })) };
  }

  /**
   * Publishes the MachineConfigStatus (unless `error` is undefined) and the MachineConfig resources given; a failure
   * to is logged, never taken for a failure of the config.
   */
  private async publish(error: string | undefined, configs: { running?: string; saved?: string }): Promise<void> {
    const writes: [string, () => Promise<unknown>][] = [];
    if (error !== undefined) writes.push(['machine config status', () => this.writeStatus(error)]);
    for (const [id, text] of [
      [RUNNING_CONFIG_ID, configs.running],
      [SAVED_CONFIG_ID, configs.saved],
    ] as const) {
      if (text === undefined) continue;
      // Talos marks a resource whose YAML spec is the text itself; talosctl's patch and edit look for it.
      const input = { namespace: CONFIG_NAMESPACE, type: MACHINE_CONFIG_TYPE, id, spec: text, annotations: { 'talos.dev/yaml-spec': '1' } };
      writes.push([`machine config resource ${id}`, () => upsert(this.store, input, MACHINE_CONFIG_OWNER)]);
    }
    for (const [what, write] of writes) {
      try {
        await untilWritten(what, write, this.log, { signal: this.stopped.signal });
      } catch (err) {
        this.log.error(`cannot publish the ${what}`, { path: this.path, error: err });
      }
    }
  }

  private writeStatus(error: string): Promise<unknown> {
    const spec = {
      path: this.path,
      lastGoodAt: this.lastGood?.at ?? null,
      pods: this.lastGood?.pods ?? 0,
      invalidPods: this.lastGood?.invalid.length ?? 0,
      invalid: this.lastGood?.invalid ?? [],
      error,
    };
    const input = { namespace: CONFIG_NAMESPACE, type: MACHINE_CONFIG_STATUS_TYPE, id: MACHINE_CONFIG_STATUS_ID, spec };
    return upsert(this.store, input, MACHINE_CONFIG_OWNER);
  }
}

/** Pod changes as log fields: counts and first names. */
export function podChangesForLog(c: { added: readonly string[]; changed: readonly string[]; removed: readonly string[] }): Record<string, unknown> {
  return { added: namesForLog(c.added), changed: namesForLog(c.changed), removed: namesForLog(c.removed) };
}

async function readLimited(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    if (size > MAX_CONFIG_BYTES) throw new MachineConfigError(`${path}: machine config is larger than ${MAX_CONFIG_BYTES} bytes`);
    const buf = Buffer.alloc(Math.min(size, MAX_CONFIG_BYTES) + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead > MAX_CONFIG_BYTES) throw new MachineConfigError(`${path}: machine config is larger than ${MAX_CONFIG_BYTES} bytes`);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

