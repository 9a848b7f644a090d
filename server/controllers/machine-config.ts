// Watches the machine config file and applies it: a good config reconciles the StaticPods, a bad one changes
// nothing (the last good state stays served) and is logged and published as the MachineConfigStatus. A config that
// cannot be applied (a write refused) is undone (reconcileStaticPods is all or nothing); should undoing fail too, the
// log and the status say which changes stayed.
import { watch, type FSWatcher } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { namesForLog, type Logger } from '../../shared/log.js';
import { MAX_CONFIG_BYTES, MachineConfigError, parseMachineConfig } from '../config/machine-config.js';
import { CONFIG_NAMESPACE, MACHINE_CONFIG_STATUS_ID, MACHINE_CONFIG_STATUS_TYPE } from '../resources/k8s.js';
import type { ResourceStore } from '../store/store.js';
import { upsert } from '../store/upsert.js';
import { untilWritten } from './retry.js';
import { ReconcileError, reconcileStaticPods } from './static-pods.js';

export const MACHINE_CONFIG_OWNER = 'config.MachineConfigController';
// Editors write a file in a few steps; a short pause coalesces them without delaying the change much.
const DEBOUNCE_MS = 10;

export class MachineConfigController {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private loading: Promise<boolean> = Promise.resolve(true);
  private lastGood: { at: string; pods: number; invalid: { id: string; error: string }[] } | undefined;
  private readonly stopped = new AbortController();

  constructor(
    private readonly store: ResourceStore,
    readonly path: string,
    private readonly log: Logger,
    /** Told the outcome of every load: applied, rejected (nothing changed) or partial (some changes stayed). */
    private readonly onLoad: (outcome: 'applied' | 'rejected' | 'partial') => void = () => {},
  ) {}

  /** Loads the file now (loads never overlap). Resolves false when the config was rejected. */
  reload(reason: string): Promise<boolean> {
    this.loading = this.loading.then(() => this.loadOnce(reason));
    return this.loading;
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
    this.watcher?.close();
  }

  private async loadOnce(reason: string): Promise<boolean> {
    try {
      const config = parseMachineConfig(await readLimited(this.path), this.path);
      for (const w of config.warnings) this.log.warn(w);
      // The store being unreachable is no fault of the config: the reconcile waits for it and lands.
      const result = await untilWritten('static pods of the machine config', () => reconcileStaticPods(this.store, config.pods, this.log), this.log, { signal: this.stopped.signal });
      this.lastGood = { at: new Date().toISOString(), pods: config.pods.length, invalid: result.invalid.map((i) => ({ id: i.id, error: i.message })) };
      await this.publish('');
      this.onLoad('applied');
      this.log.debug('machine config applied', { path: this.path, reason });
      return true;
    } catch (err) {
      const message = err instanceof MachineConfigError ? err.message : `${this.path}: ${err instanceof Error ? err.message : String(err)}`;
      this.onLoad(err instanceof ReconcileError && !err.unchanged ? 'partial' : 'rejected');
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
      await this.publish(message);
      return false;
    }
  }

  /** Publishes the MachineConfigStatus; a failure to is logged, never taken for a failure of the config. */
  private async publish(error: string): Promise<void> {
    try {
      await untilWritten('MachineConfigStatus', () => this.writeStatus(error), this.log, { signal: this.stopped.signal });
    } catch (err) {
      this.log.error('cannot publish the machine config status', { path: this.path, error: err });
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
