// machine.MachineService, wire-compatible with Talos: Containers and Logs for the static pods' containers (CRI) and
// the kubelet's log, and ApplyConfiguration for the machine config (server/api/apply-config.ts). grpc-js answers
// UNIMPLEMENTED for every other method of the service.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { join } from 'node:path';
import { CosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { PROTO_DIR, type WireContainerInfo } from '../../shared/wire.js';
import { CriReader } from '../runtime/cri.js';
import { parseContainerRef, RuntimeInspector } from '../runtime/inspector.js';
import { readLog } from '../runtime/log-file.js';
import { authorizeRead, connectionOf, peerOf } from './access.js';
import { PeerCounter } from './peer-counter.js';
import { applyConfigurationHandler, type ApplierRef } from './apply-config.js';
import { callRecorder, toStatus, type RecordedCall } from './service.js';
import type { Metrics } from '../metrics.js';
import { drained, requestOf, tolerant } from './requests.js';

export interface RuntimeOptions {
  /** unix:///run/containerd/containerd.sock */
  criEndpoint: string;
  /** /var/log/pods */
  podLogsDir: string;
  /** Served as id `kubelet` in any namespace, as Talos (talosctl asks in `system`); absent: NOT_FOUND. */
  kubeletLog?: string;
}

export const DEFAULT_RUNTIME: RuntimeOptions = { criEndpoint: 'unix:///run/containerd/containerd.sock', podLogsDir: '/var/log/pods' };

export interface MachineServiceDeps {
  runtime: RuntimeOptions;
  /** Sent as response header `cosi-node`. */
  nodeName: string;
  log: Logger;
  /** One log line per call, as the State API's (off by default). */
  audit?: boolean;
  /** Open `Logs` streams one connection may hold (default 64). */
  maxLogStreamsPerConnection?: number;
  metrics?: Metrics;
  /** Who applies a machine config given with ApplyConfiguration (unset: answered UNAVAILABLE). */
  applier?: ApplierRef;
}

/** Talos's namespaces: `k8s.io` for Kubernetes' containers (driver CRI), `system` for its own services. */
const K8S_NAMESPACE = 'k8s.io';
const SYSTEM_NAMESPACE = 'system';

interface ContainersRequest {
  namespace: string;
  driver: 'CONTAINERD' | 'CRI';
}

interface LogsRequest {
  namespace: string;
  id: string;
  driver: 'CONTAINERD' | 'CRI';
  follow: boolean;
  tailLines: number;
}


const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] };

export function machineServiceDefinition(): grpc.ServiceDefinition {
  const def = protoLoader.loadSync(join(PROTO_DIR, 'machine', 'machine.proto'), LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { machine: { MachineService: grpc.ServiceClientConstructor } };
  // A request that is not valid protobuf becomes INVALID_ARGUMENT in the handler (UNIMPLEMENTED for the methods
  // cosid does not serve), not grpc-js's INTERNAL "Error deserializing request".
  const methods = Object.entries(pkg.machine.MachineService.service).map(([name, m]) => [name, { ...m, requestDeserialize: tolerant((b) => m.requestDeserialize(b)) }] as const);
  return Object.fromEntries(methods);
}

export interface MachineService {
  handlers: grpc.UntypedServiceImplementation;
  /** Closes the connection to the container runtime. */
  close(): void;
  /** Ends every open Logs stream with `err` (a graceful stop must not wait for followers that never end). */
  endAll(err: CosiError): void;
}

export function machineService(deps: MachineServiceDeps): MachineService {
  const { runtime, nodeName, log } = deps;
  const inspector = new RuntimeInspector(new CriReader(runtime.criEndpoint), runtime.podLogsDir);
  const record = callRecorder(log, deps.audit === true, 'machine.MachineService', deps.metrics);
  const maxLogStreams = deps.maxLogStreamsPerConnection ?? 64;
  // Open Logs streams by connection.
  const logStreamsByPeer = new PeerCounter();
  /** The open Logs streams, each with the way to end it. */
  const openLogs = new Set<(err: CosiError) => void>();
  const metadata = { hostname: nodeName };
  const header = new grpc.Metadata();
  header.set('cosi-node', nodeName);

  /** The node header on an error says the server answered (clients then drop their "is cosid running" hint). */
  function withNode(status: Partial<grpc.StatusObject>): Partial<grpc.StatusObject> {
    const md = status.metadata ?? new grpc.Metadata();
    md.set('cosi-node', nodeName);
    return { ...status, metadata: md };
  }

  /** Talos lets os:admin, os:operator and os:reader see containers and logs. */
  function authorize(call: RecordedCall): void {
    authorizeRead(peerOf(call), false, 'containers and logs');
  }

  const handlers: grpc.UntypedServiceImplementation = {
    ApplyConfiguration: applyConfigurationHandler({ applier: deps.applier ?? { current: undefined }, nodeName, record, withNode, header, ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}) }),

    Containers(call: grpc.ServerUnaryCall<ContainersRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
      const started = Date.now();
      void (async () => {
        try {
          authorize(call);
          const req = requestOf(call);
          if (req.namespace !== K8S_NAMESPACE || req.driver !== 'CRI') {
            throw new CosiError('unimplemented', `cosid serves the Kubernetes containers only (namespace ${K8S_NAMESPACE}, driver CRI: containers -k), not namespace ${JSON.stringify(req.namespace)} with driver ${req.driver}`);
          }
          const containers: WireContainerInfo[] = [];
          for (const p of await inspector.listPods()) {
            const common = { namespace: K8S_NAMESPACE, podId: p.id, networkNamespace: '', staticPod: p.staticPod, uid: p.uid };
            containers.push({ ...common, id: p.id, internalId: p.sandboxId, name: p.id, image: p.image, pid: p.pid, status: p.state, restartCount: 0 });
            for (const c of p.containers) {
              containers.push({ ...common, id: c.id, internalId: c.containerId, name: c.name, image: c.image, pid: c.pid, status: c.state, restartCount: c.restartCount });
            }
          }
          call.sendMetadata(header);
          record(call, 'Containers', named(call.request, ['namespace']), started);
          callback(null, { messages: [{ metadata, containers }] });
        } catch (err) {
          record(call, 'Containers', named(call.request, ['namespace']), started, err);
          callback(withNode(toStatus(err)));
        }
      })();
    },

    Logs(call: grpc.ServerWritableStream<LogsRequest, unknown>) {
      const started = Date.now();
      const abort = new AbortController();
      let release = () => {};
      let finished = false;
      /** Once per call, however it ends: its stream slot given back, the call recorded. */
      const finish = (err?: unknown) => {
        if (finished) return;
        finished = true;
        release();
        record(call, 'Logs', named(call.request, ['namespace', 'id']), started, err);
      };
      const cancelled = () => {
        abort.abort();
        finish(new CosiError('cancelled', 'cancelled by the client'));
      };
      call.on('cancelled', cancelled);
      call.on('close', cancelled);
      const end = (err: CosiError) => {
        if (abort.signal.aborted) return;
        abort.abort();
        finish(err);
        call.emit('error', withNode(toStatus(err)));
      };
      openLogs.add(end);
      abort.signal.addEventListener('abort', () => openLogs.delete(end));
      void (async () => {
        try {
          authorize(call);
          const req = requestOf(call);
          release = logStreamsByPeer.admit(connectionOf(call), maxLogStreams, `too many log streams on this connection (limit ${maxLogStreams}); close some or open another connection`);
          // A container's log stays confined to the pod logs directory at every open, rotations included.
          const { path, confineTo } = await logOf(req);
          call.sendMetadata(header);
          const reader = readLog(path, { tailLines: req.tailLines, follow: req.follow, signal: abort.signal, ...(confineTo !== undefined ? { confineTo } : {}) });
          for await (const chunk of reader) {
            if (abort.signal.aborted) break;
            // Backpressure: a client that stops reading stops the reading of the file.
            if (!call.write({ metadata, bytes: chunk })) await drained(call, abort.signal);
          }
          if (abort.signal.aborted) return;
          openLogs.delete(end);
          finish();
          call.end();
        } catch (err) {
          if (abort.signal.aborted) return;
          openLogs.delete(end);
          const cosiErr = fileErrorAsCosi(err);
          finish(cosiErr);
          const status = toStatus(cosiErr);
          if (status.code === grpc.status.INTERNAL) log.warn('logs failed', { id: call.request.id, error: status.details });
          call.emit('error', withNode(status));
        }
      })();
    },
  };
  return {
    handlers,
    close: () => inspector.close(),
    endAll: (err) => {
      for (const end of [...openLogs]) end(err);
    },
  };

  /** The file a Logs request names; a container's with the directory it must stay in. */
  async function logOf(req: LogsRequest): Promise<{ path: string; confineTo?: string }> {
    // As Talos's machined: a service log for namespace system, and for id kubelet in any namespace (the empty one too).
    if (req.namespace === SYSTEM_NAMESPACE || req.id === 'kubelet') {
      if (req.id !== 'kubelet') throw new CosiError('not-found', `service ${JSON.stringify(req.id.slice(0, 200))} not found; services: kubelet`);
      if (runtime.kubeletLog === undefined) throw new CosiError('not-found', "the kubelet's log is not served: start cosid with --kubelet-log FILE");
      return { path: runtime.kubeletLog };
    }
    if (req.namespace === '') throw new CosiError('invalid-argument', "namespace can't be empty");
    if (req.namespace !== K8S_NAMESPACE) {
      throw new CosiError('invalid-argument', `namespace ${JSON.stringify(req.namespace.slice(0, 100))} is not served: use ${K8S_NAMESPACE} (logs -k) or ${SYSTEM_NAMESPACE} (logs kubelet)`);
    }
    const ref = parseContainerRef(req.id);
    return inspector.containerLog(ref);
  }
}

/** The string fields a call named, for its audit line (empty for a request that did not decode). */
function named(request: unknown, fields: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fields) {
    const v = request !== null && typeof request === 'object' ? (request as Record<string, unknown>)[f] : undefined;
    out[f] = typeof v === 'string' ? v : '';
  }
  return out;
}

/** A log file that cannot be opened, as a CosiError naming it. */
function fileErrorAsCosi(err: unknown): unknown {
  const e = err as NodeJS.ErrnoException;
  if (err instanceof CosiError || typeof e?.code !== 'string') return err;
  if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return new CosiError('not-found', `log file ${e.path ?? ''} does not exist`);
  // ELOOP: a symlink where a container's log file should be (confined logs follow none).
  if (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'ELOOP') return new CosiError('permission-denied', `log file ${e.path ?? ''} cannot be read: ${e.code}`);
  if (e.code === 'EISDIR') return new CosiError('invalid-argument', e.message);
  return err;
}
