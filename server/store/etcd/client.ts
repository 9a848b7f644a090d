// The etcd client the store talks through: which endpoints it accepts (TLS, or plaintext on loopback only), and its
// deadlines, watch backoff and keepalive.
import { ExponentialBackoff, type IBackoff } from 'cockatiel';
import { Etcd3 } from 'etcd3';

export interface EtcdTls {
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
}

/** A client for `endpoints` whose unary calls end at `timeoutMs`. Throws for an endpoint the policy refuses. */
export function etcdClient(endpoints: readonly string[], tls: EtcdTls | undefined, timeoutMs: number): Etcd3 {
  if (endpoints.length === 0) throw new Error('etcd: no endpoint given');
  for (const e of endpoints) checkEndpoint(e, tls !== undefined);
  return new Etcd3({
    hosts: [...endpoints],
    ...(tls !== undefined ? { credentials: { rootCertificate: Buffer.from(tls.caPem), certChain: Buffer.from(tls.certPem), privateKey: Buffer.from(tls.keyPem) } } : {}),
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
    dialTimeout: timeoutMs,
    // A watch stream that broke reconnects within a second or two once etcd is back (the default waits up to 30 s).
    // (etcd3 types this as a backoff state but, like its own default, takes the factory: it calls next() first.)
    faultHandling: { watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown> },
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
