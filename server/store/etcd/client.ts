// The etcd client the store talks through: which endpoints it accepts (TLS, or plaintext on loopback only), and its
// deadlines, watch backoff and keepalive.
import { noop, type IBackoff } from 'cockatiel';
import { Etcd3 } from 'etcd3';

export interface EtcdTls {
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * A client for `endpoints` whose unary calls end at `timeoutMs`. Throws for an endpoint the policy refuses.
 * `resend: false` turns off etcd3's own retries (it sends a call again after a deadline, and a transaction whose
 * answer was lost would commit twice): for a writer that checks before it sends again (fleet/writer.ts).
 */
export function etcdClient(endpoints: readonly string[], tls: EtcdTls | undefined, timeoutMs: number, opts: { resend?: boolean } = {}): Etcd3 {
  if (endpoints.length === 0) throw new Error('etcd: no endpoint given');
  for (const e of endpoints) checkEndpoint(e, tls !== undefined);
  return new Etcd3({
    hosts: [...endpoints],
    ...(tls !== undefined ? { credentials: { rootCertificate: Buffer.from(tls.caPem), certChain: Buffer.from(tls.certPem), privateKey: Buffer.from(tls.keyPem) } } : {}),
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
    dialTimeout: timeoutMs,
    // A watch stream that broke reconnects within a second or two once etcd is back (the default waits up to 30 s).
    faultHandling: { watchBackoff: WATCH_BACKOFF, ...(opts.resend === false ? { global: noop } : {}) },
    grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000, 'grpc.max_receive_message_length': 256 << 20 },
  });
}

function checkEndpoint(url: string, tls: boolean): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`etcd endpoint ${JSON.stringify(url)} is not a URL (use https://host:port)`);
  }
  if (tls && u.protocol !== 'https:') throw new Error(`etcd endpoint ${url}: with TLS credentials use https://`);
  if (!tls) {
    const loopback = u.hostname === '127.0.0.1' || u.hostname === '[::1]' || u.hostname === 'localhost';
    if (u.protocol !== 'http:' || !loopback) throw new Error(`etcd endpoint ${url}: plaintext is allowed only on loopback (http://127.0.0.1:PORT); give --etcd-ca/--etcd-cert/--etcd-key for mTLS`);
  }
}

/**
 * The watch stream's reconnect delays: 100 ms, doubling up to 2 s, each with up to half of it taken off at random
 * (many cosids reconnecting to one etcd do not come back in step). etcd3 starts over from the factory's next() after
 * every watch response, so that first step is one object made once; a backoff with a jitter generator of its own
 * (cockatiel's) costs a few objects per event.
 */
class WatchBackoff implements IBackoff<unknown> {
  constructor(private readonly base: number) {}

  get duration(): number {
    return this.base * (1 - Math.random() / 2);
  }

  next(): IBackoff<unknown> {
    return new WatchBackoff(Math.min(this.base * 2, 2000));
  }
}

const FIRST_WATCH_BACKOFF = new WatchBackoff(100);
// etcd3 types its option as a backoff state but, like its own default, takes the factory: it calls next() first.
const WATCH_BACKOFF: IBackoff<unknown> = { duration: 0, next: () => FIRST_WATCH_BACKOFF };
