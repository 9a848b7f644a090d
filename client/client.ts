// The client library's API: a connection to one cosid (or any COSI State server) over mTLS. This file holds only
// what users see (the options, the CosiClient interface, connect); the gRPC implementation is grpc-client.ts.
import type { Observable } from 'rxjs';
import { CosiError } from '../shared/errors.js';
import type { CosiContext } from './cosiconfig.js';
import { GrpcCosiClient } from './grpc-client.js';
import type { ContainerInfo, CosiResource, ResourceDefinition, WatchEvent } from './resource.js';

export { DEFAULT_PORT, FLOW_CONTROL_WINDOW } from './connection-defaults.js';

/** Where the library's debug lines go: any object with a `debug` method (console, pino, our own logger). */
export interface ClientLogger {
  debug(message: string, fields?: Record<string, unknown>): void;
}

/** How to talk to the server, beyond the endpoint and the credentials. */
export interface ClientOptions {
  /** Verify the server certificate against this name instead of the endpoint host. */
  serverName?: string;
  /**
   * The node every call is for, when it is not the endpoint itself: sent as gRPC metadata `node`, as talosctl's
   * `-n`, and the endpoint passes the call on to that node. See also `withNode`.
   */
  node?: string;
  /**
   * Deadline, in milliseconds, of a call that produces an answer (get, list, listIter, definitions, resolveType,
   * containers) when the call does not give its own `timeoutMs` (default 30 s). Watches and logs have none.
   */
  defaultTimeoutMs?: number;
  /**
   * HTTP/2 keepalive pings, also while no call is open: a peer that stops answering is found within
   * `intervalMs + timeoutMs` and its calls fail with `unavailable` (watches then reconnect). Defaults: every 30 s,
   * 10 s to answer; cosid accepts a ping every 10 s. `false`: no pings (for servers that refuse frequent ones:
   * grpc-go's default policy closes connections pinged more often than every 5 minutes).
   */
  keepalive?: { intervalMs?: number; timeoutMs?: number } | false;
  /** Debug lines on reconnects and changes of a watch's connection state; silent by default. */
  log?: ClientLogger;
}

export interface ConnectOptions extends ClientOptions {
  /** host[:port]; the port defaults to 50000. */
  endpoint: string;

  caPem: string;
  certPem: string;
  keyPem: string;
}

/** Every call takes these. */
export interface CallOptions {
  /**
   * Cancels the call. A call that produces an answer (get, list, listIter, definitions, resolveType, containers)
   * then fails with a `cancelled` CosiError: a partial answer never passes for a whole one. A stream of happenings
   * (watchIter, watch, logs) just ends, as a `break` out of the loop does.
   */
  signal?: AbortSignal;
  /**
   * The call's deadline in milliseconds from its start, covering everything it does (resolving the type, the
   * call itself, and for listIter the time the loop body takes): past it the call fails with `deadline-exceeded`.
   * Default: the client's `defaultTimeoutMs` (30 s) for calls that produce an answer; none for watches and logs,
   * where it ends the stream with `deadline-exceeded` (over all its reconnects). `Infinity`: no deadline.
   */
  timeoutMs?: number;
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

export interface ReadOptions extends CallOptions {
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
  /**
   * Resume right after the event that carried this bookmark. With `bootstrap`: the consumer holds the picture this
   * bookmark names, so the watch resumes (no `created` for what exists) and lists again, yielding the difference as
   * `resync` events, only when the server cannot resume from it (too old, another server instance).
   */
  fromBookmark?: Uint8Array;
  /** Ask for a noop event carrying a bookmark for the starting point. */
  bootstrapBookmark?: boolean;
  /**
   * Let the server pack events that piled up into one message: the same events one by one here, fewer messages
   * (default true; at 1,000 watchers it is what lets cosid keep up: bench/RESULTS.md).
   */
  aggregated?: boolean;
  /**
   * How the server encodes events. `lean` (cosid's request metadata `cosi-event-form: lean`): about a quarter of
   * the bytes, each resource with its YAML spec only (`protoSpec` is empty) and no old resource, which the library
   * fills in from its own view. `full`: the COSI reference's form, `protoSpec` and the server's `old` included.
   * Default: lean for a watch that keeps a view (bootstrap, or one resource), full otherwise (where the library
   * would have no old resource to fill in).
   */
  eventForm?: 'lean' | 'full';
  /** Reconnect, resume and resync after failures (default true); see CosiClient.watchIter. */
  reconnect?: boolean | ReconnectOptions;
}

export interface LogsOptions extends CallOptions {
  /** Keep streaming new lines (until the signal or a break ends it). */
  follow?: boolean;
  /** Start this many lines from the end (default: the whole log). */
  tailLines?: number;
}

/**
 * How a config change is applied (talosctl's --mode): `auto` (the default, as talosctl's) and `no-reboot` apply it
 * now and save it; `try` applies it now without saving and reverts it after `tryTimeoutMs` unless a later apply
 * confirms it; `staged` saves it for the next start without applying it. Talos's REBOOT is not offered: cosid has
 * nothing to reboot (it refuses it, as Talos 1.14 does outside maintenance).
 */
export type ApplyMode = 'auto' | 'no-reboot' | 'staged' | 'try';

export interface ApplyConfigurationOptions extends CallOptions {
  /** Default `auto`. */
  mode?: ApplyMode;
  /** Change nothing; the answer's `modeDetails` says what would happen and holds a unified diff of the config. */
  dryRun?: boolean;
  /** With mode `try`: how long before the tried config is reverted (default: the server's, 1 minute). */
  tryTimeoutMs?: number;
  /**
   * The `metadata.version` of the MachineConfig `v1alpha1` resource the new config was made from (cosid's request
   * metadata `cosi-config-version`): when the running config has changed since, the apply fails with
   * `version-conflict` and nothing changes. Without it the config replaces whatever runs, as on Talos.
   */
  expectedVersion?: number;
}

export interface ApplyConfigurationResult {
  /** The node that answered (Talos's metadata.hostname). */
  node: string;
  /** What was done: `auto` answers as `no-reboot`. `reboot` only from a Talos node that chose to reboot. */
  mode: ApplyMode | 'reboot';
  /** The server's summary (a dry run's includes the diff); printed by cosictl on stderr. */
  modeDetails: string;
  /** Findings that did not stop the apply (none on a dry run). */
  warnings: string[];
}

export type ConnectionState = 'connecting' | 'streaming' | 'reconnecting' | 'resyncing' | 'closed';

/** A clock a watch waits on; tests pass one they drive by hand. The default is the global timers. */
export interface Timers {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ReconnectOptions {
  /** The delay before the first retry (default 1 s); it doubles with each failure in a row... */
  initialDelayMs?: number;
  /**
   * ...up to this (default 30 s). A success starts the doubling over: events handed out, a completed re-list, or a
   * stream that stayed up this long. A server that answers "cannot resume" (a restarted cosid) is listed again at
   * once, however long the watch waited while it was away.
   */
  maxDelayMs?: number;
  /**
   * Each delay is drawn at random between (1 - jitter) x and 1 x its value, so that clients cut off together do
   * not come back together (default 0.5; 0: exact delays).
   */
  jitter?: number;
  /** Failed attempts in a row after which the watch ends with the last failure (default: no limit). */
  maxRetries?: number;
  /** How long after the first of a row of failures the watch may still retry before it ends (default: no limit). */
  maxElapsedMs?: number;
  /** Told of every change of connection state (with the reason for reconnecting/resyncing). */
  onState?: (state: ConnectionState, detail?: string) => void;
  /** The clock for the delays and for `timeoutMs` (default: the global timers). */
  timers?: Timers;
  /** The random source of the jitter, in [0, 1) (default Math.random). */
  random?: () => number;
}

/**
 * A watch as an async iterable: `for await (const e of stream)`. Events are pulled: while the loop does not ask
 * for the next one the gRPC stream is paused, so the server's flow control reaches the consumer and a slow
 * consumer holds a bounded amount (see CosiClient.watchIter). One consumer: iterating it twice shares one stream.
 */
export interface WatchStream extends AsyncIterableIterator<WatchEvent> {
  /** Ends the watch: cancels the stream and any pending retry; a pending next() resolves as done. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** A connection to one server. Every failure of its methods is a CosiError. */
export interface CosiClient {
  /** The endpoint dialled (host:port). */
  readonly endpoint: string;
  /** The node name the server reported (response header `cosi-node`), once a call has answered. */
  readonly node: string | undefined;
  /**
   * Set when the endpoint is a cosi-fleet answering for all its nodes (response header `cosi-fleet`: the fleet's etcd
   * prefix), once a call has answered. Each resource's id is then `<node>/<id>` and its label `cosi-pods.dev/node`
   * names its node; `node` above is the fleet replica that answered, not the resources' node. Undefined otherwise,
   * and for a client naming a node (`node`, `withNode`): a fleet answers that as the node itself would.
   */
  readonly fleet?: string | undefined;
  /**
   * For a client naming a node through a cosi-fleet: why the fleet's copy of that node may not be current, as the
   * last answer said (response header `cosi-fleet-node-state`, such as `Unreachable; since=2025-01-02T03:04:05Z` or
   * `Waiting`). Undefined while the fleet follows the node live, and from any other server.
   */
  readonly fleetNodeState?: string | undefined;
  /**
   * A client for `node` behind the same endpoint (its calls carry metadata `node`), sharing this client's connection:
   * one connection to the endpoint serves every node. Closing it ends its own calls only; closing this client ends
   * the connection, and with it every such client's calls.
   */
  withNode(node: string): CosiClient;
  /** Every resource definition the server has (fetched once per client, then cached). */
  definitions(opts?: CallOptions): Promise<ResourceDefinition[]>;
  /** Finds a type by its name or any alias, case-insensitively (`not-registered`, `ambiguous` when it cannot). */
  resolveType(name: string, opts?: CallOptions): Promise<ResourceDefinition>;
  get(type: string, id: string, opts?: ReadOptions): Promise<CosiResource>;
  /** All matching resources, sorted by ID. */
  list(type: string, opts?: ListOptions): Promise<CosiResource[]>;
  /** Resources one at a time as they arrive, so a large kind is never held whole; pulled, like watchIter. */
  listIter(type: string, opts?: ListOptions): AsyncGenerator<CosiResource, void, undefined>;
  /**
   * Watches a kind (or one resource), as an async iterable with backpressure. A consumer that stops pulling holds
   * at most: the rest of the message being handed out (cosid's aggregated messages carry up to 512 events or
   * 64 KiB), the 16 decoded messages grpc-js buffers per stream, and FLOW_CONTROL_WINDOW (8 MiB) of bytes in the
   * HTTP/2 stream; past that the server stops sending (cosid parks the watcher, costing nobody else).
   *
   * By default the watch survives failures: it reconnects with backoff and jitter and resumes from the last
   * bookmark; when the server no longer has that point ("too old", a restarted server) it lists again and yields
   * only the difference (events marked `resync`), so the consumer's view converges with no gap and no duplicate.
   * A watch without `bootstrap` (of a kind) has nothing to diff against and ends with `too-old` instead. Errors
   * that retrying cannot mend (a bad request, `permission-denied`, `unauthenticated`, an unknown type) end it
   * with that CosiError, as do the limits of ReconnectOptions.
   */
  watchIter(type: string, opts?: WatchOptions): WatchStream;
  /** watchIter as an rxjs Observable (for its operators): subscribing starts a watch, unsubscribing ends it. */
  watch(type: string, opts?: WatchOptions): Observable<WatchEvent>;
  /** The Kubernetes pods' sandboxes and containers, straight from the node's container runtime (`containers -k`). */
  containers(opts?: CallOptions): Promise<ContainerInfo[]>;
  /**
   * A container's log (`<ns>/<pod>:<container>[:<id>]` as containers() lists it) or the kubelet's (id `kubelet`)
   * as chunks of whole lines, pulled: the server reads the file only as fast as the loop.
   */
  logs(id: string, opts?: LogsOptions): AsyncGenerator<Buffer, void, undefined>;
  /**
   * Replaces the node's machine config (Talos's machine.MachineService/ApplyConfiguration; os:admin only): `config`
   * is the whole YAML text. Fails with `invalid-argument` (YAML errors with line and column, an invalid pod naming
   * the pod and the field), `permission-denied`, `version-conflict` (see `expectedVersion`), `failed-precondition`
   * (another apply in progress, a config file cosid cannot write) or `unimplemented`; nothing changes then.
   */
  applyConfiguration(config: string, opts?: ApplyConfigurationOptions): Promise<ApplyConfigurationResult>;
  /** Closes the connection: calls in flight fail with `cancelled`, watches end. */
  close(): void;
  /** close(), then waits for the open watches to end. */
  [Symbol.asyncDispose](): Promise<void>;
}

export function connect(opts: ConnectOptions): CosiClient {
  return new GrpcCosiClient(opts.endpoint, opts);
}

/** Connects to a cosiconfig context's first endpoint (or the given one). */
export function connectContext(ctx: CosiContext, endpoint?: string, options: ClientOptions = {}): CosiClient {
  const target = endpoint ?? ctx.endpoints[0];
  if (target === undefined) throw new CosiError('invalid-config', `context ${JSON.stringify(ctx.name)} has no endpoints`);
  return new GrpcCosiClient(target, { ...options, caPem: ctx.caPem, certPem: ctx.certPem, keyPem: ctx.keyPem });
}
