// Polls the kubelet's /pods/ over mTLS and mirrors its static pods' statuses as StaticPodStatus resources.
// When the kubelet cannot be read, the last statuses stay and are marked stale; nothing is silently emptied.
import { request } from 'node:https';
import { isCosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Json } from '../../shared/wire.js';
import { CONTAINERS_ANNOTATION, K8S_NAMESPACE, STALE_LABEL, STATIC_POD_STATUS_TYPE } from '../resources/k8s.js';
import type { ResourceStore } from '../store/store.js';
import { upsert } from '../store/upsert.js';

export const STATUS_OWNER = 'k8s.StaticPodStatusController';
const STATIC_SOURCES = new Set(['file', 'http']);

export interface KubeletPollerOptions {
  /** Default https://127.0.0.1:10250/pods/ */
  url: string;
  caPem: string;
  certPem: string;
  keyPem: string;
  /** The name the kubelet's serving certificate must carry (Talos: the node name). */
  serverName: string;
  /** Between successful polls (default 15 s, as Talos). */
  intervalMs?: number;
  /** First retry after a failure, doubling up to intervalMs (default 1 s). */
  minBackoffMs?: number;
  timeoutMs?: number;
  maxBodyBytes?: number;
  store: ResourceStore;
  log: Logger;
  /** Told how long each read of the kubelet took and whether it succeeded. */
  onPoll?: (outcome: 'ok' | 'failed', seconds: number) => void;
}

type JsonObject = { [key: string]: Json };

/**
 * Why the statuses are stale: the `reason` of their Stale condition and of the "cannot read the kubelet" warning.
 * - KubeletTLSError: the TLS handshake failed (the kubelet's certificate, its name, or the protocol).
 * - KubeletUnreachable: no connection, or the connection broke (refused, reset, no route, no such host).
 * - KubeletTimeout: no complete answer within timeoutMs.
 * - KubeletHTTPError: the kubelet answered with an HTTP status other than 200 (401 for a certificate it refuses).
 * - KubeletBadResponse: the answer is not a PodList, is too large, or holds a status that cannot be stored.
 * - KubeletError: the fallback, for any other failure: an error whose code is not in ERROR_CODES below (or that has
 *   none), such as an unusable URL or client key. Its message says what it was.
 */
type StaleReason = 'KubeletTLSError' | 'KubeletUnreachable' | 'KubeletTimeout' | 'KubeletHTTPError' | 'KubeletBadResponse' | 'KubeletError';

/**
 * Node's error codes (err.code) and the reason each stands for; error messages are never read. An entry ending in
 * `*` stands for every code it starts: OpenSSL's errors reach Node as ERR_SSL_<reason>.
 */
const ERROR_CODES: Readonly<Record<string, StaleReason>> = {
  // The kubelet's certificate, as Node's TLS client checks it.
  ERR_TLS_CERT_ALTNAME_INVALID: 'KubeletTLSError',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'KubeletTLSError',
  UNABLE_TO_GET_ISSUER_CERT: 'KubeletTLSError',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'KubeletTLSError',
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: 'KubeletTLSError',
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: 'KubeletTLSError',
  CERT_SIGNATURE_FAILURE: 'KubeletTLSError',
  CERT_NOT_YET_VALID: 'KubeletTLSError',
  CERT_HAS_EXPIRED: 'KubeletTLSError',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: 'KubeletTLSError',
  ERROR_IN_CERT_NOT_AFTER_FIELD: 'KubeletTLSError',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'KubeletTLSError',
  SELF_SIGNED_CERT_IN_CHAIN: 'KubeletTLSError',
  CERT_CHAIN_TOO_LONG: 'KubeletTLSError',
  CERT_REVOKED: 'KubeletTLSError',
  CERT_UNTRUSTED: 'KubeletTLSError',
  CERT_REJECTED: 'KubeletTLSError',
  INVALID_CA: 'KubeletTLSError',
  INVALID_PURPOSE: 'KubeletTLSError',
  PATH_LENGTH_EXCEEDED: 'KubeletTLSError',
  HOSTNAME_MISMATCH: 'KubeletTLSError',
  // The handshake itself: an alert from the kubelet, a protocol or version mismatch.
  'ERR_SSL_*': 'KubeletTLSError',
  EPROTO: 'KubeletTLSError',
  // No connection, or a broken one.
  ECONNREFUSED: 'KubeletUnreachable',
  ECONNRESET: 'KubeletUnreachable',
  ECONNABORTED: 'KubeletUnreachable',
  EPIPE: 'KubeletUnreachable',
  EHOSTUNREACH: 'KubeletUnreachable',
  EHOSTDOWN: 'KubeletUnreachable',
  ENETUNREACH: 'KubeletUnreachable',
  ENETDOWN: 'KubeletUnreachable',
  EADDRNOTAVAIL: 'KubeletUnreachable',
  ENOTFOUND: 'KubeletUnreachable',
  EAI_AGAIN: 'KubeletUnreachable',
  ETIMEDOUT: 'KubeletUnreachable',
};

/** The reason for an error code; KubeletError for a code the table does not list, or none. */
function reasonOf(code: string | undefined): StaleReason {
  if (code === undefined) return 'KubeletError';
  const exact = ERROR_CODES[code];
  if (exact !== undefined) return exact;
  for (const [key, reason] of Object.entries(ERROR_CODES)) {
    if (key.endsWith('*') && code.startsWith(key.slice(0, -1))) return reason;
  }
  return 'KubeletError';
}

class PollError extends Error {
  constructor(
    readonly reason: StaleReason,
    message: string,
  ) {
    super(message);
  }
}

export class KubeletPoller {
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private backoffMs: number;
  private lastSuccess: string | undefined;
  private lastProblem: string | undefined = undefined;
  private storeDown = false;
  /** The statuses as the kubelet last reported them (without our Stale condition). */
  private readonly fresh = new Map<string, JsonObject>();
  /** Pods whose last reported status could not be stored (logged once each). */
  private readonly rejected = new Set<string>();
  private readonly intervalMs: number;
  private readonly minBackoffMs: number;

  constructor(private readonly opts: KubeletPollerOptions) {
    this.intervalMs = opts.intervalMs ?? 15_000;
    this.minBackoffMs = Math.min(opts.minBackoffMs ?? 1000, this.intervalMs);
    this.backoffMs = this.minBackoffMs;
  }

  start(): void {
    this.pollSoon();
  }

  /** Polls now (or right after the poll in flight), then resumes the schedule. */
  pollSoon(): void {
    if (this.stopped) return;
    if (this.inFlight !== undefined) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.inFlight = this.pollOnce().finally(() => {
      this.inFlight = undefined;
      if (this.again) {
        this.again = false;
        this.pollSoon();
      }
    });
  }

  /** Resolves when the poll in flight (if any) has been applied. */
  async settled(): Promise<void> {
    while (this.inFlight !== undefined) await this.inFlight;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.pollSoon(), ms);
    this.timer.unref();
  }

  private async pollOnce(): Promise<void> {
    try {
      const started = performance.now();
      const took = () => (performance.now() - started) / 1000;
      const pods = await this.fetchPods().then(
        (p) => {
          this.opts.onPoll?.('ok', took());
          return p;
        },
        (err: unknown) => {
          this.opts.onPoll?.('failed', took());
          throw err;
        },
      );
      await this.apply(pods);
      this.backoffMs = this.minBackoffMs;
      this.schedule(this.intervalMs);
      if (this.storeDown) this.opts.log.info('statuses written again: the store is reachable', { statuses: this.fresh.size });
      this.storeDown = false;
    } catch (err) {
      if (isCosiError(err, 'unavailable')) {
        // The store, not the kubelet: nothing is stale. The next poll (soon) writes the statuses as they are then.
        if (!this.storeDown) this.opts.log.warn('cannot write the statuses: the store is unavailable; retrying', { error: err.message });
        this.storeDown = true;
        this.schedule(this.backoffMs);
        this.backoffMs = Math.min(this.backoffMs * 2, this.intervalMs);
        return;
      }
      const e = err instanceof PollError ? err : classify(err);
      await this.markStale(e).catch((writeErr: unknown) => this.opts.log.warn('cannot mark the statuses stale', { error: writeErr }));
      this.schedule(this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, this.intervalMs);
    }
  }

  private async apply(pods: JsonObject[]): Promise<void> {
    const { store, log } = this.opts;
    const seen = new Set<string>();
    for (const pod of pods) {
      const md = asObject(pod['metadata']);
      const annotations = asObject(md['annotations']);
      const source = annotations['kubernetes.io/config.source'];
      if (typeof source !== 'string' || !STATIC_SOURCES.has(source)) continue;
      const name = md['name'];
      if (typeof name !== 'string' || name === '') continue;
      const ns = typeof md['namespace'] === 'string' && md['namespace'] !== '' ? md['namespace'] : 'default';
      const id = `${ns}/${name}`;
      const status = asObject(pod['status']);
      seen.add(id);
      try {
        await this.write(id, status, {});
        this.fresh.set(id, status);
        this.rejected.delete(id);
      } catch (err) {
        if (!isCosiError(err, 'invalid-argument')) throw err;
        // This one status cannot be stored (too deep to encode): keep its last good one, marked stale, and go on.
        if (!this.rejected.has(id)) log.warn('kubelet reported a status that cannot be stored; keeping the last one, marked stale', { id, error: err.message });
        this.rejected.add(id);
        await this.writeStale(id, this.fresh.get(id) ?? {}, new PollError('KubeletBadResponse', err.message));
      }
    }
    for (const r of await store.list({ namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE })) {
      if (r.metadata.owner === STATUS_OWNER && !seen.has(r.metadata.id)) {
        await store.destroy(r.metadata, STATUS_OWNER);
        this.fresh.delete(r.metadata.id);
        this.rejected.delete(r.metadata.id);
      }
    }
    this.lastSuccess = new Date().toISOString();
    if (this.lastProblem !== undefined) log.info('kubelet status is fresh again', { url: this.opts.url, statuses: seen.size });
    this.lastProblem = undefined;
  }

  private async markStale(e: PollError): Promise<void> {
    const problem = `${e.reason}: ${e.message}`;
    if (problem !== this.lastProblem) {
      // Once per change of state, not once per retry.
      this.opts.log.warn('cannot read the kubelet; keeping the last statuses, marked stale', { url: this.opts.url, reason: e.reason, error: e.message });
      this.lastProblem = problem;
    }
    for (const [id, status] of this.fresh) await this.writeStale(id, status, e);
  }

  /** The last good status with a Stale condition saying why, labelled stale. */
  private writeStale(id: string, status: JsonObject, e: PollError): Promise<unknown> {
    const conditions = Array.isArray(status['conditions']) ? status['conditions'].filter((c) => asObject(c)['type'] !== 'Stale') : [];
    const stale = { type: 'Stale', status: 'True', reason: e.reason, message: e.message, lastProbeTime: this.lastSuccess ?? null };
    return this.write(id, { ...status, conditions: [...conditions, stale] }, { [STALE_LABEL]: 'true' });
  }

  private write(id: string, spec: JsonObject, labels: Record<string, string>): Promise<unknown> {
    const containers = containerIds(id, spec);
    const annotations: Record<string, string> = containers === '' ? {} : { [CONTAINERS_ANNOTATION]: containers };
    const input = { namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE, id, spec, labels, annotations };
    // An unchanged status keeps its version (the store does not commit no-op updates).
    return upsert(this.opts.store, input, STATUS_OWNER);
  }

  /** When the kubelet was last read and its statuses written (undefined: not yet). */
  get lastGoodPoll(): Date | undefined {
    return this.lastSuccess === undefined ? undefined : new Date(this.lastSuccess);
  }

  private fetchPods(): Promise<JsonObject[]> {
    const { url, caPem, certPem, keyPem, serverName } = this.opts;
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    const maxBody = this.opts.maxBodyBytes ?? 16 << 20;
    return new Promise((resolve, reject) => {
      const req = request(url, { method: 'GET', ca: caPem, cert: certPem, key: keyPem, servername: serverName, headers: { Accept: 'application/json' }, timeout: timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxBody) {
            req.destroy(new PollError('KubeletBadResponse', `response is larger than ${maxBody} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new PollError('KubeletHTTPError', `kubelet answered HTTP ${res.statusCode ?? '?'}`));
          try {
            resolve(parsePodList(Buffer.concat(chunks).toString('utf8')));
          } catch (err) {
            reject(err);
          }
        });
        res.on('error', (err: Error & { code?: string }) => reject(err instanceof PollError ? err : classify(err)));
      });
      // The whole exchange is bounded, not just the idle time between bytes.
      const deadline = setTimeout(() => req.destroy(new PollError('KubeletTimeout', `no complete answer within ${timeoutMs} ms`)), timeoutMs);
      req.on('close', () => clearTimeout(deadline));
      req.on('timeout', () => req.destroy(new PollError('KubeletTimeout', `no answer within ${timeoutMs} ms`)));
      req.on('error', (err: Error & { code?: string }) => reject(err instanceof PollError ? err : classify(err)));
      req.end();
    });
  }
}

/** A failure as a PollError, by its error code (ERROR_CODES). */
function classify(err: unknown): PollError {
  const code = err !== null && typeof err === 'object' && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
  const message = err instanceof Error ? err.message : String(err);
  return new PollError(reasonOf(code), code !== undefined ? `${code}: ${message}` : message);
}

function parsePodList(text: string): JsonObject[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new PollError('KubeletBadResponse', 'response is not JSON');
  }
  const o = asObject(doc as Json);
  if (o['kind'] !== 'PodList' || !Array.isArray(o['items'])) {
    throw new PollError('KubeletBadResponse', `response is not a PodList (kind ${JSON.stringify(o['kind'] ?? null)})`);
  }
  return o['items'].map((p) => asObject(p));
}

/**
 * The link from a status to the runtime: `<ns>/<pod>:<container>:<short id>` for each container the kubelet reports
 * with a container ID (`containerd://<id>`), the IDs `containers -k` shows and `logs -k` takes.
 */
function containerIds(podId: string, status: JsonObject): string {
  const ids: string[] = [];
  for (const c of Array.isArray(status['containerStatuses']) ? status['containerStatuses'] : []) {
    const o = asObject(c);
    const name = o['name'];
    const m = typeof o['containerID'] === 'string' ? /^[a-z0-9.+-]+:\/\/([0-9a-f]{12,64})$/.exec(o['containerID']) : null;
    if (typeof name === 'string' && m !== null && m[1] !== undefined) ids.push(`${podId}:${name}:${m[1].slice(0, 12)}`);
  }
  return ids.join(',');
}

function asObject(v: Json | undefined): JsonObject {
  return v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) ? v : {};
}
