// The manifest server the kubelet polls (its staticPodURL): every valid StaticPod as one PodList, on loopback.
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { namesForLog, type Logger } from '../../shared/log.js';
import type { Resource } from '../../shared/resource.js';
import {
  INVALID_LABEL,
  K8S_NAMESPACE,
  STATIC_POD_SERVER_STATUS_ID,
  STATIC_POD_SERVER_STATUS_TYPE,
  STATIC_POD_TYPE,
} from '../resources/k8s.js';
import { untilWritten } from '../controllers/retry.js';
import type { KindHistory, ResourceStore } from '../store/store.js';
import { upsert } from '../store/upsert.js';

export const MANIFEST_SERVER_OWNER = 'k8s.StaticPodServerController';
const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

interface Rendered {
  body: Buffer;
  etag: string;
  versions: Map<string, number>;
}

export class ManifestServer {
  private rendered: Rendered | undefined;
  private ready = false;
  private renderScheduled = false;
  private readonly listeners = new Set<() => void>();
  private readonly unsubscribe: () => void;
  private readonly stopped = new AbortController();

  private constructor(
    private readonly server: Server,
    private readonly pods: KindHistory,
    private readonly log: Logger,
    readonly url: string,
  ) {
    // A history that started over (etcd compacted past its watch) replaced the pods without a commit.
    this.unsubscribe = pods.subscribe({ committed: () => this.scheduleRender(), lost: () => this.scheduleRender() });
  }

  /** Listens on a loopback address (`host:port`, port 0 picks one) and publishes the URL as StaticPodServerStatus. */
  static async start(opts: { listen: string; store: ResourceStore; log: Logger }): Promise<ManifestServer> {
    const m = /^(.*):(\d+)$/.exec(opts.listen);
    const host = m?.[1]?.replace(/^\[|\]$/g, '');
    if (m === null || host === undefined || !LOOPBACK.has(host)) {
      throw new Error(`manifest server address ${JSON.stringify(opts.listen)} must be a loopback host:port (the kubelet on this node is its only client)`);
    }
    let self: ManifestServer | undefined;
    const server = createServer((req, res) => self?.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(m[2]), host, () => resolve());
    });
    const addr = server.address() as AddressInfo;
    const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
    let pods: KindHistory;
    try {
      // Rendered from the StaticPods as the store's feed keeps them: while the store is unreachable the kubelet
      // keeps getting the last manifest, so its pods stay.
      pods = await opts.store.feed.history({ namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE });
    } catch (err) {
      server.close();
      throw err;
    }
    const started = new ManifestServer(server, pods, opts.log, url);
    self = started;
    const input = { namespace: K8S_NAMESPACE, type: STATIC_POD_SERVER_STATUS_TYPE, id: STATIC_POD_SERVER_STATUS_ID, spec: { url } };
    const { signal } = started.stopped;
    void untilWritten('StaticPodServerStatus', () => upsert(opts.store, input, MANIFEST_SERVER_OWNER), opts.log, { signal }).catch((err: unknown) => {
      if (!signal.aborted) opts.log.error('cannot publish the StaticPodServerStatus', { error: err });
    });
    opts.log.info('manifest server listening', { url });
    return started;
  }

  /** Starts serving (until then the kubelet gets 503): call once the machine config has been applied. */
  markReady(): void {
    this.ready = true;
    this.render();
  }

  /** Called after each render that changed the manifest (the kubelet status poller polls right away). */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async stop(): Promise<void> {
    this.stopped.abort();
    this.unsubscribe();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private scheduleRender(): void {
    if (!this.ready || this.renderScheduled) return;
    this.renderScheduled = true;
    // Coalesce a burst of changes (one config reload) into one render.
    setImmediate(() => {
      this.renderScheduled = false;
      this.render();
    });
  }

  private render(): void {
    const pods = this.pods.list().filter((r) => r.metadata.labels[INVALID_LABEL] === undefined);
    const body = Buffer.from(JSON.stringify({ apiVersion: 'v1', kind: 'PodList', items: pods.map((r) => r.spec) }));
    const etag = `"${createHash('sha256').update(body).digest('base64url')}"`;
    const versions = new Map(pods.map((r: Resource) => [r.metadata.id, r.metadata.version]));
    const before = this.rendered;
    if (before?.etag === etag) return;
    this.rendered = { body, etag, versions };
    const added = [...versions.keys()].filter((id) => !before?.versions.has(id));
    const updated = [...versions].filter(([id, v]) => before?.versions.has(id) === true && before.versions.get(id) !== v).map(([id]) => id);
    const removed = [...(before?.versions.keys() ?? [])].filter((id) => !versions.has(id));
    this.log.info('rendered static pods', { added: namesForLog(added), updated: namesForLog(updated), removed: namesForLog(removed), pods: versions.size });
    for (const l of this.listeners) l();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/') return reply(res, 404, 'not found: the static pod manifest is at /\n');
    if (req.method !== 'GET') {
      res.setHeader('Allow', 'GET');
      return reply(res, 405, 'method not allowed: use GET\n');
    }
    const r = this.rendered;
    if (r === undefined) {
      res.setHeader('Retry-After', '1');
      return reply(res, 503, 'static pods not rendered yet: the machine config has not been applied\n');
    }
    res.setHeader('ETag', r.etag);
    res.setHeader('Cache-Control', 'no-cache');
    if (req.headers['if-none-match'] === r.etag) {
      res.writeHead(304);
      res.end();
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': r.body.length });
    res.end(r.body);
  }
}

function reply(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(text);
}
