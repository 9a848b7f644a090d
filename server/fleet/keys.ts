// Where the fleet keeps what in etcd, under its prefix P (--etcd-prefix). The resources are the fleet store's
// (an EtcdStore with prefix P + "r/"), kind first and node second, so that the fleet view of a kind is one prefix
// and one etcd watch per kind per replica: `<P>r/<ns>/<type>/<node>/<id>`. Beside them, each node's watch
// bookmarks (written in the same transaction as the data they cover), owner keys (on the owner's lease), the
// replicas (on their leases) and the node list of record. docs/design/fleet.md §2.
import type { Kind } from '../../shared/resource.js';
import { CONFIG_NAMESPACE, K8S_NAMESPACE, MACHINE_CONFIG_STATUS_TYPE, STATIC_POD_STATUS_TYPE, STATIC_POD_TYPE } from '../resources/k8s.js';
import { kindPrefixOf } from '../store/etcd/codec.js';

/** The kinds the fleet copies from each node. */
export const MIRRORED_KINDS: readonly Kind[] = Object.freeze([
  { namespace: K8S_NAMESPACE, type: STATIC_POD_TYPE },
  { namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE },
  { namespace: CONFIG_NAMESPACE, type: MACHINE_CONFIG_STATUS_TYPE },
]);

export const FLEET_NAMESPACE = 'fleet';
export const FLEET_NODE_TYPE = 'FleetNodes.fleet.cosi-pods.dev';
export const FLEET_NODE_KIND: Kind = Object.freeze({ namespace: FLEET_NAMESPACE, type: FLEET_NODE_TYPE });

export function isMirroredKind(k: Kind): boolean {
  return MIRRORED_KINDS.some((m) => m.namespace === k.namespace && m.type === k.type);
}

/** A node name may go into a key segment and a fleet id (`<node>/<id>`): no "/", not empty, at most 253 bytes. */
export function checkNodeName(name: string): void {
  if (name === '' || name.includes('/') || Buffer.byteLength(name) > 253) throw new Error(`node name ${JSON.stringify(name)} must be 1-253 bytes without "/"`);
}

/** The fleet's keys under one prefix. */
export class FleetKeys {
  constructor(readonly prefix: string) {
    if (prefix === '' || !prefix.endsWith('/')) throw new Error(`etcd prefix ${JSON.stringify(prefix)} must end with "/"`);
  }

  /** The fleet store's prefix (EtcdStore `prefix`): resources, FleetNodes and the registry's meta kinds. */
  get storePrefix(): string {
    return `${this.prefix}r/`;
  }

  /** A node's resources of one kind: `<P>r/<ns>/<type>/<node>/`. */
  nodeKindPrefix(k: Kind, node: string): string {
    return `${kindPrefixOf(this.storePrefix, k)}${node}/`;
  }

  /** One resource of a node, under the node-local id the node gives it. */
  resource(k: Kind, node: string, id: string): string {
    return this.nodeKindPrefix(k, node) + id;
  }

  fleetNode(node: string): string {
    return kindPrefixOf(this.storePrefix, FLEET_NODE_KIND) + node;
  }

  /** `<P>bm/<node>/`: the node's bookmarks, one per mirrored type. */
  bookmarkPrefix(node: string): string {
    return `${this.prefix}bm/${node}/`;
  }

  bookmark(node: string, type: string): string {
    return this.bookmarkPrefix(node) + type;
  }

  get ownersPrefix(): string {
    return `${this.prefix}owners/`;
  }

  /** Value: the owning replica's name; on its lease; its create_revision is the fence token. */
  owner(node: string): string {
    return this.ownersPrefix + node;
  }

  get replicasPrefix(): string {
    return `${this.prefix}replicas/`;
  }

  replica(name: string): string {
    return this.replicasPrefix + name;
  }

  get nodeList(): string {
    return `${this.prefix}nodelist`;
  }
}
