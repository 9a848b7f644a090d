// The client library: a connection to one cosid (or any COSI State server) over mTLS.
import * as grpc from '@grpc/grpc-js';
import type { Observable } from 'rxjs';
import { CosiError, kindOfGrpcCode } from '../shared/errors.js';
import { EventType, LabelOp, wire, type Codec, type WireEvent, type WireLabelQuery, type WireWatchRequest } from '../shared/wire.js';
import type { CosiContext } from './cosiconfig.js';
import { resilientWatch, type ReconnectOptions } from './watch.js';
import { listContainers, streamLogs, type ContainerInfo, type LogsOptions, type MachineTransport } from './machine.js';
import { fromWireResource, toDefinition, type CosiResource, type ResourceDefinition, type WatchEvent, type WatchEventType } from './resource.js';

export const DEFINITION_TYPE = 'ResourceDefinitions.meta.cosi.dev';
export const META_NAMESPACE = 'meta';
export const DEFAULT_PORT = 50000;

export interface ConnectOptions {
  /** host[:port]; the port defaults to 50000. */
  endpoint: string;
  caPem: string;
  certPem: string;
  keyPem: string;
  /** Verify the server certificate against this name instead of the endpoint host. */
  serverName?: string;
}

export type LabelOperator = 'exists' | 'equal' | 'in' | 'lt' | 'lte' | 'ltNumeric' | 'lteNumeric';

export interface LabelTerm {
  key: string;
  op: LabelOperator;
  values?: string[];
  invert?: boolean;
}

/** A label query matches when all its terms match; several queries are OR-ed. */
export interface LabelQuery {
  terms: LabelTerm[];
}

export interface ReadOptions {
  /** Defaults to the type's default namespace. */
  namespace?: string;
}

export interface ListOptions extends ReadOptions {
  labelQuery?: LabelQuery[];
  /** RE2 regular expression matched (unanchored) against IDs. */
  idRegexp?: string;
}

export interface WatchOptions extends ListOptions {
  /** Watch one resource instead of the kind. */
  id?: string;
  /** Start with the current resources as created events, then a bootstrapped event. */
  bootstrap?: boolean;
  /** Replay this many past events first. */
  tailEvents?: number;
  /** Resume right after the event that carried this bookmark. */
  fromBookmark?: Uint8Array;
  /** Ask for a noop event carrying a bookmark for the starting point. */
  bootstrapBookmark?: boolean;
  /** Let the server pack events that piled up into one message: the same events one by one here, fewer messages. */
  aggregated?: boolean;
  /** Reconnect, resume and resync after failures (default true); see CosiClient.watch. */
  reconnect?: boolean | ReconnectOptions;
}

const OPS: Record<LabelOperator, LabelOp> = {
  exists: LabelOp.EXISTS,
  equal: LabelOp.EQUAL,
  in: LabelOp.IN,
  lt: LabelOp.LT,
  lte: LabelOp.LTE,
  ltNumeric: LabelOp.LT_NUMERIC,
  lteNumeric: LabelOp.LTE_NUMERIC,
};

const EVENT_TYPES: Record<EventType, WatchEventType> = {
  [EventType.CREATED]: 'created',
  [EventType.UPDATED]: 'updated',
  [EventType.DESTROYED]: 'destroyed',
  [EventType.BOOTSTRAPPED]: 'bootstrapped',
  [EventType.ERRORED]: 'errored',
  [EventType.NOOP]: 'noop',
};

export function toWireQueries(q: LabelQuery[] | undefined): WireLabelQuery[] {
  return (q ?? []).map((query) => ({
    terms: query.terms.map((t) => ({ key: t.key, op: OPS[t.op], value: t.values ?? [], invert: t.invert ?? false })),
  }));
}

/** Turns a gRPC failure into the library's one error type, keeping the status code. */
export function toCosiError(err: unknown, endpoint: string): CosiError {
  if (err instanceof CosiError) return err;
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e.code === 'number') {
    const details = e.details ?? e.message ?? 'unknown error';
    // An error that carries the server's node header came from cosid itself (its runtime is down, say): no hint.
    const answered = e.metadata instanceof grpc.Metadata && e.metadata.get('cosi-node').length > 0;
    const hint = e.code === grpc.status.UNAVAILABLE && !answered ? ` (is cosid running at ${endpoint}, and does it trust your certificate?)` : '';
    return new CosiError(kindOfGrpcCode(e.code), `${details}${hint}`);
  }
  return new CosiError('internal', err instanceof Error ? err.message : String(err));
}

function withPort(endpoint: string): string {
  if (/^\[.*\]:\d+$/.test(endpoint) || /^[^:]+:\d+$/.test(endpoint)) return endpoint;
  if (endpoint.includes(':') && !endpoint.startsWith('[')) return `[${endpoint}]:${DEFAULT_PORT}`;
  return `${endpoint}:${DEFAULT_PORT}`;
}

/**
 * HTTP/2 receive window of a connection and of each stream. grpc-js keeps Node's 64 KiB default, so a List of
 * 10,000 resources or a few hundred busy watches on one connection wait on WINDOW_UPDATE round trips; 8 MiB lets
 * the server keep sending (bench/RESULTS.md has the figures). It is also what one connection can hold unread.
 */
export const FLOW_CONTROL_WINDOW = 8 << 20;

export class CosiClient {
  private readonly client: grpc.Client;
  private definitionsCache: Promise<ResourceDefinition[]> | undefined;
  /** The node name the server reported (header `cosi-node`), once a call has answered. */
  node: string | undefined;

  constructor(readonly endpoint: string, opts: Omit<ConnectOptions, 'endpoint'>) {
    const creds = grpc.credentials.createSsl(Buffer.from(opts.caPem), Buffer.from(opts.keyPem), Buffer.from(opts.certPem));
    const channelOptions: grpc.ChannelOptions = { 'grpc.max_receive_message_length': 64 << 20, 'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW };
    if (opts.serverName !== undefined) channelOptions['grpc.ssl_target_name_override'] = opts.serverName;
    this.client = new grpc.Client(withPort(endpoint), creds, channelOptions);
  }

  close(): void {
    this.client.close();
  }

  /** Every resource definition the server has. */
  definitions(): Promise<ResourceDefinition[]> {
    this.definitionsCache ??= this.rawList({ namespace: META_NAMESPACE, type: DEFINITION_TYPE }).then((rs) => rs.map(toDefinition));
    this.definitionsCache.catch(() => (this.definitionsCache = undefined));
    return this.definitionsCache;
  }

  /** Finds a type by its name or any alias, case-insensitively. */
  async resolveType(name: string): Promise<ResourceDefinition> {
    const wanted = name.toLowerCase();
    const defs = await this.definitions();
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

  async get(type: string, id: string, opts: ReadOptions = {}): Promise<CosiResource> {
    const def = await this.resolveType(type);
    const req = { namespace: opts.namespace ?? def.defaultNamespace, type: def.type, id };
    const res = await this.unary('Get', req, wire.getRequest as Codec<unknown>, wire.getResponse);
    if (res.resource == null) throw new CosiError('internal', 'Get answered without a resource');
    return fromWireResource(res.resource);
  }

  /** All matching resources, sorted by ID. */
  async list(type: string, opts: ListOptions = {}): Promise<CosiResource[]> {
    const out: CosiResource[] = [];
    for await (const r of this.listIter(type, opts)) out.push(r);
    return out;
  }

  /** Resources one at a time as they arrive, so a large kind is never held whole. */
  async *listIter(type: string, opts: ListOptions = {}): AsyncGenerator<CosiResource> {
    const def = await this.resolveType(type);
    yield* this.stream({
      namespace: opts.namespace ?? def.defaultNamespace,
      type: def.type,
      options: { labelQuery: toWireQueries(opts.labelQuery), idQuery: opts.idRegexp !== undefined ? { regexp: opts.idRegexp } : null },
    });
  }

  /**
   * Watches a kind (or one resource). Events arrive as an Observable; unsubscribing cancels the stream.
   * By default the watch survives failures: it reconnects with backoff and resumes from the last bookmark,
   * and when the server no longer has that point ("too old", or a restarted server) it lists again and
   * emits only the difference (events marked `resync`), so the subscriber's view converges with no gap
   * and no duplicate. Set-up errors (bad request, no permission) end the Observable with a CosiError.
   */
  watch(type: string, opts: WatchOptions = {}): Observable<WatchEvent> {
    return resilientWatch(this, type, opts);
  }

  /** The Kubernetes pods' sandboxes and containers, straight from the node's container runtime (`containers -k`). */
  containers(opts: { signal?: AbortSignal } = {}): Promise<ContainerInfo[]> {
    return listContainers(this.machine(), opts);
  }

  /** A container's log (or the kubelet's: id `kubelet`) as chunks of whole lines; see LogsOptions. */
  logs(id: string, opts: LogsOptions = {}): AsyncGenerator<Buffer> {
    return streamLogs(this.machine(), id, opts);
  }

  private machine(): MachineTransport {
    return { client: this.client, endpoint: this.endpoint, noteNode: (md) => this.noteNode(md), toError: (err) => toCosiError(err, this.endpoint) };
  }

  /** One raw Watch call: the first (empty) "ready" response is dropped; no reconnects. */
  openWatch(
    req: WireWatchRequest,
    on: { ready(): void; events(events: WatchEvent[]): void; error(err: CosiError): void; end(): void },
  ): { cancel(): void } {
    const c = this.client.makeServerStreamRequest(
      '/cosi.resource.State/Watch',
      (v: WireWatchRequest) => Buffer.from(wire.watchRequest.encode(v)),
      (b: Buffer) => b,
      req,
    );
    let cancelled = false;
    c.on('metadata', (md) => this.noteNode(md));
    c.on('data', (b: Buffer) => {
      const events = wire.watchResponse.decode(b).event.map(toWatchEvent);
      if (events.length > 0) on.events(events);
      else on.ready();
    });
    // The final status says how the stream ended ('error' and 'end' both fire around it, in no fixed order).
    c.on('error', () => {});
    c.on('status', (st: grpc.StatusObject) => {
      if (cancelled) return;
      if (st.code === grpc.status.OK) on.end();
      else on.error(toCosiError(st, this.endpoint));
    });
    return {
      cancel: () => {
        cancelled = true;
        c.cancel();
      },
    };
  }

  private noteNode(md: grpc.Metadata): void {
    const v = md.get('cosi-node')[0];
    if (typeof v === 'string' && v !== '') this.node = v;
  }

  private rawList(kind: { namespace: string; type: string }): Promise<CosiResource[]> {
    return (async () => {
      const out: CosiResource[] = [];
      for await (const r of this.stream({ ...kind, options: null })) out.push(r);
      return out;
    })();
  }

  private async *stream(req: Parameters<typeof wire.listRequest.encode>[0]): AsyncGenerator<CosiResource> {
    const call = this.client.makeServerStreamRequest(
      '/cosi.resource.State/List',
      (v: typeof req) => Buffer.from(wire.listRequest.encode(v)),
      (b: Buffer) => b,
      req,
    );
    call.on('metadata', (md) => this.noteNode(md));
    try {
      // grpc-js streams are async iterables: pulling one message at a time is the backpressure.
      for await (const b of call as AsyncIterable<Buffer>) {
        const res = wire.listResponse.decode(b);
        if (res.resource != null) yield fromWireResource(res.resource);
      }
    } catch (err) {
      throw toCosiError(err, this.endpoint);
    } finally {
      call.cancel();
    }
  }

  private unary<Req, Res>(method: string, req: Req, reqCodec: Codec<unknown>, resCodec: Codec<Res>): Promise<Res> {
    return new Promise((resolve, reject) => {
      const call = this.client.makeUnaryRequest(
        `/cosi.resource.State/${method}`,
        (v: Req) => Buffer.from(reqCodec.encode(v)),
        (b: Buffer) => resCodec.decode(b),
        req,
        (err, res) => (err != null ? reject(toCosiError(err, this.endpoint)) : res === undefined ? reject(new CosiError('internal', `${method} answered nothing`)) : resolve(res)),
      );
      call.on('metadata', (md) => this.noteNode(md));
    });
  }
}

function toWatchEvent(e: WireEvent): WatchEvent {
  return {
    type: EVENT_TYPES[e.eventType] ?? 'errored',
    ...(e.resource != null ? { resource: fromWireResource(e.resource) } : {}),
    ...(e.old != null ? { old: fromWireResource(e.old) } : {}),
    ...(e.bookmark != null ? { bookmark: new Uint8Array(e.bookmark) } : {}),
    ...(e.error != null ? { error: e.error } : {}),
  };
}

export function connect(opts: ConnectOptions): CosiClient {
  return new CosiClient(opts.endpoint, opts);
}

/** Connects to a cosiconfig context's first endpoint (or the given one). */
export function connectContext(ctx: CosiContext, endpoint?: string): CosiClient {
  const target = endpoint ?? ctx.endpoints[0];
  if (target === undefined) throw new CosiError('invalid-argument', `context ${JSON.stringify(ctx.name)} has no endpoints`);
  return new CosiClient(target, { caPem: ctx.caPem, certPem: ctx.certPem, keyPem: ctx.keyPem });
}
