// The CosiClient over grpc-js. Internal: users get it from connect() as the CosiClient interface, so neither this
// class nor grpc-js's types are part of the published declarations.
import './dispose.js';
import { setMaxListeners } from 'node:events';
import { isIP } from 'node:net';
import { checkServerIdentity } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Observable } from 'rxjs';
import { CosiError } from '../shared/errors.js';
import { EVENT_FORM_METADATA_KEY, IDLE_BOOKMARKS_METADATA_KEY, wire, type Codec, type WireListRequest } from '../shared/wire.js';
import { CallContext, checkMs, connectionFailure, NODE_METADATA_KEY, toCosiError } from './call.js';
import { DEFAULT_PORT, FLOW_CONTROL_WINDOW } from './connection-defaults.js';
import type { ApplyConfigurationOptions, ApplyConfigurationResult, CallOptions, ClientLogger, ConnectOptions, CosiClient, ListOptions, LogsOptions, ReadOptions, WatchOptions, WatchStream } from './client.js';
import { diagnoseConnection, type ProbeTarget } from './diagnose.js';
import { fromWireResource, toDefinition, toWatchEvent, toWireQueries, toWireWatchRequest, type WatchRequest } from './convert.js';
import { applyConfiguration, listContainers, streamLogs, type MachineTransport } from './machine.js';
import type { ContainerInfo, CosiResource, ResourceDefinition, WatchEvent } from './resource.js';
import type { Closable, WatchTransport } from './reflector.js';
import { observeWatch, openWatchStream } from './watch.js';

const DEFINITION_TYPE = 'ResourceDefinitions.meta.cosi.dev';
const META_NAMESPACE = 'meta';
/** The deadline of a call that produces an answer, unless the client or the call says otherwise. */
export const DEFAULT_TIMEOUT_MS = 30_000;
/** Keepalive pings: cosid answers a ping every 10 s at most, and waits 20 s for the answer to its own. */
const KEEPALIVE_INTERVAL_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 10_000;

function withPort(endpoint: string): string {
  if (/^\[.*\]:\d+$/.test(endpoint) || /^[^:]+:\d+$/.test(endpoint)) return endpoint;
  if (endpoint.includes(':') && !endpoint.startsWith('[')) return `[${endpoint}]:${DEFAULT_PORT}`;
  return `${endpoint}:${DEFAULT_PORT}`;
}

/** The host of host:port or [v6]:port, brackets removed. */
function hostOf(target: string): string {
  const bracketed = /^\[(.*)\]:\d+$/.exec(target);
  if (bracketed?.[1] !== undefined) return bracketed[1];
  const colon = target.lastIndexOf(':');
  return colon < 0 ? target : target.slice(0, colon);
}

/**
 * The TLS server name (SNI) the client sends when it verifies the server against an IP address. grpc-js always sends
 * one: the endpoint's host, or `grpc.ssl_target_name_override`. An IP address there is against RFC 6066 and makes
 * Node print DEP0123 in the user's process; a name from the reserved `.invalid` domain (RFC 2606) is a legal SNI
 * that can mean nobody. cosid and Go's TLS servers (Talos's apid) ignore it; the certificate is still checked
 * against the IP address (IP SAN), by checkServerIdentity below.
 */
const IP_ENDPOINT_SNI = 'ip-address.invalid';

/** How the server's certificate is checked: against `serverName`, else the endpoint's host; never SNI with an IP. */
function serverIdentity(target: string, serverName: string | undefined): { channelOptions: grpc.ChannelOptions; verify: grpc.VerifyOptions } {
  const name = serverName ?? hostOf(target);
  if (isIP(name) !== 0) {
    return { channelOptions: { 'grpc.ssl_target_name_override': IP_ENDPOINT_SNI }, verify: { checkServerIdentity: (_sni, cert) => checkServerIdentity(name, cert) } };
  }
  return { channelOptions: serverName !== undefined ? { 'grpc.ssl_target_name_override': serverName } : {}, verify: {} };
}

export class GrpcCosiClient implements CosiClient, WatchTransport, MachineTransport {
  readonly channel: grpc.Client;
  readonly log: ClientLogger | undefined;
  private readonly defaultTimeoutMs: number;
  /** Aborted by close(): every call listens to it. */
  private readonly closing = new AbortController();
  private readonly watches = new Set<Closable>();
  private definitionsCache: Promise<ResourceDefinition[]> | undefined;
  private reportedNode: string | undefined;
  private reportedFleet: string | undefined;
  private reportedFleetNodeState: string | undefined;
  /** Where and how to dial again to tell why a connection failed. */
  private readonly probeTarget: ProbeTarget;
  /** The diagnosis in flight: calls that fail together share one second dial. */
  private diagnosing: Promise<string | undefined> | undefined;

  /** The node every call names (metadata `node`), or undefined: the endpoint itself. */
  private readonly namedNode: string | undefined;
  /** Closing this client closes the connection (false for a withNode client, which borrows its parent's). */
  private readonly ownsChannel: boolean;

  constructor(
    readonly endpoint: string,
    opts: Omit<ConnectOptions, 'endpoint'>,
    parent?: GrpcCosiClient,
  ) {
    if (typeof endpoint !== 'string' || endpoint.trim() === '') throw new CosiError('invalid-argument', 'connect needs an endpoint (host or host:port)');
    this.defaultTimeoutMs = checkMs('defaultTimeoutMs', opts.defaultTimeoutMs, DEFAULT_TIMEOUT_MS);
    this.log = opts.log;
    if (opts.node !== undefined && (typeof opts.node !== 'string' || opts.node.trim() === '' || opts.node.includes(','))) {
      throw new CosiError('invalid-argument', `node must be one node's name or address, not ${JSON.stringify(opts.node)}`);
    }
    this.namedNode = opts.node;
    // Every call in flight listens for close(); hundreds of watches on one client are normal.
    setMaxListeners(0, this.closing.signal);
    if (parent !== undefined) {
      this.channel = parent.channel;
      this.probeTarget = parent.probeTarget;
      this.ownsChannel = false;
      // The parent's close ends the shared connection: this client's calls end with it.
      parent.closing.signal.addEventListener('abort', () => this.close(), { once: true, signal: this.closing.signal });
      return;
    }
    this.ownsChannel = true;
    const channelOptions: grpc.ChannelOptions = { 'grpc.max_receive_message_length': 64 << 20, 'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW };
    if (opts.keepalive !== false) {
      channelOptions['grpc.keepalive_time_ms'] = finite('keepalive.intervalMs', opts.keepalive?.intervalMs, KEEPALIVE_INTERVAL_MS);
      channelOptions['grpc.keepalive_timeout_ms'] = finite('keepalive.timeoutMs', opts.keepalive?.timeoutMs, KEEPALIVE_TIMEOUT_MS);
      // Also while no call is open: a watch between reconnects, or a client kept for later calls.
      channelOptions['grpc.keepalive_permit_without_calls'] = 1;
    }
    const target = withPort(endpoint);
    const identity = serverIdentity(target, opts.serverName);
    const host = hostOf(target);
    this.probeTarget = { target, host, port: Number(target.slice(target.lastIndexOf(':') + 1)), name: opts.serverName ?? host, caPem: opts.caPem, certPem: opts.certPem, keyPem: opts.keyPem };
    try {
      const creds = grpc.credentials.createSsl(Buffer.from(opts.caPem), Buffer.from(opts.keyPem), Buffer.from(opts.certPem), identity.verify);
      this.channel = new grpc.Client(target, creds, { ...channelOptions, ...identity.channelOptions });
    } catch (err) {
      throw new CosiError('invalid-argument', `cannot connect to ${endpoint}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  withNode(node: string): GrpcCosiClient {
    return new GrpcCosiClient(this.endpoint, { defaultTimeoutMs: this.defaultTimeoutMs, ...(this.log !== undefined ? { log: this.log } : {}), node, caPem: '', certPem: '', keyPem: '' }, this);
  }

  get node(): string | undefined {
    return this.reportedNode;
  }

  get fleet(): string | undefined {
    return this.reportedFleet;
  }

  get fleetNodeState(): string | undefined {
    return this.reportedFleetNodeState;
  }

  close(): void {
    if (this.closing.signal.aborted) return;
    this.log?.debug('client closing', { endpoint: this.endpoint, watches: this.watches.size });
    this.closing.abort();
    if (this.ownsChannel) this.channel.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    const open = [...this.watches];
    this.close();
    await Promise.all(open.map((w) => w.close()));
  }

  definitions(opts: CallOptions = {}): Promise<ResourceDefinition[]> {
    const ctx = this.context('definitions', opts);
    return ctx.race(this.definitionsShared());
  }

  async resolveType(name: string, opts: CallOptions = {}): Promise<ResourceDefinition> {
    return this.resolve(name, this.context('resolveType', opts));
  }

  async get(type: string, id: string, opts: ReadOptions = {}): Promise<CosiResource> {
    const ctx = this.context('Get', opts);
    const def = await this.resolve(type, ctx);
    const req = { namespace: opts.namespace ?? def.defaultNamespace, type: def.type, id };
    const res = await this.unary(ctx, 'Get', req, wire.getRequest as Codec<unknown>, wire.getResponse);
    if (res.resource == null) throw new CosiError('internal', 'Get answered without a resource');
    return fromWireResource(res.resource);
  }

  async list(type: string, opts: ListOptions = {}): Promise<CosiResource[]> {
    const out: CosiResource[] = [];
    for await (const r of this.listIter(type, opts)) out.push(r);
    return out;
  }

  async *listIter(type: string, opts: ListOptions = {}): AsyncGenerator<CosiResource, void, undefined> {
    const ctx = this.context('List', opts);
    const def = await this.resolve(type, ctx);
    yield* this.stream(ctx, {
      namespace: opts.namespace ?? def.defaultNamespace,
      type: def.type,
      options: { labelQuery: toWireQueries(opts.labelQuery), idQuery: opts.idRegexp !== undefined ? { regexp: opts.idRegexp } : null },
    });
  }

  watchIter(type: string, opts: WatchOptions = {}): WatchStream {
    return openWatchStream(this, type, opts);
  }

  watch(type: string, opts: WatchOptions = {}): Observable<WatchEvent> {
    return observeWatch(this, type, opts);
  }

  containers(opts: CallOptions = {}): Promise<ContainerInfo[]> {
    return listContainers(this, this.context('Containers', opts));
  }

  applyConfiguration(config: string, opts: ApplyConfigurationOptions = {}): Promise<ApplyConfigurationResult> {
    return applyConfiguration(this, config, opts, this.context('ApplyConfiguration', opts));
  }

  logs(id: string, opts: LogsOptions = {}): AsyncGenerator<Buffer, void, undefined> {
    // A log is paced by its reader (a pager, a slow pipe): no deadline unless the caller sets one.
    return streamLogs(this, id, opts, this.context('Logs', opts, Infinity));
  }

  // --- WatchTransport and MachineTransport: what watch.ts and machine.ts call back into.

  get closed(): AbortSignal {
    return this.closing.signal;
  }

  trackWatch(w: Closable): () => void {
    this.watches.add(w);
    return () => this.watches.delete(w);
  }

  /** What a response header says about the server: its node name, and a fleet's `cosi-fleet` and node state. */
  noteNode(md: grpc.Metadata): void {
    const v = md.get('cosi-node')[0];
    if (typeof v === 'string' && v !== '') this.reportedNode = v;
    const fleet = md.get('cosi-fleet')[0];
    if (typeof fleet === 'string' && fleet !== '') this.reportedFleet = fleet;
    // Each answer tells the node's state of the moment: no header means the fleet follows it (again).
    const state = md.get('cosi-fleet-node-state')[0];
    this.reportedFleetNodeState = typeof state === 'string' && state !== '' ? state : undefined;
  }

  /** One raw Watch call, no reconnects: each message's events ([] is the "ready" marker), pulled. */
  async *watchOnce(req: WatchRequest, signal: AbortSignal): AsyncGenerator<WatchEvent[], void, undefined> {
    if (signal.aborted || this.closing.signal.aborted) return;
    const metadata = new grpc.Metadata();
    if (req.lean === true) metadata.set(EVENT_FORM_METADATA_KEY, 'lean');
    // Fresh bookmarks while idle keep a resume point inside the server's history even when the kind changes in ways
    // this watch filters out.
    metadata.set(IDLE_BOOKMARKS_METADATA_KEY, 'on');
    if (this.namedNode !== undefined) metadata.set(NODE_METADATA_KEY, this.namedNode);
    const call = this.channel.makeServerStreamRequest('/cosi.resource.State/Watch', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(wire.watchRequest.encode(toWireWatchRequest(req))), metadata);
    call.on('metadata', (md) => this.noteNode(md));
    const cancel = () => call.cancel();
    signal.addEventListener('abort', cancel);
    this.closing.signal.addEventListener('abort', cancel);
    try {
      // grpc-js's stream is a Readable: its async iterator reads one message per pull, and grpc-js asks the HTTP/2
      // stream for more only while its buffer (16 messages) has room, so a consumer that stops pulling stops the
      // server too (HTTP/2 flow control).
      for await (const b of call as AsyncIterable<Buffer>) yield wire.watchResponse.decode(b).event.map(toWatchEvent);
    } catch (err) {
      if (signal.aborted) return;
      if (this.closing.signal.aborted) throw new CosiError('cancelled', 'the client was closed');
      throw await connectionFailure(err, toCosiError(err, this.endpoint), this.diagnose, signal);
    } finally {
      signal.removeEventListener('abort', cancel);
      this.closing.signal.removeEventListener('abort', cancel);
      call.cancel();
    }
  }

  // --- internals

  private context(what: string, opts: CallOptions, defaultTimeoutMs = this.defaultTimeoutMs): CallContext {
    return new CallContext(what, this.endpoint, opts, defaultTimeoutMs, this.closing.signal, this.diagnose, this.namedNode);
  }

  /** Why the connection fails, in one line (client/diagnose.ts); undefined when a second dial cannot tell. */
  private readonly diagnose = (signal: AbortSignal): Promise<string | undefined> => {
    if (this.diagnosing === undefined) {
      const closing = this.closing.signal;
      const running = diagnoseConnection(this.probeTarget, closing).finally(() => {
        if (this.diagnosing === running) this.diagnosing = undefined;
      });
      this.diagnosing = running;
    }
    const shared = this.diagnosing;
    // The caller may stop waiting (its watch ended); the dial goes on for the others.
    return new Promise((resolve) => {
      const stop = () => resolve(undefined);
      if (signal.aborted) return stop();
      signal.addEventListener('abort', stop, { once: true });
      void shared.then((why) => {
        signal.removeEventListener('abort', stop);
        resolve(why);
      });
    });
  };

  /** The definitions, fetched once for all callers with the client's own deadline; a failure is not kept. */
  private definitionsShared(): Promise<ResourceDefinition[]> {
    if (this.definitionsCache === undefined) {
      const ctx = this.context('List', {});
      const fetching = (async () => {
        const out: ResourceDefinition[] = [];
        for await (const r of this.stream(ctx, { namespace: META_NAMESPACE, type: DEFINITION_TYPE, options: null })) out.push(toDefinition(r));
        return out;
      })();
      this.definitionsCache = fetching;
      fetching.catch(() => {
        if (this.definitionsCache === fetching) this.definitionsCache = undefined;
      });
    }
    return this.definitionsCache;
  }

  private async resolve(name: string, ctx: CallContext): Promise<ResourceDefinition> {
    const wanted = name.toLowerCase();
    const defs = await ctx.race(this.definitionsShared());
    const exact = defs.filter((d) => d.type.toLowerCase() === wanted);
    const matches = exact.length > 0 ? exact : defs.filter((d) => d.allAliases.some((a) => a.toLowerCase() === wanted));
    if (matches.length === 0) throw new CosiError('not-registered', `resource ${JSON.stringify(name)} is not registered (list the types with: cosictl get rd)`);
    if (matches.length > 1) {
      throw new CosiError('ambiguous', `resource type ${JSON.stringify(name)} is ambiguous: ${matches.map((d) => d.type).join(', ')} (use the full type name)`);
    }
    const [def] = matches;
    if (def === undefined) throw new CosiError('internal', 'unreachable');
    return def;
  }

  private async *stream(ctx: CallContext, req: WireListRequest): AsyncGenerator<CosiResource, void, undefined> {
    ctx.throwIfCancelled();
    const call = this.channel.makeServerStreamRequest(
      '/cosi.resource.State/List',
      (v: WireListRequest) => Buffer.from(wire.listRequest.encode(v)),
      (b: Buffer) => b,
      req,
      ctx.grpcOptions(),
    );
    call.on('metadata', (md) => this.noteNode(md));
    const stop = ctx.onCancel(() => call.cancel());
    try {
      // grpc-js streams are async iterables: pulling one message at a time is the backpressure.
      for await (const b of call as AsyncIterable<Buffer>) {
        const res = wire.listResponse.decode(b);
        if (res.resource != null) yield fromWireResource(res.resource);
      }
    } catch (err) {
      throw await ctx.failure(err);
    } finally {
      stop();
      call.cancel();
    }
  }

  private unary<Req, Res>(ctx: CallContext, method: string, req: Req, reqCodec: Codec<unknown>, resCodec: Codec<Res>): Promise<Res> {
    return new Promise((resolve, reject) => {
      ctx.throwIfCancelled();
      let stop = () => {};
      const call = this.channel.makeUnaryRequest(
        `/cosi.resource.State/${method}`,
        (v: Req) => Buffer.from(reqCodec.encode(v)),
        (b: Buffer) => resCodec.decode(b),
        req,
        ctx.grpcOptions(),
        (err, res) => {
          stop();
          if (err != null) void ctx.failure(err).then(reject);
          else if (res === undefined) reject(new CosiError('internal', `${method} answered nothing`));
          else resolve(res);
        },
      );
      call.on('metadata', (md) => this.noteNode(md));
      stop = ctx.onCancel(() => call.cancel());
    });
  }
}

function finite(name: string, value: number | undefined, fallback: number): number {
  const ms = checkMs(name, value, fallback);
  if (!Number.isFinite(ms)) throw new CosiError('invalid-argument', `${name} must be a finite number of milliseconds`);
  return ms;
}
