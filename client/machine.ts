// machine.MachineService calls (Talos's Containers and Logs) for the client library. Internal: the client's
// containers() and logs() are the public way in.
import type * as grpc from '@grpc/grpc-js';
import { ContainerDriver, machineWire, type WireContainerInfo } from '../shared/wire.js';
import type { CallContext } from './call.js';
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
