// Who may do what: roles come from the client certificate's subject Organization values.
import type { ServerUnaryCall } from '@grpc/grpc-js';
import { CosiError } from '../../shared/errors.js';

export const ROLES = ['os:admin', 'os:operator', 'os:reader'] as const;
export type Role = (typeof ROLES)[number];

export interface Peer {
  readonly subject: string;
  readonly roles: readonly Role[];
}

/** Reads the verified peer certificate of an mTLS call. The handshake already rejected unknown CAs. */
export function peerOf(call: Pick<ServerUnaryCall<unknown, unknown>, 'getAuthContext'>): Peer {
  const cert = call.getAuthContext()?.sslPeerCertificate;
  if (cert === undefined) throw new CosiError('unauthenticated', 'a client certificate is required');
  const subject = cert.subject as unknown as Record<string, string | string[] | undefined>;
  const orgs = subject['O'];
  const values = orgs === undefined ? [] : Array.isArray(orgs) ? orgs : [orgs];
  const roles = ROLES.filter((r) => values.includes(r));
  const cn = subject['CN'];
  return { subject: `CN=${Array.isArray(cn) ? cn.join(',') : (cn ?? '')}${values.map((o) => `, O=${o}`).join('')}`, roles };
}

/** Get, List and Watch need any known role; sensitive types need os:admin. */
export function authorizeRead(peer: Peer, sensitive: boolean, type: string): void {
  if (peer.roles.length === 0) {
    throw new CosiError('permission-denied', `not authorized: certificate ${peer.subject} has none of the roles ${ROLES.join(', ')}`);
  }
  if (sensitive && !peer.roles.includes('os:admin')) {
    throw new CosiError('permission-denied', `not authorized: ${type} is sensitive and needs role os:admin`);
  }
}

/** Changes to the node (ApplyConfiguration) need os:admin, as on Talos outside maintenance mode. */
export function authorizeAdmin(peer: Peer, what: string): void {
  if (!peer.roles.includes('os:admin')) {
    const has = peer.roles.length === 0 ? `none of the roles ${ROLES.join(', ')}` : `only ${peer.roles.join(', ')}`;
    throw new CosiError('permission-denied', `not authorized: ${what} needs role os:admin; certificate ${peer.subject} has ${has}`);
  }
}
