// The relay of a call this cosid proxies to another node's cosid: request and responses as bytes (never decoded),
// one long-lived HTTP/2 channel per node shared by every caller (grpc-js reconnects it with backoff), the response
// stream paced by the caller (a caller that stops reading stops the reading from the node, whose watch then parks
// as for a direct watcher), cancellation and deadline passed on, and the node's headers, status and trailers
// returned as the node sent them. What the node did not say (it cannot be reached, it refused our certificate) is
// said in this cosid's words, naming the node.
import * as grpc from '@grpc/grpc-js';
import { isIP } from 'node:net';
import { checkServerIdentity } from 'node:tls';
import { CosiError, ERROR_KIND_METADATA_KEY, kindOfStatus } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { probe, type ProbeOutcome } from '../../shared/tls-probe.js';
import type { TlsMaterial } from '../tls/material.js';
import { splitHostPort, type NodeTarget } from './node-directory.js';
import { toStatus } from './service.js';
import { IMPERSONATOR_ROLE } from './access.js';

/** What the relay counts (server/metrics.ts). */
export interface ProxyMetrics {
  /** A proxied call ended: unary or stream, and its outcome (the status code's name, or unreachable). */
  proxied(node: string, type: 'unary' | 'stream', outcome: string): void;
  /** Counts bytes of messages relayed, to the node (requests) or from it (responses): one counter per call, used per message. */
  relayCounter(node: string, direction: 'to-node' | 'from-node'): (bytes: number) => void;
}

export interface NodeProxyOptions {
  /** The client certificate (role os:impersonator) this cosid dials nodes with, and the CA their certificates have. */
  identity: TlsMaterial;
  log: Logger;
  metrics?: ProxyMetrics;
  /** Channels kept open at most (default 256); the least recently used one without calls is closed for a new one. */
  maxChannels?: number;
  /** Bytes of a response stream the relay holds for a slow caller before it stops reading from the node (default 1 MiB). */
  maxBufferedBytes?: number;
}

/** How a relayed call ended, for the one who records it: undefined for OK, else an error with the code sent. */
export type RelayEnd = (err?: CosiError) => void;

/**
 * HTTP/2 receive window of each stream from a node: what a stalled caller's stream can hold at the endpoint besides
 * the relay's own budget (Node gives a paused stream's bytes back to the connection window at once, so a stalled
 * stream never stalls the others on the same connection; test/node-routing.test.ts checks it).
 */
const STREAM_WINDOW = 1 << 20;

const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': 64 << 20,
  'grpc-node.flow_control_window': STREAM_WINDOW,
  // A node that stops answering is found while a watch waits on it; no pings while no call is open.
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  // A node back from a restart is reached again soon: callers retry through the endpoint on their own backoff.
  'grpc.initial_reconnect_backoff_ms': 250,
  'grpc.max_reconnect_backoff_ms': 5_000,
};

/** The TLS server name sent when a node is dialed by IP address (an IP there is against RFC 6066); see client/grpc-client.ts. */
const IP_SNI = 'ip-address.invalid';

/** Headers and trailers that belong to one HTTP/2 hop, not to the call: grpc-js sets its own on each. */
const HOP_KEYS = new Set(['content-type', 'date', 'te', 'user-agent', 'grpc-encoding', 'grpc-accept-encoding', 'grpc-status', 'grpc-message', 'grpc-timeout']);

/** The call's own metadata of `md`, without what belongs to the hop it came on. */
export function callMetadataOf(md: grpc.Metadata, drop: ReadonlySet<string> = new Set()): grpc.Metadata {
  const out = md.clone();
  for (const key of Object.keys(out.getMap())) if (HOP_KEYS.has(key) || drop.has(key) || key.startsWith(':')) out.remove(key);
  return out;
}

const identityCodec = (b: Buffer): Buffer => b;

interface Channel {
  client: grpc.Client;
  calls: number;
}

export class NodeProxy {
  /** By address, least recently used first. */
  private readonly channels = new Map<string, Channel>();
  /** Every relayed call in flight, with the way to end it. */
  private readonly inFlight = new Set<(err: CosiError) => void>();
  private readonly maxChannels: number;
  private readonly maxBufferedBytes: number;
  /** Second dials in flight, by address. */
  private readonly probes = new Map<string, Promise<ProbeOutcome | undefined>>();
  /** Open streams by node, for the metrics. */
  readonly openStreams = new Map<string, number>();

  constructor(private readonly opts: NodeProxyOptions) {
    this.maxChannels = opts.maxChannels ?? 256;
    this.maxBufferedBytes = opts.maxBufferedBytes ?? 1 << 20;
  }

  /** Relays a unary call. `end` is called once, however the call ends. */
  unary(call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>, target: NodeTarget, path: string, metadata: grpc.Metadata, end: RelayEnd): void {
    const channel = this.acquire(target.address);
    this.opts.metrics?.relayCounter(target.name, 'to-node')(call.request.length);
    let result: { err: grpc.ServiceError | null; value: Buffer | undefined } = { err: null, value: undefined };
    let done = false;
    let answered = false;
    const finish = (failed: Relayed | undefined, value?: Buffer, trailers?: grpc.Metadata) => {
      if (done) return;
      done = true;
      this.inFlight.delete(stop);
      this.release(target.address, channel);
      if (failed === undefined) {
        this.opts.metrics?.relayCounter(target.name, 'from-node')(value?.length ?? 0);
        this.opts.metrics?.proxied(target.name, 'unary', 'OK');
        callback(null, value, trailers);
        end();
      } else {
        this.opts.metrics?.proxied(target.name, 'unary', failed.outcome);
        callback(failed.status);
        end(errorOf(failed.status));
      }
    };
    const stop = (err: CosiError) => {
      upstream.cancel();
      finish(ours(err));
    };
    this.inFlight.add(stop);
    const upstream = channel.client.makeUnaryRequest(path, identityCodec, identityCodec, call.request, metadata, optionsOf(call), (err, value) => {
      result = { err, value };
    });
    upstream.on('metadata', (headers: grpc.Metadata) => {
      answered = true;
      if (!done) call.sendMetadata(callMetadataOf(headers));
    });
    upstream.on('status', (status: grpc.StatusObject) => {
      const { err, value } = result;
      if (err === null && status.code === grpc.status.OK) finish(undefined, value, callMetadataOf(status.metadata));
      else void this.statusFrom(target, err ?? status, answered).then((failed) => finish(failed));
    });
    call.on('cancelled', () => {
      if (done) return;
      upstream.cancel();
      done = true;
      this.inFlight.delete(stop);
      this.release(target.address, channel);
      this.opts.metrics?.proxied(target.name, 'unary', 'CANCELLED');
      end(new CosiError('cancelled', 'cancelled by the client'));
    });
  }

  /** Relays a server-streaming call, paced by the caller. `end` is called once, however the call ends. */
  serverStream(call: grpc.ServerWritableStream<Buffer, Buffer>, target: NodeTarget, path: string, metadata: grpc.Metadata, end: RelayEnd): void {
    const channel = this.acquire(target.address);
    const metrics = this.opts.metrics;
    metrics?.relayCounter(target.name, 'to-node')(call.request.length);
    const fromNode = metrics?.relayCounter(target.name, 'from-node');
    this.openStreams.set(target.name, (this.openStreams.get(target.name) ?? 0) + 1);
    let done = false;
    let status: grpc.StatusObject | undefined;
    let upstreamEnded = false;
    let queuedBytes = 0;
    let paused = false;
    let answered = false;
    const upstream = channel.client.makeServerStreamRequest(path, identityCodec, identityCodec, call.request, metadata, optionsOf(call));
    const cleanup = (outcome: string) => {
      done = true;
      this.inFlight.delete(stop);
      this.release(target.address, channel);
      const open = (this.openStreams.get(target.name) ?? 1) - 1;
      if (open > 0) this.openStreams.set(target.name, open);
      else this.openStreams.delete(target.name);
      metrics?.proxied(target.name, 'stream', outcome);
    };
    const fail = (failed: Relayed) => {
      if (done) return;
      cleanup(failed.outcome);
      call.emit('error', failed.status);
      end(errorOf(failed.status));
    };
    const stop = (err: CosiError) => {
      upstream.cancel();
      fail(ours(err));
    };
    this.inFlight.add(stop);
    /** The node's status goes out once every message before it has (the stream may hold some while paused). */
    const maybeFinish = () => {
      if (done || status === undefined || !upstreamEnded) return;
      if (status.code !== grpc.status.OK) {
        void this.statusFrom(target, status, answered).then(fail);
        return;
      }
      cleanup('OK');
      call.end(callMetadataOf(status.metadata));
      end();
    };
    const resumeIfRoom = () => {
      if (paused && !done && queuedBytes <= this.maxBufferedBytes && !call.writableNeedDrain) {
        paused = false;
        upstream.resume();
      }
    };
    upstream.on('metadata', (headers: grpc.Metadata) => {
      answered = true;
      if (!done) call.sendMetadata(callMetadataOf(headers));
    });
    upstream.on('data', (message: Buffer) => {
      if (done) return;
      const bytes = message.length;
      fromNode?.(bytes);
      queuedBytes += bytes;
      const room = call.write(message, () => {
        queuedBytes -= bytes;
        resumeIfRoom();
      });
      // Backpressure: stop reading from the node until the caller has taken what is queued.
      if ((!room || queuedBytes > this.maxBufferedBytes) && !paused) {
        paused = true;
        upstream.pause();
      }
    });
    call.on('drain', resumeIfRoom);
    // The status says how it ended; the error event only repeats it.
    upstream.on('error', () => {});
    upstream.on('status', (s: grpc.StatusObject) => {
      status = s;
      maybeFinish();
    });
    upstream.on('end', () => {
      upstreamEnded = true;
      maybeFinish();
    });
    call.on('cancelled', () => {
      if (done) return;
      upstream.cancel();
      cleanup('CANCELLED');
      end(new CosiError('cancelled', 'cancelled by the client'));
    });
  }

  /** Ends every relayed call with `err` (this cosid stops: its callers reconnect, and resume). */
  endAll(err: CosiError): void {
    for (const stop of [...this.inFlight]) stop(err);
  }

  /** Closes every channel. */
  close(): void {
    for (const c of this.channels.values()) c.client.close();
    this.channels.clear();
  }

  /** The channel to `address`, opened when there is none; counted as in use until release. */
  private acquire(address: string): Channel {
    let channel = this.channels.get(address);
    if (channel !== undefined) {
      // Most recently used last.
      this.channels.delete(address);
    } else {
      if (this.channels.size >= this.maxChannels) {
        for (const [a, c] of this.channels) {
          if (c.calls > 0) continue;
          c.client.close();
          this.channels.delete(a);
          break;
        }
      }
      channel = { client: this.dial(address), calls: 0 };
    }
    this.channels.set(address, channel);
    channel.calls++;
    return channel;
  }

  private release(address: string, channel: Channel): void {
    channel.calls--;
    // A channel evicted while its calls ran (over the limit, all busy) is closed by its last call.
    if (channel.calls === 0 && this.channels.get(address) !== channel) channel.client.close();
  }

  private dial(address: string): grpc.Client {
    const host = splitHostPort(address)?.host ?? address;
    const byIp = isIP(host) !== 0;
    const creds = grpc.experimental.createCertificateProviderChannelCredentials(
      this.opts.identity,
      this.opts.identity,
      byIp ? { checkServerIdentity: (_name, cert) => checkServerIdentity(host, cert) } : {},
    );
    this.opts.log.debug('proxy channel opened', { node: address });
    return new grpc.Client(address, creds, { ...CHANNEL_OPTIONS, ...(byIp ? { 'grpc.ssl_target_name_override': IP_SNI } : {}) });
  }

  /**
   * What the caller gets for a status the node's call ended with. The node's own answers go back as it sent them
   * (a refusal with the node's name in front). An UNAVAILABLE without our error kind is grpc-js's: the node was not
   * reached, or its connection dropped. When nothing came from the node at all, a second dial (shared/tls-probe.ts)
   * tells a node that refused this endpoint's certificate from one that cannot be reached, and says why.
   */
  private async statusFrom(target: NodeTarget, s: grpc.StatusObject, answered: boolean): Promise<Relayed> {
    const where = `node ${JSON.stringify(target.name)}${target.name === target.address ? '' : ` (${target.address})`}`;
    if (s.code === grpc.status.UNAVAILABLE && s.metadata.get(ERROR_KIND_METADATA_KEY).length === 0) {
      const outcome = answered ? undefined : await this.diagnose(target.address);
      this.opts.log.debug('proxied call failed', { node: target.name, address: target.address, probe: outcome?.kind, details: s.details });
      if (outcome?.kind === 'closed-after-handshake') {
        const subject = this.opts.identity.certificate().subject.replace(/\n/g, ', ');
        const err = new CosiError('permission-denied', `${where} refused this endpoint's certificate (${subject}): the node must trust its CA, and it must be valid now`);
        return { status: toStatus(err), outcome: 'refused-certificate' };
      }
      return { status: toStatus(new CosiError('unavailable', `${where} is unreachable: ${reachProblem(target.address, outcome) ?? s.details}`)), outcome: 'unreachable' };
    }
    const trailers = callMetadataOf(s.metadata);
    const outcome = grpc.status[s.code] ?? String(s.code);
    if (s.code === grpc.status.PERMISSION_DENIED || s.code === grpc.status.UNAUTHENTICATED) {
      return { status: { code: s.code, details: `${where} refused: ${s.details}`, metadata: trailers }, outcome };
    }
    return { status: { code: s.code, details: s.details, metadata: trailers }, outcome };
  }

  /** One second dial per node at a time: the calls failing together share it. */
  private diagnose(address: string): Promise<ProbeOutcome | undefined> {
    let pending = this.probes.get(address);
    if (pending === undefined) {
      const hp = splitHostPort(address);
      if (hp === undefined) return Promise.resolve(undefined);
      const { caPem, certPem, keyPem } = this.opts.identity.pem();
      pending = probe({ target: address, host: hp.host, port: hp.port, name: hp.host, caPem, certPem, keyPem }, new AbortController().signal).finally(() => this.probes.delete(address));
      this.probes.set(address, pending);
    }
    return pending;
  }
}

/** Why a node cannot be reached, in words, from what the second dial saw; undefined when it saw nothing better. */
function reachProblem(address: string, o: ProbeOutcome | undefined): string | undefined {
  switch (o?.kind) {
    case 'socket-error':
      return o.code === 'ECONNREFUSED' ? `nothing is listening at ${address} (connection refused)` : `cannot connect to ${address} (${o.code})`;
    case 'untrusted-server':
      return `its server certificate is not trusted (${o.code}): it must be signed by the CA this endpoint's --pki holds`;
    case 'wrong-name':
      return `its server certificate is not valid for ${address} (it names ${o.peer.subjectaltname ?? 'nothing'})`;
    default:
      return undefined;
  }
}

/** The caller's deadline, passed on; cancellation is passed on by the relay itself. */
function optionsOf(call: { getDeadline(): grpc.Deadline }): grpc.CallOptions {
  const deadline = call.getDeadline();
  const finite = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(finite) ? { deadline } : {};
}

/** A failed relayed call: the status the caller gets, and the outcome the metrics count. */
interface Relayed {
  status: Partial<grpc.StatusObject>;
  outcome: string;
}

/** An end this cosid decides itself (it stops). */
function ours(err: CosiError): Relayed {
  const status = toStatus(err);
  return { status, outcome: grpc.status[status.code ?? grpc.status.UNKNOWN] ?? String(status.code) };
}

/** The error a relayed call ended with, as a CosiError for the recorder (its code is the status's). */
function errorOf(s: Partial<grpc.StatusObject>): CosiError {
  const kind = s.metadata?.get(ERROR_KIND_METADATA_KEY)[0];
  return new CosiError(kindOfStatus(s.code ?? grpc.status.UNKNOWN, kind), s.details ?? '');
}

/** Refuses an impersonator certificate that cannot do its job: a client certificate with role os:impersonator. */
export function checkImpersonator(identity: TlsMaterial): void {
  const cert = identity.certificate();
  const orgs = cert.subject.split('\n').filter((l) => l.startsWith('O=')).map((l) => l.slice(2));
  if (!orgs.includes(IMPERSONATOR_ROLE)) {
    throw new Error(`the impersonator certificate (${cert.subject.replace(/\n/g, ', ')}) does not carry the role ${IMPERSONATOR_ROLE} (O=${IMPERSONATOR_ROLE}): issue one with cosictl gen cert --roles ${IMPERSONATOR_ROLE}`);
  }
  if (cert.keyUsage !== undefined && !cert.keyUsage.includes('1.3.6.1.5.5.7.3.2')) {
    throw new Error(`the impersonator certificate (${cert.subject.replace(/\n/g, ', ')}) is not a client certificate (extended key usage clientAuth)`);
  }
}
