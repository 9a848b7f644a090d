// Prometheus metrics (prom-client): what cosid counts as it goes, and what it reads from its parts when scraped.
// One registry per Cosid, so several in one process (tests) do not mix. Served over plain HTTP by serveMetrics:
// counts and names of kinds only, never a resource's content or a key.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from '../shared/log.js';
import type { ProxyMetrics } from './api/node-proxy.js';

/** What the watch layer reports as it goes: the API's watch sink what it sends (server/api/watch-sink.ts), a session an overrun. */
export interface WatchMetrics {
  /** A message went to a watcher: how many events, how many bytes, in which form. */
  sent(form: string, events: number, bytes: number): void;
  /** A watcher fell behind by more than its backlog and was ended. */
  overrun(): void;
}

/** Read at scrape time from the parts that know. */
export interface MetricSources {
  watchers?: () => { streaming: number; parked: number; lagTotal: number; lagMax: number };
  kinds?: () => { namespace: string; type: string; resources: number; history: number }[];
  certificates?: () => { server: Date | undefined; cas: { subject: string; notAfter: Date }[] };
  /** Streams this cosid relays to other nodes, open now, by node. */
  proxyStreams?: () => ReadonlyMap<string, number>;
}

/** Distinct node labels the proxy metrics keep; beyond them a node counts as "other" (callers may name any address). */
const MAX_NODE_LABELS = 256;

const CALL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics implements WatchMetrics, ProxyMetrics {
  readonly registry = new Registry();
  readonly sources: MetricSources = {};
  private readonly calls: Histogram<'service' | 'method' | 'code'>;
  /** Counted as plain numbers on the hot path (one add per watch message), handed to prom-client at scrape time. */
  private readonly pendingSent = new Map<string, { events: number; bytes: number }>();
  private readonly overruns: Counter;
  private readonly tooOlds: Counter;
  private readonly polls: Histogram<'outcome'>;
  private readonly reloads: Counter<'outcome'>;
  private readonly applies: Counter<'mode' | 'outcome'>;
  private readonly tryReverts: Counter;
  private readonly proxiedCalls: Counter<'node' | 'type' | 'outcome'>;
  /** Bytes relayed, by node and direction: counted as plain numbers per message, handed to prom-client at scrape time. */
  private readonly pendingRelayed = new Map<string, { node: string; direction: string; bytes: number }>();
  private readonly nodeLabels = new Set<string>();

  constructor() {
    const registers = [this.registry];
    this.calls = new Histogram({ name: 'cosi_grpc_call_duration_seconds', help: 'gRPC calls by service, method and status code (a watch or log follow: until it ended)', labelNames: ['service', 'method', 'code'], buckets: CALL_BUCKETS, registers });
    const pending = this.pendingSent;
    const sentCounter = (field: 'events' | 'bytes', name: string, help: string) =>
      new Counter({
        name,
        help,
        labelNames: ['form'],
        registers,
        collect() {
          for (const [form, p] of pending) {
            this.inc({ form }, p[field]);
            p[field] = 0;
          }
        },
      });
    sentCounter('events', 'cosi_watch_events_sent_total', 'Watch events sent, by form');
    sentCounter('bytes', 'cosi_watch_bytes_sent_total', 'Bytes of watch messages sent, by form');
    this.overruns = new Counter({ name: 'cosi_watch_overruns_total', help: 'Watches ended because they fell further behind than their backlog', registers });
    this.tooOlds = new Counter({ name: 'cosi_watch_too_old_total', help: 'Watches answered "too old" (resume beyond history, or an overrun)', registers });
    this.polls = new Histogram({ name: 'cosi_kubelet_poll_duration_seconds', help: "Reads of the kubelet's /pods, by outcome", labelNames: ['outcome'], buckets: CALL_BUCKETS, registers });
    this.reloads = new Counter({ name: 'cosi_config_reloads_total', help: 'Machine config loads, by outcome (applied, rejected, partial)', labelNames: ['outcome'], registers });
    this.applies = new Counter({
      name: 'cosi_config_applies_total',
      help: 'ApplyConfiguration calls, by requested mode (auto, no-reboot, staged, try, reboot) and outcome (applied, dry-run, or the error kind)',
      labelNames: ['mode', 'outcome'],
      registers,
    });
    this.tryReverts = new Counter({ name: 'cosi_config_try_reverts_total', help: "Configs applied in 'try' mode that timed out and were reverted", registers });
    this.proxiedCalls = new Counter({
      name: 'cosi_proxy_calls_total',
      help: 'Calls this cosid proxied to another node, by node, type (unary, stream) and outcome (the status code, or unreachable, refused-certificate)',
      labelNames: ['node', 'type', 'outcome'],
      registers,
    });
    const relayed = this.pendingRelayed;
    new Counter({
      name: 'cosi_proxy_bytes_relayed_total',
      help: 'Bytes of messages relayed for proxied calls, by node and direction (to-node, from-node)',
      labelNames: ['node', 'direction'],
      registers,
      collect() {
        for (const r of relayed.values()) {
          this.inc({ node: r.node, direction: r.direction }, r.bytes);
          r.bytes = 0;
        }
      },
    });
    const sources = this.sources;
    new Gauge({
      name: 'cosi_proxy_streams',
      help: 'Streams this cosid relays to other nodes, open now, by node',
      labelNames: ['node'],
      registers,
      collect() {
        this.reset();
        for (const [node, open] of sources.proxyStreams?.() ?? []) this.set({ node }, open);
      },
    });
    new Gauge({
      name: 'cosi_watchers',
      help: 'Open watches, by state (streaming, or parked: waiting for a slow client)',
      labelNames: ['state'],
      registers,
      collect() {
        const w = sources.watchers?.();
        this.set({ state: 'streaming' }, w?.streaming ?? 0);
        this.set({ state: 'parked' }, w?.parked ?? 0);
      },
    });
    new Gauge({
      name: 'cosi_watch_lag_events',
      help: 'Changes committed that watchers have not been sent yet: the most of any one watcher, and the total',
      labelNames: ['stat'],
      registers,
      collect() {
        const w = sources.watchers?.();
        this.set({ stat: 'max' }, w?.lagMax ?? 0);
        this.set({ stat: 'total' }, w?.lagTotal ?? 0);
      },
    });
    new Gauge({
      name: 'cosi_store_resources',
      help: 'Resources held, by kind',
      labelNames: ['namespace', 'type'],
      registers,
      collect() {
        this.reset();
        for (const k of sources.kinds?.() ?? []) this.set({ namespace: k.namespace, type: k.type }, k.resources);
      },
    });
    new Gauge({
      name: 'cosi_store_history_changes',
      help: 'Changes kept in watch history, by kind',
      labelNames: ['namespace', 'type'],
      registers,
      collect() {
        this.reset();
        for (const k of sources.kinds?.() ?? []) this.set({ namespace: k.namespace, type: k.type }, k.history);
      },
    });
    new Gauge({
      name: 'cosi_certificate_expiry_seconds',
      help: 'Seconds until a certificate cosid serves with or trusts expires (negative: expired)',
      labelNames: ['certificate', 'subject'],
      registers,
      collect() {
        this.reset();
        const c = sources.certificates?.();
        const now = Date.now();
        if (c?.server !== undefined) this.set({ certificate: 'server', subject: '' }, (c.server.getTime() - now) / 1000);
        for (const ca of c?.cas ?? []) this.set({ certificate: 'client-ca', subject: ca.subject }, (ca.notAfter.getTime() - now) / 1000);
      },
    });
  }

  /** Kubelet status polling is on: its last good poll's age is reported (+Inf until there has been one). */
  kubeletPolled(lastGood: () => Date | undefined): void {
    new Gauge({
      name: 'cosi_kubelet_last_good_poll_age_seconds',
      help: 'Seconds since the kubelet was last read and its statuses written (+Inf: not yet)',
      registers: [this.registry],
      collect() {
        const at = lastGood();
        this.set(at === undefined ? Number.POSITIVE_INFINITY : (Date.now() - at.getTime()) / 1000);
      },
    });
  }

  /** A call ended (the one place every call is recorded: api/service.ts callRecorder). */
  call(service: string, method: string, code: string, seconds: number, tooOld: boolean): void {
    this.calls.observe({ service, method, code }, seconds);
    if (tooOld) this.tooOlds.inc();
  }

  sent(form: string, events: number, bytes: number): void {
    let p = this.pendingSent.get(form);
    if (p === undefined) {
      p = { events: 0, bytes: 0 };
      this.pendingSent.set(form, p);
    }
    p.events += events;
    p.bytes += bytes;
  }

  overrun(): void {
    this.overruns.inc();
  }

  poll(outcome: 'ok' | 'failed', seconds: number): void {
    this.polls.observe({ outcome }, seconds);
  }

  reload(outcome: 'applied' | 'rejected' | 'partial'): void {
    this.reloads.inc({ outcome });
  }

  /** An ApplyConfiguration ended; `outcome` is applied, dry-run or an error kind (a closed set: bounded labels). */
  configApplied(mode: string, outcome: string): void {
    this.applies.inc({ mode, outcome });
  }

  tryReverted(): void {
    this.tryReverts.inc();
  }

  proxied(node: string, type: 'unary' | 'stream', outcome: string): void {
    this.proxiedCalls.inc({ node: this.nodeLabel(node), type, outcome });
  }

  relayCounter(node: string, direction: 'to-node' | 'from-node'): (bytes: number) => void {
    const label = this.nodeLabel(node);
    const key = `${label}\u0000${direction}`;
    let r = this.pendingRelayed.get(key);
    if (r === undefined) {
      r = { node: label, direction, bytes: 0 };
      this.pendingRelayed.set(key, r);
    }
    const entry = r;
    return (bytes) => {
      entry.bytes += bytes;
    };
  }

  /** The node's label: itself, until MAX_NODE_LABELS nodes have one. */
  private nodeLabel(node: string): string {
    if (this.nodeLabels.has(node)) return node;
    if (this.nodeLabels.size >= MAX_NODE_LABELS) return 'other';
    this.nodeLabels.add(node);
    return node;
  }
}

/** Serves `GET /metrics` (Prometheus text format) on `host:port`; port 0 picks one. */
export async function serveMetrics(listen: string, metrics: Metrics, log: Logger): Promise<{ url: string; close(): Promise<void> }> {
  const m = /^(.*):(\d+)$/.exec(listen);
  const host = m?.[1]?.replace(/^\[|\]$/g, '');
  if (m === null || host === undefined || host === '') throw new Error(`--metrics-listen ${JSON.stringify(listen)}: use host:port, e.g. 127.0.0.1:9100`);
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics' || req.method !== 'GET') {
      res.writeHead(path === '/metrics' ? 405 : 404, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(path === '/metrics' ? 'method not allowed: use GET\n' : 'not found: metrics are at /metrics\n');
      return;
    }
    metrics.registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'Content-Type': metrics.registry.contentType });
        res.end(text);
      },
      (err: unknown) => {
        log.error('cannot collect metrics', { error: err });
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end('cannot collect metrics\n');
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`cannot serve metrics on ${listen}: ${err.message}`)));
    server.listen(Number(m[2]), host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}/metrics`;
  log.info('metrics served', { url });
  return {
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
