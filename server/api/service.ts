// The cosi.resource.State service: request decoding, access control, and the one place errors become statuses.
import * as grpc from '@grpc/grpc-js';
import { CosiError, ERROR_KIND_METADATA_KEY, isCosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { describePointer, type Kind } from '../../shared/resource.js';
import { codecFor, EVENT_FORM_METADATA_KEY, IDLE_BOOKMARKS_METADATA_KEY, stateService, type WireGetRequest, type WireListRequest, type WireWatchRequest } from '../../shared/wire.js';
import type { Registry } from '../resources/registry.js';
import { compileSelector } from '../store/query.js';
import { readableHistory, type ChangeFeed } from '../store/store.js';
import type { WatchHub } from '../watch/hub.js';
import type { Metrics } from '../metrics.js';
import { planWatch } from '../watch/plan.js';
import { authorizeRead, connectionOf, peerOf, ROLE_METADATA_KEY, type Peer } from './access.js';
import { PeerCounter } from './peer-counter.js';
import type { EventForm, Frames } from '../watch/frames.js';
import type { CurrentFrames } from '../watch/current-frames.js';
import { acceptsGzip, FramedMessage } from '../grpc-internals.js';
import { grpcWatchSink, WatchFraming } from './watch-sink.js';
import { requestOf, tolerant } from './requests.js';
import { DEFAULT_FRAMED_STREAM_LIMITS, FramedStream, type FramedStreamLimits, type FramedStreamStats } from './framed-stream.js';

export interface StateServiceDeps {
  /** Reads (Get, List, Watch) are served from the feed: each kind's state as its watch keeps it in memory. */
  feed: ChangeFeed;
  registry: Registry;
  frames: Frames;
  /** Keeps the current resources of every kind read encoded (the kind is tracked at its first read). */
  current?: CurrentFrames;
  hub: WatchHub;
  log: Logger;
  /** Sent as response header `cosi-node` so clients can fill the NODE column. */
  nodeName: string;
  /** More response headers, asked for at each call (the fleet's: `cosi-fleet`, a node's state). */
  extraHeaders?: () => Readonly<Record<string, string>> | undefined;
  /** Open watches one connection may hold (default 256). */
  maxWatchesPerConnection?: number;
  /** One log line per call: peer subject, roles, method, kind, outcome, duration (off by default). */
  audit?: boolean;
  /** Connections (with calls in flight) one remote address may hold (default 64). */
  maxConnectionsPerAddress?: number;
  metrics?: Metrics;
  /** Compress shared watch messages for clients that accept gzip (default true). */
  watchCompression?: boolean;
  /** How Lists gather their messages into writes, and how far ahead of a client they may write. */
  listLimits?: FramedStreamLimits;
  /** What the Lists in flight have queued (tests, stats). */
  listStats?: FramedStreamStats;
}

const WRITE_METHODS = ['Create', 'Update', 'Destroy', 'Teardown', 'TeardownAndDestroy'] as const;
const MAX_NAME_BYTES = 1024;

/**
 * The one mapping from any thrown value to a gRPC status: the kind's code (shared/errors.ts has the table), and the
 * kind itself as trailing metadata `cosi-error-kind`, so that kinds sharing a code (an invalid bookmark and a
 * version conflict are both FAILED_PRECONDITION) reach the client apart.
 */
export function toStatus(err: unknown): Partial<grpc.StatusObject> {
  const e = isCosiError(err) ? err : new CosiError('internal', `internal error: ${err instanceof Error ? err.message : String(err)}`);
  const metadata = new grpc.Metadata();
  metadata.set(ERROR_KIND_METADATA_KEY, e.kind);
  return { code: e.code, details: e.message, metadata };
}

/** What a call is to the one who records it: its certificate and metadata (the roles a proxy passed). */
export type RecordedCall = Pick<grpc.ServerUnaryCall<unknown, unknown>, 'getAuthContext' | 'metadata'>;

/** What one service records of each finished call: its method, what it named (kind, ID), its start, its error. */
export type CallRecorder = (call: RecordedCall, method: string, what: Readonly<Record<string, unknown>>, started: number, err?: unknown) => void;

/**
 * The one place calls are recorded, for every service: a refusal (PERMISSION_DENIED, UNAUTHENTICATED) is logged
 * once per peer subject and reason, and so is a `talos-role` sent by a peer that is no os:impersonator (ignored);
 * with `audit` every call gets one line: peer subject, roles, the proxy it came through (via, proxyfrom), method,
 * what it named (each string cut at 256 characters; lists of names come as namesForLog's count and first few),
 * outcome, duration. `metrics: undefined` leaves the call out of the call metrics (the calls a node proxies are
 * counted apart).
 */
export function callRecorder(log: Logger, audit: boolean, service: string, metrics?: Metrics): CallRecorder {
  // A bounded memory of the refusals already logged.
  const refusalsSeen = new Set<string>();
  const once = (key: string): boolean => {
    if (refusalsSeen.has(key)) return false;
    if (refusalsSeen.size >= 10_000) refusalsSeen.clear();
    refusalsSeen.add(key);
    return true;
  };
  return (call, method, what, started, err) => {
    const code = err === undefined ? grpc.status.OK : (toStatus(err).code ?? grpc.status.UNKNOWN);
    metrics?.call(service, method, grpc.status[code] ?? String(code), (Date.now() - started) / 1000, isCosiError(err, 'too-old'));
    const refused = code === grpc.status.PERMISSION_DENIED || code === grpc.status.UNAUTHENTICATED;
    const rolesSent = call.metadata.get(ROLE_METADATA_KEY).length > 0;
    // Reading the peer certificate costs real time per call: only when there is something to log.
    if (!refused && !audit && !rolesSent) return;
    let peer: Peer = { subject: '(no certificate)', roles: [] };
    try {
      peer = peerOf(call);
    } catch {
      // Without a certificate there is nothing more to say about the peer.
    }
    if (peer.forgedRoles === true && once(`${peer.subject}\u0000forged`)) {
      log.warn('talos-role ignored: the peer is not os:impersonator', { peer: peer.subject, roles: peer.roles, method });
    }
    const proxy = peer.via === undefined ? {} : { via: peer.via.subject, proxyfrom: peer.via.from };
    if (refused) {
      const reason = err instanceof Error ? err.message : String(err);
      if (once(`${peer.subject}\u0000${reason}`)) log.warn('request refused', { peer: peer.subject, roles: peer.roles, ...proxy, method, reason });
    }
    if (audit) {
      const named = Object.fromEntries(Object.entries(what).map(([k, v]) => [k, typeof v === 'string' ? v.slice(0, 256) : v]));
      log.info('audit', { peer: peer.subject, roles: peer.roles, ...proxy, method, ...named, outcome: grpc.status[code] ?? String(code), durationMs: Date.now() - started });
    }
  };
}

/**
 * The grpc-js service definition, with pass-through serializers: responses are pre-encoded (Get and List answer
 * with FramedMessage, whole gRPC messages that installFramedWrites lets through as they are).
 */
export function stateServiceDefinition(): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, Buffer>> = {};
  for (const method of stateService.methodsArray) {
    const req = codecFor(method.resolvedRequestType?.fullName.replace(/^\./, '') ?? '');
    def[method.name] = {
      path: `/cosi.resource.State/${method.name}`,
      requestStream: false,
      responseStream: method.responseStream === true,
      requestSerialize: (v) => Buffer.from(req.encode(v as Record<string, unknown>)),
      // A request that is not valid protobuf becomes INVALID_ARGUMENT in the handler, not grpc-js's INTERNAL.
      requestDeserialize: tolerant((b) => req.decode(b)),
      responseSerialize: (b) => b,
      responseDeserialize: (b) => b,
    };
  }
  return def;
}

export function stateServiceHandlers(deps: StateServiceDeps): grpc.UntypedServiceImplementation {
  const { feed, registry, frames, hub, log } = deps;
  const maxWatches = deps.maxWatchesPerConnection ?? 256;
  const maxConnections = deps.maxConnectionsPerAddress ?? 64;
  // Calls in flight per connection, and connections per remote address (grpc-js names a connection "ip:port").
  const callsByPeer = new PeerCounter();
  const peersByAddress = new Map<string, Set<string>>();
  // A proxied caller's connection is "ip:port (through ip:port)": its own address counts.
  const addressOf = (peer: string) => peer.replace(/ \(through .*\)$/, '').replace(/:\d+$/, '');
  /** Counts a call against its connection and address; throws when the address holds too many connections. */
  function admit(call: RecordedCall & { getPeer(): string }): () => void {
    const peer = connectionOf(call);
    const address = addressOf(peer);
    const peers = peersByAddress.get(address) ?? new Set<string>();
    if (!peers.has(peer) && peers.size >= maxConnections) {
      throw new CosiError('resource-exhausted', `too many connections from ${address} (limit ${maxConnections}); reuse a connection`);
    }
    peers.add(peer);
    peersByAddress.set(address, peers);
    callsByPeer.up(peer);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (callsByPeer.down(peer) > 0) return;
      peers.delete(peer);
      if (peers.size === 0) peersByAddress.delete(address);
    };
  }
  // Open watches by connection.
  const watchesByPeer = new PeerCounter();
  const header = new grpc.Metadata();
  header.set('cosi-node', deps.nodeName);
  // Watches whose client accepts gzip get the messages many watchers share compressed (once for all of them).
  const gzipHeader = header.clone();
  gzipHeader.set('grpc-encoding', 'gzip');
  /** The response header of one call: the fixed one, or a copy with the extra headers of the moment. */
  const headerOf = (base: grpc.Metadata): grpc.Metadata => {
    const extra = deps.extraHeaders?.();
    if (extra === undefined) return base;
    const h = base.clone();
    for (const [k, v] of Object.entries(extra)) h.set(k, v);
    return h;
  };
  const watchFraming = new WatchFraming();
  const recordCall = callRecorder(log, deps.audit === true, 'cosi.resource.State', deps.metrics);
  /** Audit line and refusal log for one finished call. */
  const record = (call: RecordedCall, method: string, type: string, started: number, err?: unknown): void =>
    recordCall(call, method, { type }, started, err);
  const typeOf = (request: unknown): string => {
    const t = request !== null && typeof request === 'object' && 'type' in request ? (request as { type: unknown }).type : undefined;
    return typeof t === 'string' ? t : '';
  };

  /** Validates the kind and the caller's right to read it. */
  function checkRead(call: RecordedCall, kind: Kind): void {
    const peer = peerOf(call);
    if (peer.roles.length === 0) authorizeRead(peer, false, kind.type);
    checkName('namespace', kind.namespace);
    checkName('type', kind.type);
    const def = registry.lookup(kind.type);
    // As Talos answers a kind it does not serve (its access filter): permission denied, in its words.
    if (def === undefined) throw new CosiError('permission-denied', `resource type ${JSON.stringify(kind.type)} is not supported`);
    if (!registry.hasNamespace(kind.namespace)) throw new CosiError('permission-denied', `namespace ${JSON.stringify(kind.namespace)} is not supported`);
    authorizeRead(peer, def.sensitive, kind.type);
  }

  const handlers: grpc.UntypedServiceImplementation = {
    Get(call: grpc.ServerUnaryCall<WireGetRequest, FramedMessage>, callback: grpc.sendUnaryData<FramedMessage>) {
      const started = Date.now();
      void (async () => {
        let release = () => {};
        try {
          release = admit(call);
          const req = requestOf(call);
          checkRead(call, req);
          checkName('id', req.id);
          const history = await readableHistory(feed, req);
          deps.current?.track(history);
          const r = history.current(req.id);
          if (r === undefined) throw new CosiError('not-found', `${describePointer(req)} doesn't exist`);
          call.sendMetadata(headerOf(header));
          // The bytes kept since the version was committed, without a copy.
          callback(null, FramedMessage.of(frames.message(r)));
          record(call, 'Get', req.type, started);
        } catch (err) {
          record(call, 'Get', typeOf(call.request), started, err);
          callback(toStatus(err));
        } finally {
          release();
        }
      })();
    },

    List(call: grpc.ServerWritableStream<WireListRequest, FramedMessage>) {
      const started = Date.now();
      void (async () => {
        let release = () => {};
        try {
          release = admit(call);
          const req = requestOf(call);
          checkRead(call, req);
          const selector = compileSelector(req.options?.labelQuery ?? [], req.options?.idQuery);
          const history = await readableHistory(feed, req);
          deps.current?.track(history);
          const all = deps.current?.list(history) ?? history.list();
          const items = selector.everything ? all : all.filter((r) => selector.matches(r.metadata));
          call.sendMetadata(headerOf(header));
          // Each resource's message as it was encoded at its commit, many to a write; a slow client parks the List.
          const out = new FramedStream(call, deps.listLimits ?? DEFAULT_FRAMED_STREAM_LIMITS, deps.listStats);
          for (const r of items) {
            if (call.cancelled) break;
            if (!out.add(frames.message(r))) await out.room();
          }
          out.flush();
          if (call.cancelled) {
            // Recorded like any other end: a List cut short by its client is a call too.
            record(call, 'List', req.type, started, new CosiError('cancelled', 'cancelled by the client'));
            return;
          }
          call.end();
          record(call, 'List', req.type, started);
        } catch (err) {
          record(call, 'List', typeOf(call.request), started, err);
          call.emit('error', toStatus(err));
        } finally {
          release();
        }
      })();
    },

    Watch(call: grpc.ServerWritableStream<WireWatchRequest, FramedMessage>) {
      const started = Date.now();
      let releaseConnection = () => {};
      try {
        releaseConnection = admit(call);
        const req = requestOf(call);
        checkRead(call, req);
        if (req.id !== undefined) checkName('id', req.id);
        const plan = { ...planWatch(req, feed.instance), form: eventFormOf(call.metadata), idleBookmarks: idleBookmarksOf(call.metadata) };
        const gzip = deps.watchCompression !== false && acceptsGzip(call);
        const peer = connectionOf(call);
        if (watchesByPeer.get(peer) >= maxWatches) {
          throw new CosiError('resource-exhausted', `too many watches on this connection (limit ${maxWatches}); close some or open another connection`);
        }
        watchesByPeer.up(peer);
        let counted = true;
        const release = () => {
          releaseConnection();
          if (!counted) return;
          counted = false;
          watchesByPeer.down(peer);
        };
        call.sendMetadata(headerOf(gzip ? gzipHeader : header));
        // Its bootstrap and events are built from the kind's encoded resources: kept encoded from now on.
        const current = deps.current;
        if (current !== undefined) void readableHistory(feed, req).then((h) => current.track(h), () => undefined);
        const watch = hub.open(
          plan,
          grpcWatchSink(call, {
            framing: watchFraming,
            gzip,
            form: plan.form,
            metrics: deps.metrics,
            maxBufferedBytes: hub.limits.maxBufferedBytes,
            end: (error) => {
              record(call, 'Watch', req.type, started, error);
              if (error === undefined) call.end();
              else call.emit('error', toStatus(error));
            },
          }),
        );
        call.on('cancelled', () => {
          if (counted) record(call, 'Watch', req.type, started, new CosiError('cancelled', 'cancelled by the client'));
          watch.close();
          release();
        });
        call.on('close', () => {
          watch.close();
          release();
        });
      } catch (err) {
        releaseConnection();
        record(call, 'Watch', typeOf(call.request), started, err);
        call.emit('error', toStatus(err));
      }
    },
  };

  for (const name of WRITE_METHODS) {
    // Resources are produced by the node itself: nobody writes through the API.
    handlers[name] = (call: grpc.ServerUnaryCall<unknown, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      const err = new CosiError('permission-denied', 'write access is not allowed');
      record(call, name, typeOf(call.request), Date.now(), err);
      callback(toStatus(err));
    };
  }
  return handlers;
}

function eventFormOf(metadata: grpc.Metadata): EventForm {
  return metadataChoice(metadata, EVENT_FORM_METADATA_KEY, ['lean', 'full'], 'full');
}

function idleBookmarksOf(metadata: grpc.Metadata): boolean {
  return metadataChoice(metadata, IDLE_BOOKMARKS_METADATA_KEY, ['on', 'off'], 'off') === 'on';
}

/** One of `values` from request metadata `key` (absent: `absent`); anything else is INVALID_ARGUMENT naming them. */
function metadataChoice<T extends string>(metadata: grpc.Metadata, key: string, values: readonly [T, T], absent: T): T {
  const [value] = metadata.get(key);
  if (value === undefined) return absent;
  const known = values.find((v) => v === value);
  if (known !== undefined) return known;
  throw new CosiError('invalid-argument', `${key} must be "${values[0]}" or "${values[1]}", not ${JSON.stringify(String(value))}`);
}

function checkName(field: string, value: string): void {
  if (value === '') throw new CosiError('invalid-argument', `${field} must not be empty`);
  if (Buffer.byteLength(value, 'utf8') > MAX_NAME_BYTES) throw new CosiError('invalid-argument', `${field} is longer than ${MAX_NAME_BYTES} bytes`);
}
