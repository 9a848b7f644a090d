// machine.MachineService calls (Talos's Containers and Logs) for the client library.
import * as grpc from '@grpc/grpc-js';
import { CosiError } from '../shared/errors.js';
import { ContainerDriver, machineWire, type WireContainerInfo } from '../shared/wire.js';

/** One row of `containers -k`: a pod sandbox (id `<ns>/<pod>`, podId === id) or a container in it. */
export interface ContainerInfo {
  /** `<ns>/<pod>` for a sandbox, `<ns>/<pod>:<container>:<short id>` for a container. */
  readonly id: string;
  /** `<ns>/<pod>` */
  readonly podId: string;
  /** The container's name (the sandbox's: its ID). */
  readonly name: string;
  readonly image: string;
  /** 0 when not running. */
  readonly pid: number;
  /** The runtime's state: SANDBOX_READY, CONTAINER_RUNNING, CONTAINER_EXITED, ... */
  readonly status: string;
  readonly restartCount: number;
  /** A static pod (the kubelet's file or HTTP source), not one from the API server. */
  readonly staticPod: boolean;
  /** The pod's UID. */
  readonly podUid: string;
  /** The runtime's full ID. */
  readonly runtimeId: string;
}

export interface LogsOptions {
  /** Keep streaming new lines (Ctrl-C or the signal ends it). */
  follow?: boolean;
  /** Start this many lines from the end (default: the whole log). */
  tailLines?: number;
  signal?: AbortSignal;
}

/** Who to call and how to report: the pieces of a CosiClient these calls need. */
export interface MachineTransport {
  readonly client: grpc.Client;
  readonly endpoint: string;
  noteNode(md: grpc.Metadata): void;
  toError(err: unknown): CosiError;
}

/** Service names as Talos's talosctl sends them. */
const K8S_NAMESPACE = 'k8s.io';
const SYSTEM_NAMESPACE = 'system';

export function listContainers(t: MachineTransport, opts: { signal?: AbortSignal } = {}): Promise<ContainerInfo[]> {
  return new Promise((resolve, reject) => {
    const call = t.client.makeUnaryRequest(
      '/machine.MachineService/Containers',
      (v: { namespace: string; driver: ContainerDriver }) => Buffer.from(machineWire.containersRequest.encode(v)),
      (b: Buffer) => machineWire.containersResponse.decode(b),
      { namespace: K8S_NAMESPACE, driver: ContainerDriver.CRI },
      (err, res) => {
        opts.signal?.removeEventListener('abort', cancel);
        if (err != null) return reject(t.toError(err));
        resolve((res?.messages ?? []).flatMap((m) => m.containers.map(fromWire)));
      },
    );
    const cancel = () => call.cancel();
    if (opts.signal?.aborted === true) cancel();
    opts.signal?.addEventListener('abort', cancel);
    call.on('metadata', (md) => t.noteNode(md));
  });
}

/**
 * A log as chunks of whole lines, as stored (CRI format for containers). `id` is a container ID from
 * `containers -k` (or `<ns>/<pod>:<container>` for its latest instance), or `kubelet` for the kubelet's own log.
 * Breaking out of the loop, or the signal, cancels the stream.
 */
export async function* streamLogs(t: MachineTransport, id: string, opts: LogsOptions = {}): AsyncGenerator<Buffer> {
  const system = id === 'kubelet';
  const req = {
    namespace: system ? SYSTEM_NAMESPACE : K8S_NAMESPACE,
    id,
    driver: system ? ContainerDriver.CONTAINERD : ContainerDriver.CRI,
    follow: opts.follow ?? false,
    // Talos's convention: a negative count means the whole log.
    tailLines: opts.tailLines ?? -1,
  };
  const call = t.client.makeServerStreamRequest(
    '/machine.MachineService/Logs',
    (v: typeof req) => Buffer.from(machineWire.logsRequest.encode(v)),
    (b: Buffer) => b,
    req,
  );
  call.on('metadata', (md) => t.noteNode(md));
  const cancel = () => call.cancel();
  opts.signal?.addEventListener('abort', cancel);
  try {
    if (opts.signal?.aborted === true) return;
    // Pulling one message at a time is the backpressure: the server reads the file only as fast as this loop.
    for await (const b of call as AsyncIterable<Buffer>) yield machineWire.data.decode(b).bytes;
  } catch (err) {
    if (opts.signal?.aborted === true) return;
    throw t.toError(err);
  } finally {
    opts.signal?.removeEventListener('abort', cancel);
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
