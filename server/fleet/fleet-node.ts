// FleetNode: one per node of the fleet, saying how the fleet follows it (docs/design/fleet.md §2). Only the node's
// owner writes it, through the fenced writer, so a replica that lost the node cannot overwrite its successor's.
import type { Json } from '../../shared/wire.js';
import type { Registry } from '../resources/registry.js';
import { encodeValue } from '../store/etcd/codec.js';
import { FLEET_NAMESPACE, FLEET_NODE_TYPE } from './keys.js';
import { NODE_LABEL } from '../store/etcd/codec.js';

export type FleetNodeState = 'Waiting' | 'Following' | 'Unreachable' | 'Throttled';

export interface FleetNodeSpec {
  readonly address: string;
  readonly state: FleetNodeState;
  /** The replica following the node. */
  readonly replica: string;
  /** RFC 3339; when this replica began following the node. */
  readonly followingSince: string;
  /** RFC 3339, while the node cannot be reached. */
  readonly unreachableSince: string | null;
  readonly lastError: string | null;
  /** Age of the oldest change received from the node and not yet committed (0: caught up). */
  readonly lagMs: number;
  /** RFC 3339 of the last change committed, or null. */
  readonly lastChangeAt: string | null;
  /** How many times the node's watches had to be listed again (the node lost our place). */
  readonly relists: number;
}

export const FLEET_NODE_OWNER = 'cosi-fleet';

export function registerFleetTypes(registry: Registry): void {
  registry.registerNamespace(FLEET_NAMESPACE, 'How the fleet follows its nodes.');
  registry.register({
    type: FLEET_NODE_TYPE,
    displayType: 'FleetNode',
    defaultNamespace: FLEET_NAMESPACE,
    aliases: ['fleetnode', 'fn'],
    printColumns: [
      { name: 'Replica', jsonPath: '{.replica}' },
      { name: 'State', jsonPath: '{.state}' },
      { name: 'Since', jsonPath: '{.unreachableSince}' },
      { name: 'Lag', jsonPath: '{.lagMs}' },
      { name: 'Error', jsonPath: '{.lastError}' },
    ],
  });
}

/** The stored value of a node's FleetNode (an ordinary cosi-resource/1 value: its version is the key's). */
export function fleetNodeValue(node: string, spec: FleetNodeSpec, created: Date, now = new Date()): string {
  return encodeValue(
    {
      namespace: FLEET_NAMESPACE,
      type: FLEET_NODE_TYPE,
      id: node,
      version: 0,
      owner: FLEET_NODE_OWNER,
      phase: 'running',
      created,
      updated: now,
      labels: { [NODE_LABEL]: node },
      annotations: {},
      finalizers: [],
    },
    JSON.stringify(spec as unknown as Json),
  );
}
