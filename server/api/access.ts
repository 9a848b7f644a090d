// Who may do what: roles come from the client certificate's subject Organization values, or, for a call another
// cosid proxied (server/api/node-routing.ts), from the metadata `talos-role` that proxy passed, as Talos's apid does.
import type { ServerUnaryCall } from '@grpc/grpc-js';
import { CosiError } from '../../shared/errors.js';

export const ROLES = ['os:admin', 'os:operator', 'os:reader'] as const;
export type Role = (typeof ROLES)[number];

/** The role of a proxy: it may pass a caller's roles on (Talos's apid). It grants nothing by itself. */
export const IMPERSONATOR_ROLE = 'os:impersonator';
/** Request metadata: the caller's roles, passed by a proxy (repeated, or comma-separated). */
export const ROLE_METADATA_KEY = 'talos-role';
/** Request metadata: the address of the caller a proxy serves; marks the hop, so a call is proxied at most once. */
export const PROXY_FROM_METADATA_KEY = 'proxyfrom';
/** Request metadata, ours: the caller's certificate subject as the proxy saw it, for the node's audit log. */
export const CALLER_METADATA_KEY = 'cosi-caller';

export interface Peer {
  readonly subject: string;
  readonly roles: readonly Role[];
  /** The proxy a call came through (an os:impersonator peer that passed the caller's roles), and whence. */
  readonly via?: { readonly subject: string; readonly from: string };
  /** The peer sent `talos-role` but is no os:impersonator: the roles were ignored. */
  readonly forgedRoles?: boolean;
}

type CallForPeer = Pick<ServerUnaryCall<unknown, unknown>, 'getAuthContext' | 'metadata'>;

/**
 * Reads the verified peer certificate of an mTLS call (the handshake already rejected unknown CAs). An
 * os:impersonator peer that passes `talos-role` speaks for its caller: the call has the caller's roles and subject.
 * From any other peer `talos-role` is ignored (forgedRoles says so).
 */
export function peerOf(call: CallForPeer): Peer {
  const cert = call.getAuthContext()?.sslPeerCertificate;
  if (cert === undefined) throw new CosiError('unauthenticated', 'a client certificate is required');
  const subjectFields = cert.subject as unknown as Record<string, string | string[] | undefined>;
  const orgs = subjectFields['O'];
  const values = orgs === undefined ? [] : Array.isArray(orgs) ? orgs : [orgs];
  const cn = subjectFields['CN'];
  const subject = `CN=${Array.isArray(cn) ? cn.join(',') : (cn ?? '')}${values.map((o) => `, O=${o}`).join('')}`;
  const passed = metadataStrings(call, ROLE_METADATA_KEY).flatMap((v) => v.split(',')).map((r) => r.trim()).filter((r) => r !== '');
  if (passed.length > 0 || call.metadata.get(ROLE_METADATA_KEY).length > 0) {
    if (!values.includes(IMPERSONATOR_ROLE)) return { subject, roles: ROLES.filter((r) => values.includes(r)), forgedRoles: true };
    const caller = metadataStrings(call, CALLER_METADATA_KEY)[0];
    return {
      subject: caller !== undefined && caller !== '' ? caller.slice(0, 512) : '(a caller the proxy did not name)',
      roles: ROLES.filter((r) => passed.includes(r)),
      via: { subject, from: (metadataStrings(call, PROXY_FROM_METADATA_KEY)[0] ?? '').slice(0, 256) },
    };
  }
  return { subject, roles: ROLES.filter((r) => values.includes(r)) };
}

/**
 * The connection a call's per-connection limits count against (grpc-js names one "ip:port"): its own, or for a call
 * an os:impersonator proxied, the caller's connection to the proxy (proxyfrom). A proxy carries many callers on one
 * connection; each is held to the limits it would meet here directly.
 */
export function connectionOf(call: CallForPeer & { getPeer(): string }): string {
  const from = call.metadata.get(PROXY_FROM_METADATA_KEY)[0];
  if (typeof from !== 'string' || from === '') return call.getPeer();
  let peer: Peer;
  try {
    peer = peerOf(call);
  } catch {
    return call.getPeer();
  }
  return peer.via !== undefined && peer.via.from !== '' ? `${peer.via.from} (through ${call.getPeer()})` : call.getPeer();
}

/** Who the peer is, for messages: the caller's subject, and the proxy it came through. */
export function describePeer(peer: Peer): string {
  return peer.via === undefined ? `certificate ${peer.subject}` : `caller ${peer.subject} (through the proxy ${peer.via.subject})`;
}

function metadataStrings(call: Pick<CallForPeer, 'metadata'>, key: string): string[] {
  return call.metadata.get(key).filter((v): v is string => typeof v === 'string');
}

/** Get, List and Watch need any known role; sensitive types need os:admin. */
export function authorizeRead(peer: Peer, sensitive: boolean, type: string): void {
  if (peer.roles.length === 0) {
    throw new CosiError('permission-denied', `not authorized: ${describePeer(peer)} has none of the roles ${ROLES.join(', ')}`);
  }
  if (sensitive && !peer.roles.includes('os:admin')) {
    throw new CosiError('permission-denied', `not authorized: ${type} is sensitive and needs role os:admin`);
  }
}

/** Changes to the node (ApplyConfiguration) need os:admin, as on Talos outside maintenance mode. */
export function authorizeAdmin(peer: Peer, what: string): void {
  if (!peer.roles.includes('os:admin')) {
    const has = peer.roles.length === 0 ? `none of the roles ${ROLES.join(', ')}` : `only ${peer.roles.join(', ')}`;
    throw new CosiError('permission-denied', `not authorized: ${what} needs role os:admin; ${describePeer(peer)} has ${has}`);
  }
}
