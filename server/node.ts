// One node's cosid with its pipeline: machine config -> StaticPods -> manifest server -> kubelet -> statuses.
import type { Logger } from '../shared/log.js';
import { silentLogger } from '../shared/log.js';
import { MachineConfigController } from './controllers/machine-config.js';
import { Cosid, type CosidOptions } from './cosid.js';
import { KubeletPoller, type KubeletPollerOptions } from './kubelet/poller.js';
import { ManifestServer } from './manifests/server.js';

export interface NodeOptions extends CosidOptions {
  /** The machine config file; watched for changes. */
  configPath: string;
  /** host:port on loopback for the kubelet's staticPodURL (default 127.0.0.1:0). */
  manifestListen?: string;
  /** Kubelet status polling; off when undefined (no kubelet client credentials). */
  kubelet?: Omit<KubeletPollerOptions, 'store' | 'log' | 'onPoll'>;
}

export class CosiNode {
  private constructor(
    readonly cosid: Cosid,
    readonly config: MachineConfigController,
    readonly manifests: ManifestServer,
    readonly poller: KubeletPoller | undefined,
  ) {}

  /** Starts everything; fails (and cleans up) if the machine config is not valid at start. */
  static async start(opts: NodeOptions): Promise<CosiNode> {
    const log: Logger = opts.log ?? silentLogger;
    const cosid = await Cosid.start(opts);
    let manifests: ManifestServer | undefined;
    try {
      manifests = await ManifestServer.start({ listen: opts.manifestListen ?? '127.0.0.1:0', store: cosid.store, log });
      const config = new MachineConfigController(cosid.store, opts.configPath, log, { loaded: (outcome) => cosid.metrics.reload(outcome), tryReverted: () => cosid.metrics.tryReverted() });
      if (!(await config.reload('start'))) throw new Error(`cannot start: the machine config ${opts.configPath} was rejected (see the log above)`);
      config.watch();
      cosid.serveConfig(config);
      manifests.markReady();
      let poller: KubeletPoller | undefined;
      if (opts.kubelet !== undefined) {
        const p = new KubeletPoller({ ...opts.kubelet, store: cosid.store, log, onPoll: (outcome, seconds) => cosid.metrics.poll(outcome, seconds) });
        cosid.metrics.kubeletPolled(() => p.lastGoodPoll);
        // The kubelet may pick a change up soon: look right away instead of waiting a whole interval.
        manifests.onChange(() => p.pollSoon());
        p.start();
        poller = p;
      } else {
        log.info('kubelet status polling is off: no kubelet client certificate given');
      }
      return new CosiNode(cosid, config, manifests, poller);
    } catch (err) {
      await manifests?.stop();
      await cosid.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    this.poller?.stop();
    this.config.stop();
    await this.manifests.stop();
    await this.cosid.stop();
  }
}
