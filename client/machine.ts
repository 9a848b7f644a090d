// machine.MachineService calls (Talos's Containers and Logs) for the client library. Internal: the client's
// containers() and logs() are the public way in.
import * as grpc from '@grpc/grpc-js';
import { CosiError } from '../shared/errors.js';
import { ApplyMode as WireMode, CONFIG_VERSION_METADATA_KEY, ContainerDriver, machineWire, type WireApplyConfiguration, type WireApplyConfigurationRequest, type WireContainerInfo } from '../shared/wire.js';
import { checkMs, type CallContext } from './call.js';
import type { ApplyConfigurationOptions, ApplyConfigurationResult, ApplyMode } from './client.js';
import type { ContainerInfo } from './resource.js';

export type { ContainerInfo } from './resource.js';

/** Who to call and how to report: the pieces of a client these calls need. */
export interface MachineTransport {
  readonly channel: grpc.Client;
  noteNode(md: grpc.Metadata): void;
}

/** Service names as Talos's talosctl sends them. */
const K8S_NAMESPACE = 'k8s.io';
const SYSTEM_NAMESPACE = 'system';

export function listContainers(t: MachineTransport, ctx: CallContext): Promise<ContainerInfo[]> {
  return new Promise((resolve, reject) => {
    ctx.throwIfCancelled();
    let stop = () => {};
    const call = t.channel.makeUnaryRequest(
      '/machine.MachineService/Containers',
      (v: { namespace: string; driver: ContainerDriver }) => Buffer.from(machineWire.containersRequest.encode(v)),
      (b: Buffer) => machineWire.containersResponse.decode(b),
      { namespace: K8S_NAMESPACE, driver: ContainerDriver.CRI },
      ctx.grpcOptions(),
      (err, res) => {
        stop();
        if (err != null) return void ctx.failure(err).then(reject);
        resolve((res?.messages ?? []).flatMap((m) => m.containers.map(fromWire)));
      },
    );
    call.on('metadata', (md) => t.noteNode(md));
    stop = ctx.onCancel(() => call.cancel());
  });
}

/**
 * A log as chunks of whole lines, as stored (CRI format for containers). `id` is a container ID from
 * `containers -k` (or `<ns>/<pod>:<container>` for its latest instance), or `kubelet` for the kubelet's own log.
 * Breaking out of the loop, the caller's signal or closing the client ends the stream; its deadline fails it.
 */
export async function* streamLogs(t: MachineTransport, id: string, opts: { follow?: boolean; tailLines?: number }, ctx: CallContext): AsyncGenerator<Buffer, void, undefined> {
  const system = id === 'kubelet';
  const req = {
    namespace: system ? SYSTEM_NAMESPACE : K8S_NAMESPACE,
    id,
    driver: system ? ContainerDriver.CONTAINERD : ContainerDriver.CRI,
    follow: opts.follow ?? false,
    // Talos's convention: a negative count means the whole log.
    tailLines: opts.tailLines ?? -1,
  };
  if (ctx.cancellation() !== undefined) return;
  const call = t.channel.makeServerStreamRequest(
    '/machine.MachineService/Logs',
    (v: typeof req) => Buffer.from(machineWire.logsRequest.encode(v)),
    (b: Buffer) => b,
    req,
    ctx.grpcOptions(),
  );
  call.on('metadata', (md) => t.noteNode(md));
  const stop = ctx.onCancel(() => call.cancel());
  try {
    // Pulling one message at a time is the backpressure: the server reads the file only as fast as this loop.
    for await (const b of call as AsyncIterable<Buffer>) yield machineWire.data.decode(b).bytes;
  } catch (err) {
    if (ctx.cancellation() !== undefined) return;
    throw await ctx.failure(err);
  } finally {
    stop();
    call.cancel();
  }
}

const WIRE_MODES: Readonly<Record<ApplyMode, WireMode>> = { auto: WireMode.AUTO, 'no-reboot': WireMode.NO_REBOOT, staged: WireMode.STAGED, try: WireMode.TRY };
const MODES_OF_WIRE: Readonly<Record<WireMode, ApplyConfigurationResult['mode']>> = {
  [WireMode.REBOOT]: 'reboot',
  [WireMode.AUTO]: 'auto',
  [WireMode.NO_REBOOT]: 'no-reboot',
  [WireMode.STAGED]: 'staged',
  [WireMode.TRY]: 'try',
};

/** The request an apply makes, checked before anything is sent. */
function applyRequest(config: string, opts: ApplyConfigurationOptions): { body: WireApplyConfigurationRequest; metadata: grpc.Metadata } {
  if (typeof config !== 'string') throw new CosiError('invalid-argument', 'applyConfiguration needs the machine config as YAML text');
  const modeName = opts.mode ?? 'auto';
  // Talos's REBOOT (the wire's zero value) is never sent: cosid has nothing to reboot and refuses it.
  const mode = Object.hasOwn(WIRE_MODES, modeName) ? WIRE_MODES[modeName] : undefined;
  if (mode === undefined) throw new CosiError('invalid-argument', `unknown apply mode ${JSON.stringify(modeName)}: use auto, no-reboot, staged or try`);
  const body: WireApplyConfigurationRequest = { data: Buffer.from(config, 'utf8'), mode, dryRun: opts.dryRun === true };
  if (opts.tryTimeoutMs !== undefined) {
    const ms = checkMs('tryTimeoutMs', opts.tryTimeoutMs, 0);
    if (!Number.isFinite(ms)) throw new CosiError('invalid-argument', 'tryTimeoutMs must be a finite number of milliseconds');
    const whole = Math.round(ms);
    body.tryModeTimeout = { seconds: Math.floor(whole / 1000), nanos: (whole % 1000) * 1e6 };
  }
  const metadata = new grpc.Metadata();
  if (opts.expectedVersion !== undefined) {
    const v = opts.expectedVersion;
    if (!Number.isSafeInteger(v) || v < 1) throw new CosiError('invalid-argument', `expectedVersion must be a resource version (a whole number from 1), not ${String(v)}`);
    metadata.set(CONFIG_VERSION_METADATA_KEY, String(v));
  }
  return { body, metadata };
}

/** machine.MachineService/ApplyConfiguration: the whole config, the node's one answer as plain types. */
export function applyConfiguration(t: MachineTransport, config: string, opts: ApplyConfigurationOptions, ctx: CallContext): Promise<ApplyConfigurationResult> {
  return new Promise((resolve, reject) => {
    ctx.throwIfCancelled();
    const { body, metadata } = applyRequest(config, opts);
    let stop = () => {};
    const call = t.channel.makeUnaryRequest(
      '/machine.MachineService/ApplyConfiguration',
      (v: WireApplyConfigurationRequest) => Buffer.from(machineWire.applyConfigurationRequest.encode(v)),
      (b: Buffer) => machineWire.applyConfigurationResponse.decode(b),
      body,
      metadata,
      ctx.grpcOptions(),
      (err, res) => {
        stop();
        if (err != null) return void ctx.failure(err).then(reject);
        const [message, ...more] = res?.messages ?? [];
        if (message === undefined || more.length > 0) return reject(new CosiError('internal', `ApplyConfiguration answered ${res?.messages.length ?? 0} messages, not one`));
        try {
          resolve(fromWireApply(message));
        } catch (e) {
          reject(e);
        }
      },
    );
    call.on('metadata', (md) => t.noteNode(md));
    stop = ctx.onCancel(() => call.cancel());
  });
}

function fromWireApply(m: WireApplyConfiguration): ApplyConfigurationResult {
  // A proxy's per-node failure (Talos's apid) travels as metadata.error in a successful answer.
  const error = m.metadata?.error ?? '';
  if (error !== '') throw new CosiError('unknown', error);
  return { node: m.metadata?.hostname ?? '', mode: MODES_OF_WIRE[m.mode] ?? 'auto', modeDetails: m.modeDetails, warnings: [...m.warnings] };
}

function fromWire(c: WireContainerInfo): ContainerInfo {
  return {
    id: c.id,
    podId: c.podId,
    name: c.name,
    image: c.image,
    pid: c.pid,
    status: c.status,
    restartCount: c.restartCount,
    staticPod: c.staticPod,
    podUid: c.uid,
    runtimeId: c.internalId,
  };
}
