// What cosictl shows differently when the endpoint is a cosi-fleet (docs/design/fleet.md §5): rows of the fleet view
// name their node in a label and carry it in their id; the fleet's FleetNodes say which nodes' rows are not current.
import type { Json } from '../../shared/wire.js';
import type { CosiResource } from '../resource.js';

/** The label the fleet view adds to each resource: the node it mirrors it from (server/fleet/mirror.ts NODE_LABEL). */
export const FLEET_NODE_LABEL = 'cosi-pods.dev/node';
export const FLEET_NODE_TYPE = 'FleetNodes.fleet.cosi-pods.dev';
export const FLEET_NAMESPACE = 'fleet';

/**
 * A fleet-view resource as the table names it: the node from its label and the id without the `<node>/` the fleet
 * prefixes it with. A resource without the label (a resource definition, for one) belongs to no node: node ''.
 */
export function fleetNameOf(resource: CosiResource): { node: string; id: string } {
  const id = resource.metadata.id;
  const node = resource.metadata.labels[FLEET_NODE_LABEL];
  if (node === undefined) return { node: '', id };
  return { node, id: id.startsWith(`${node}/`) ? id.slice(node.length + 1) : id };
}

/** The nodes' FleetNode specs, by node name, kept current by the caller (a List, or a Watch's events). */
export class FleetNodeStates {
  private readonly specs = new Map<string, Json>();

  set(resource: CosiResource): void {
    this.specs.set(resource.metadata.id, resource.spec);
  }

  delete(resource: CosiResource): void {
    this.specs.delete(resource.metadata.id);
  }

  /**
   * The STALE cell of a node's rows: '' while the fleet follows the node (Following, or Throttled: followed, changes
   * coalesced) and for a node it has no FleetNode for; else the state, with its age for Unreachable ("unreachable 2m").
   */
  staleOf(node: string, now = Date.now()): string {
    const spec = this.specs.get(node);
    if (spec === undefined || spec === null || typeof spec !== 'object' || Array.isArray(spec)) return '';
    const state = typeof spec['state'] === 'string' ? spec['state'] : '';
    if (state === '' || state === 'Following' || state === 'Throttled') return '';
    const since = spec['unreachableSince'];
    const at = state === 'Unreachable' && typeof since === 'string' ? Date.parse(since) : NaN;
    return Number.isNaN(at) ? state.toLowerCase() : `${state.toLowerCase()} ${age(now - at)}`;
  }
}

/** An age as kubectl prints one: 45s, 2m, 3h, 5d (whole units, rounded down; never negative). */
export function age(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

/**
 * The stderr line for a node asked through a fleet that does not follow it live, from the response header
 * `cosi-fleet-node-state` (`Unreachable; since=<RFC3339>`, `Waiting`, `Unknown; ...`).
 */
export function nodeStateWarning(node: string, header: string): string {
  const [state = '', ...params] = header.split(';').map((p) => p.trim());
  const since = params.find((p) => p.startsWith('since='))?.slice('since='.length);
  const what = state === '' ? 'not followed by the fleet' : state.toLowerCase();
  return `warning: ${node}: ${what}${since !== undefined && since !== '' ? ` since ${since}` : ''}; rows as the fleet last saw them\n`;
}
