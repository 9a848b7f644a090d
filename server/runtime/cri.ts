// A reader of the Container Runtime Interface (runtime.v1.RuntimeService) over the runtime's unix socket: the calls
// cosid makes to see pod sandboxes and containers, nothing that changes them. (The kubelet's write half, for the
// kubelet simulator, extends it: node-sim/kubelet/cri-client.ts.)
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { join } from 'node:path';
import { CosiError } from '../../shared/errors.js';
import { PROTO_DIR } from '../../shared/wire.js';

export type PodSandboxState = 'SANDBOX_READY' | 'SANDBOX_NOTREADY';
export type ContainerState = 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN';

export interface PodSandboxMetadata {
  name: string;
  uid: string;
  namespace: string;
  attempt: number;
}

export interface PodSandbox {
  id: string;
  metadata: PodSandboxMetadata;
  state: PodSandboxState;
  /** Nanoseconds since the epoch, as a decimal string. */
  createdAt: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface ContainerMetadata {
  name: string;
  attempt: number;
}

export interface Container {
  id: string;
  podSandboxId: string;
  metadata: ContainerMetadata;
  image: { image: string };
  imageRef: string;
  state: ContainerState;
  createdAt: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface ContainerStatus {
  id: string;
  metadata: ContainerMetadata;
  state: ContainerState;
  createdAt: string;
  startedAt: string;
  finishedAt: string;
  exitCode: number;
  image: { image: string };
  imageRef: string;
  reason: string;
  message: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  logPath: string;
}

type Unary = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] };
let runtimeService: grpc.ServiceClientConstructor | undefined;

/** runtime.v1.RuntimeService from proto/, loaded once (its `.service` is the definition a server adds). */
export function runtimeServiceConstructor(): grpc.ServiceClientConstructor {
  if (runtimeService === undefined) {
    const def = protoLoader.loadSync(join(PROTO_DIR, 'runtime', 'v1', 'api.proto'), LOADER_OPTIONS);
    const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } } };
    runtimeService = pkg.runtime.v1.RuntimeService;
  }
  return runtimeService;
}

/** The path of a unix:// endpoint (what the error messages name). */
function socketPath(endpoint: string): string {
  return endpoint.replace(/^unix:\/\//, '');
}

/** The read-only calls of runtime.v1.RuntimeService; every failure is a CosiError naming the runtime's socket. */
export class CriReader {
  private readonly client: grpc.Client;

  constructor(
    readonly endpoint: string,
    private readonly timeoutMs = 10_000,
  ) {
    if (!endpoint.startsWith('unix://')) throw new CosiError('invalid-argument', `CRI endpoint ${JSON.stringify(endpoint)} is not a unix:// socket`);
    const Ctor = runtimeServiceConstructor();
    // The runtime answers on a local socket: fail fast rather than wait for a socket that is not there.
    this.client = new Ctor(endpoint, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 << 20, 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 2000 });
  }

  close(): void {
    this.client.close();
  }

  /** One unary call of runtime.v1.RuntimeService, by name, with the default deadline unless given. */
  protected call<T>(method: string, req: object, timeoutMs = this.timeoutMs): Promise<T> {
    const fn = (this.client as unknown as Record<string, Unary>)[method];
    if (fn === undefined) throw new Error(`CRI method ${method} is not defined`);
    return new Promise((resolve, reject) => {
      fn.call(this.client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err !== null) reject(this.translate(method, err));
        else resolve(res as T);
      });
    });
  }

  /** Every failure as a CosiError; an unreachable runtime names its socket. */
  private translate(method: string, err: grpc.ServiceError): CosiError {
    const path = socketPath(this.endpoint);
    switch (err.code) {
      case grpc.status.UNAVAILABLE:
      case grpc.status.DEADLINE_EXCEEDED:
        return new CosiError('unavailable', `container runtime at ${path} is unavailable (${method}): ${err.details}`);
      case grpc.status.NOT_FOUND:
        return new CosiError('not-found', `container runtime: ${err.details}`);
      case grpc.status.INVALID_ARGUMENT:
        return new CosiError('invalid-argument', `container runtime: ${err.details}`);
      default:
        return new CosiError('internal', `container runtime at ${path} failed ${method}: ${grpc.status[err.code] ?? err.code}: ${err.details}`);
    }
  }

  async version(): Promise<{ runtimeName: string; runtimeVersion: string; runtimeApiVersion: string }> {
    return this.call('Version', { version: 'v1' });
  }

  /** All sandboxes, or those carrying every label of `labelSelector`. */
  async listPodSandboxes(filter: { labelSelector?: Record<string, string> } = {}): Promise<PodSandbox[]> {
    return (await this.call<{ items: PodSandbox[] }>('ListPodSandbox', { filter })).items;
  }

  /** The sandbox's status and, from the runtime's verbose info, its PID (0 when not known). */
  async podSandboxStatus(id: string): Promise<{ status: { id: string; state: PodSandboxState; metadata: PodSandboxMetadata }; pid: number; image: string }> {
    const res = await this.call<{ status: { id: string; state: PodSandboxState; metadata: PodSandboxMetadata }; info: Record<string, string> }>('PodSandboxStatus', { podSandboxId: id, verbose: true });
    const info = parseInfo(res.info);
    return { status: res.status, pid: pidOf(info), image: sandboxImageOf(info) };
  }

  async listContainers(filter: { podSandboxId?: string } = {}): Promise<Container[]> {
    return (await this.call<{ containers: Container[] }>('ListContainers', { filter })).containers;
  }

  async containerStatus(id: string): Promise<{ status: ContainerStatus; pid: number }> {
    const res = await this.call<{ status: ContainerStatus; info: Record<string, string> }>('ContainerStatus', { containerId: id, verbose: true });
    return { status: res.status, pid: pidOf(parseInfo(res.info)) };
  }
}

/** containerd's verbose info: one key ("info") holding JSON. */
function parseInfo(info: Record<string, string> | undefined): Record<string, unknown> {
  const text = info?.['info'];
  if (text === undefined) return {};
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function pidOf(info: Record<string, unknown>): number {
  const pid = info['pid'];
  return typeof pid === 'number' && Number.isInteger(pid) && pid > 0 ? pid : 0;
}

function sandboxImageOf(info: Record<string, unknown>): string {
  const image = info['image'];
  return typeof image === 'string' ? image : '';
}
