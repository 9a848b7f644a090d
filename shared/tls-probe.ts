// One more TLS dial to a gRPC server, with a client's credentials, to see why a connection failed: grpc-js reports
// every failed connection as UNAVAILABLE with words meant for its own logs, and a client certificate the server
// refused as nothing but "Failed to connect": under TLS 1.3 the client has finished its handshake before the server
// checks the certificate, and a Node server then just closes the socket. The probe reads what happened from
// structured facts: the socket's error code, the verification of the server's certificate, whether the server closed
// the connection before its first HTTP/2 frame. The client library (client/diagnose.ts) and cosid's proxy to other
// nodes (server/api/node-proxy.ts) each put it in their own words.
import { isIP } from 'node:net';
import { checkServerIdentity, connect, type PeerCertificate, type TLSSocket } from 'node:tls';

/** How long the second dial may take before the diagnosis gives up (the call then fails with grpc-js's words). */
const PROBE_TIMEOUT_MS = 3000;

/** The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5): what makes a server answer. */
const H2_PREFACE = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]);

export interface ProbeTarget {
  /** host:port or [v6]:port, as dialled. */
  target: string;
  host: string;
  port: number;
  /** The name the server's certificate must carry (serverName, else the host). */
  name: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** What the second dial saw. */
export type ProbeOutcome =
  | { kind: 'socket-error'; code: string }
  | { kind: 'untrusted-server'; code: string; peer: PeerCertificate }
  | { kind: 'wrong-name'; peer: PeerCertificate }
  | { kind: 'closed-after-handshake' }
  | { kind: 'answered' }
  | { kind: 'no-answer' };

/** Dials `t` once with its credentials and says what happened. */
export function probe(t: ProbeTarget, signal: AbortSignal): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    let socket: TLSSocket | undefined;
    let settled = false;
    const finish = (o: ProbeOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', abort);
      socket?.destroy();
      resolve(o);
    };
    const abort = () => finish({ kind: 'no-answer' });
    const timer = setTimeout(abort, PROBE_TIMEOUT_MS);
    timer.unref();
    signal.addEventListener('abort', abort);
    try {
      socket = connect({
        host: t.host,
        port: t.port,
        ca: t.caPem,
        cert: t.certPem,
        key: t.keyPem,
        ALPNProtocols: ['h2'],
        // No SNI for an IP address (RFC 6066): Node warns (DEP0123) when given one.
        ...(isIP(t.name) === 0 ? { servername: t.name } : {}),
        // The server's certificate is judged below, its chain and then its name, so that each failure can be told
        // apart from the others.
        rejectUnauthorized: false,
        checkServerIdentity: () => undefined,
      });
    } catch {
      return finish({ kind: 'no-answer' });
    }
    const s = socket;
    // Whether the handshake went through with a server the client trusts: an end after that is the server's refusal.
    let secured = false;
    s.on('error', (err: NodeJS.ErrnoException) => finish(secured ? { kind: 'closed-after-handshake' } : { kind: 'socket-error', code: err.code ?? 'unknown' }));
    s.on('close', () => finish(secured ? { kind: 'closed-after-handshake' } : { kind: 'socket-error', code: 'ECONNRESET' }));
    s.on('secureConnect', () => {
      const peer = s.getPeerCertificate();
      if (!s.authorized) {
        // A code at run time, though @types/node says Error.
        const reason: unknown = s.authorizationError;
        const code = typeof reason === 'string' ? reason : reason instanceof Error ? ((reason as NodeJS.ErrnoException).code ?? reason.message) : 'unknown';
        return finish({ kind: 'untrusted-server', code, peer });
      }
      if (checkServerIdentity(t.name, peer) !== undefined) return finish({ kind: 'wrong-name', peer });
      secured = true;
      s.write(H2_PREFACE);
    });
    // The server's first frame: it took the client certificate.
    s.on('data', () => finish({ kind: 'answered' }));
  });
}
