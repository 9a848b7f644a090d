// Talos's node routing (apid): a call whose metadata `node` names this cosid, or that names none, is this cosid's
// to answer; a call naming another node is proxied one-to-one to that node's cosid (node-proxy.ts), with the
// caller's roles in `talos-role`, `node` removed and the hop marked with `proxyfrom`, so that a call is proxied at
// most once. Metadata `nodes` (one-to-many, deprecated in Talos 1.14) is refused. A service is routed by wrapping
// its definition and handlers: requests stay bytes until the call is known to be this node's.
import * as grpc from '@grpc/grpc-js';
import { CosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { authorizeRead, CALLER_METADATA_KEY, peerOf, PROXY_FROM_METADATA_KEY, ROLE_METADATA_KEY, type Peer } from './access.js';
import { unknownNode, type NodeRoutes, type NodeTarget } from './node-directory.js';
import { callMetadataOf, type NodeProxy } from './node-proxy.js';
import { callRecorder, toStatus, type CallRecorder } from './service.js';

/** Request metadata naming the one node a call is for (Talos: `talosctl -n`). */
export const NODE_METADATA_KEY = 'node';
/** Request metadata naming several nodes (Talos's one-to-many proxying, deprecated in Talos 1.14): refused. */
export const NODES_METADATA_KEY = 'nodes';

/** What the proxy replaces or removes of a caller's metadata before the call goes on. */
const NOT_PASSED = new Set([NODE_METADATA_KEY, NODES_METADATA_KEY, ROLE_METADATA_KEY, PROXY_FROM_METADATA_KEY, CALLER_METADATA_KEY]);

export interface NodeRouterDeps {
  directory: NodeRoutes;
  /**
   * Whether a call naming another node is answered here after all (the fleet answers a node's mirrored kinds from
   * its own copy): told the method and the decoded request. Absent: every such call is proxied.
   */
  answerHere?: (method: string, request: unknown, target: NodeTarget) => boolean;
  /** The relay; absent when this cosid has no impersonator certificate (it proxies nothing). */
  proxy: NodeProxy | undefined;
  log: Logger;
  audit: boolean;
}

/** Local: answered here (`request`: already decoded to decide). */
type Decision = { local: true; request?: unknown } | { local: false; target: NodeTarget; peer: Peer };
const LOCAL: Decision = { local: true };

export class NodeRouter {
  private readonly record: CallRecorder;

  constructor(private readonly deps: NodeRouterDeps) {
    // The calls this cosid proxies are recorded (refusals, audit) but counted in the proxy metrics, not as its own.
    this.record = callRecorder(deps.log, deps.audit, 'proxy');
  }

  /** The service's definition and handlers, routed. Methods with a streaming request (none served) stay as they are. */
  route(definition: grpc.ServiceDefinition, handlers: grpc.UntypedServiceImplementation): { definition: grpc.ServiceDefinition; handlers: grpc.UntypedServiceImplementation } {
    const routedDefinition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    const routedHandlers: grpc.UntypedServiceImplementation = {};
    for (const [name, method] of Object.entries(definition) as [string, grpc.MethodDefinition<unknown, unknown>][]) {
      const handler = handlers[name];
      if (handler === undefined || method.requestStream) {
        routedDefinition[name] = method;
        if (handler !== undefined) routedHandlers[name] = handler;
        continue;
      }
      const decode = method.requestDeserialize;
      const encode = method.responseSerialize;
      routedDefinition[name] = {
        ...method,
        requestDeserialize: (b: Buffer) => b,
        // A relayed response is the node's bytes; this node's own are serialized as before.
        responseSerialize: (v: unknown) => (v instanceof Buffer ? v : encode(v)),
      };
      routedHandlers[name] = method.responseStream ? this.streamHandler(method.path, name, handler, decode) : this.unaryHandler(method.path, name, handler, decode);
    }
    return { definition: routedDefinition, handlers: routedHandlers };
  }

  private unaryHandler(path: string, method: string, local: grpc.UntypedHandleCall, decode: (b: Buffer) => unknown): grpc.handleUnaryCall<Buffer, unknown> {
    return (call, callback) => {
      const started = Date.now();
      const decision = this.decideOrRefuse(call, method, decode, started, (status) => callback(status));
      if (decision === undefined) return;
      if (decision.local) {
        (call as { request: unknown }).request = decision.request ?? decode(call.request);
        (local as grpc.handleUnaryCall<unknown, unknown>)(call, callback);
        return;
      }
      const { target, peer } = decision;
      const proxy = this.deps.proxy as NodeProxy;
      proxy.unary(call as grpc.ServerUnaryCall<Buffer, Buffer>, callback as grpc.sendUnaryData<Buffer>, target, path, this.outgoing(call, peer), (err) =>
        this.record(call, method, { node: target.name }, started, err),
      );
    };
  }

  private streamHandler(path: string, method: string, local: grpc.UntypedHandleCall, decode: (b: Buffer) => unknown): grpc.handleServerStreamingCall<Buffer, unknown> {
    return (call) => {
      const started = Date.now();
      const decision = this.decideOrRefuse(call, method, decode, started, (status) => call.emit('error', status));
      if (decision === undefined) return;
      if (decision.local) {
        (call as { request: unknown }).request = decision.request ?? decode(call.request);
        (local as grpc.handleServerStreamingCall<unknown, unknown>)(call);
        return;
      }
      const { target, peer } = decision;
      const proxy = this.deps.proxy as NodeProxy;
      proxy.serverStream(call as grpc.ServerWritableStream<Buffer, Buffer>, target, path, this.outgoing(call, peer), (err) => this.record(call, method, { node: target.name }, started, err));
    };
  }

  /** Where the call goes; a call that cannot be routed is recorded and refused with `refuse`, and undefined returned. */
  private decideOrRefuse(
    call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
    method: string,
    decode: (b: Buffer) => unknown,
    started: number,
    refuse: (status: ReturnType<typeof toStatus>) => void,
  ): Decision | undefined {
    try {
      return this.decide(call, method, decode);
    } catch (err) {
      this.record(call, method, {}, started, err);
      refuse(toStatus(err));
      return undefined;
    }
  }

  private decide(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>, method: string, decode: (b: Buffer) => unknown): Decision {
    const md = call.metadata;
    if (md.get(NODES_METADATA_KEY).length > 0) {
      throw new CosiError('invalid-argument', 'metadata nodes is not supported (deprecated in Talos 1.14); name one node per call with metadata node');
    }
    const values = md.get(NODE_METADATA_KEY);
    if (values.length === 0) return LOCAL;
    const [value] = values;
    const name = typeof value === 'string' ? value.trim() : '';
    // Node joins a repeated header's values with ", ".
    if (values.length > 1 || name === '' || name.includes(',')) {
      throw new CosiError('invalid-argument', 'metadata node must name exactly one node; to reach several, make one call per node');
    }
    const route = this.deps.directory.route(name);
    if (route.kind === 'local') return LOCAL;
    // Nothing about other nodes, not even whether a name is known, for a caller without a role.
    const peer = peerOf(call);
    if (peer.roles.length === 0) authorizeRead(peer, false, 'this node and the nodes behind it');
    const proxied = md.get(PROXY_FROM_METADATA_KEY)[0];
    if (proxied !== undefined) {
      throw new CosiError(
        'failed-precondition',
        `node ${JSON.stringify(name)} is not this node, and the call was already proxied (proxyfrom ${JSON.stringify(String(proxied).slice(0, 100))}): a call is proxied at most once (a loop in the node list, or a second hop)`,
      );
    }
    if (route.kind === 'unknown') throw unknownNode(route.name, this.deps.directory.unknownHint());
    if (this.deps.answerHere !== undefined) {
      const request = decode(call.request as Buffer);
      if (this.deps.answerHere(method, request, route.target)) return { local: true, request };
    }
    if (this.deps.proxy === undefined) {
      throw new CosiError('failed-precondition', `node ${JSON.stringify(name)} is another node, and this cosid does not proxy: it has no impersonator certificate (start it with --impersonator-cert and --impersonator-key)`);
    }
    return { local: false, target: route.target, peer };
  }

  /** The caller's metadata as the node gets it: without `node`, with the caller's roles, subject and address. */
  private outgoing(call: { metadata: grpc.Metadata; getPeer(): string }, peer: Peer): grpc.Metadata {
    const md = callMetadataOf(call.metadata, NOT_PASSED);
    for (const role of peer.roles) md.add(ROLE_METADATA_KEY, role);
    md.set(PROXY_FROM_METADATA_KEY, call.getPeer());
    md.set(CALLER_METADATA_KEY, peer.subject);
    return md;
  }
}
