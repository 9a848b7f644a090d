// Why a connection failed, in one line a user can act on. grpc-js reports every failed connection as UNAVAILABLE
// with words meant for its own logs ("No connection established. Last error: ... Resolution note: ..."), and a
// client certificate the server refused as nothing but "Failed to connect (<time>)": under TLS 1.3 the client has
// finished its handshake before the server checks the certificate, and a Node server then just closes the socket.
// So after such a failure the client dials once more itself (shared/tls-probe.ts), with the same credentials, and reads what happened
// from structured facts: the socket's error code, the verification of the server's certificate, whether the
// server closed the connection before its first HTTP/2 frame; and for a refused certificate, what the client can
// see in its own certificate (its dates, its issuer, its purpose).
import { X509Certificate } from 'node:crypto';
import { probe, type ProbeOutcome, type ProbeTarget } from '../shared/tls-probe.js';

export type { ProbeTarget } from '../shared/tls-probe.js';

/** OpenSSL's codes for a record that is not TLS: the peer answered in plain text (HTTP) or some other protocol. */
const NOT_TLS = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_HTTP_REQUEST', 'ERR_SSL_UNKNOWN_PROTOCOL', 'ERR_SSL_RECORD_LAYER_FAILURE']);

/** Verification failures of the server's certificate that mean "not signed by a CA you trust". */
const UNTRUSTED = new Set(['SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED']);

const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';

const when = (d: string): string => new Date(d).toISOString().replace(/\.000Z$/, 'Z');

/** The certificates of a PEM bundle; those that do not parse are left out. */
function certificates(pem: string): X509Certificate[] {
  const out: X509Certificate[] = [];
  for (const block of pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []) {
    try {
      out.push(new X509Certificate(block));
    } catch {
      // Not a certificate: the TLS layer says so on its own.
    }
  }
  return out;
}

const oneLine = (s: string): string => s.replace(/\s*\n\s*/g, ', ');

/** What the client can tell about its own certificate that a server would refuse, or undefined. */
function ownCertificateProblem(t: ProbeTarget, now: number): string | undefined {
  const [mine] = certificates(t.certPem);
  if (mine === undefined) return undefined;
  if (Date.parse(mine.validTo) < now) return `your certificate expired on ${when(mine.validTo)}: get a new one (cosictl gen cert)`;
  if (Date.parse(mine.validFrom) > now) return `your certificate is not valid until ${when(mine.validFrom)}: check this machine's clock, or get a new one (cosictl gen cert)`;
  const cas = certificates(t.caPem);
  if (cas.length > 0 && !cas.some((ca) => mine.checkIssued(ca) && mine.verify(ca.publicKey))) {
    return `it is not signed by the CA in your config (it was issued by ${oneLine(mine.issuer)}): use a certificate from the cluster's CA (cosictl gen cert)`;
  }
  if (mine.keyUsage !== undefined && !mine.keyUsage.includes(CLIENT_AUTH_OID)) return 'it is not for client use (no clientAuth extended key usage): get a client certificate (cosictl gen cert)';
  return undefined;
}

/** The one line for what the probe saw, or undefined when it saw nothing better than the call's own error. */
function explain(t: ProbeTarget, o: ProbeOutcome): string | undefined {
  const at = t.target;
  switch (o.kind) {
    case 'socket-error':
      if (o.code === 'ECONNREFUSED') return `nothing is listening at ${at} (connection refused): is cosid running, and is this its API port (cosid --listen, default 50000)?`;
      if (o.code === 'ENOTFOUND' || o.code === 'EAI_AGAIN') return `cannot resolve ${t.host} (${o.code}): check the endpoint (the config's endpoints, or -e)`;
      if (o.code === 'ETIMEDOUT' || o.code === 'EHOSTUNREACH' || o.code === 'ENETUNREACH') return `cannot reach ${at} (${o.code}): check the address and the network between here and there`;
      if (NOT_TLS.has(o.code)) return `${at} does not speak TLS/gRPC: is it cosid's API port (cosid --listen, default 50000), not its manifest or metrics port (plain HTTP)?`;
      return undefined;
    case 'untrusted-server': {
      const issuer = oneLine(o.peer.issuer === undefined ? 'unknown' : Object.entries(o.peer.issuer).map(([k, v]) => `${k}=${String(v)}`).join(', '));
      if (o.code === 'CERT_HAS_EXPIRED') return `the server certificate of ${at} expired on ${when(o.peer.valid_to)}: cosid needs a new one`;
      if (o.code === 'CERT_NOT_YET_VALID') return `the server certificate of ${at} is not valid until ${when(o.peer.valid_from)}: check the clocks`;
      if (UNTRUSTED.has(o.code)) {
        return `the server certificate of ${at} is not signed by the CA in your config (it was issued by ${issuer}): is this the cluster your config is for? Use its CA, or the right context (--context)`;
      }
      return `the server certificate of ${at} is not trusted (${o.code})`;
    }
    case 'wrong-name': {
      const names = o.peer.subjectaltname ?? 'none';
      return `the server certificate of ${at} is not valid for ${t.name} (it names ${names}): dial a name it lists, or set serverName`;
    }
    case 'closed-after-handshake': {
      const mine = ownCertificateProblem(t, Date.now());
      return `the server at ${at} refused your client certificate: ${mine ?? "likely expired, not yet valid, or from another CA than the server trusts (its log says which); check it with: openssl x509 -noout -dates -issuer"}`;
    }
    case 'answered':
    case 'no-answer':
      return undefined;
  }
}

/** Dials `t` once more and says in one line why the connection fails, or undefined when it cannot tell. */
export async function diagnoseConnection(t: ProbeTarget, signal: AbortSignal): Promise<string | undefined> {
  return explain(t, await probe(t, signal));
}
