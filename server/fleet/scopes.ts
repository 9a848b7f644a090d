// What a State call reads in the fleet (docs/design/fleet.md §5): without metadata `node`, the fleet view (every
// node's resources, ids `<node>/<id>`, the node label); with `node: n` and a kind the fleet mirrors (or a meta
// kind), n's own view served from the fleet's copy, so it answers while n is down; any other kind is relayed to n
// (node-routing.ts asks answerHere). Each scope is the ordinary State service over its own feed and watch hub:
// nothing in server/watch knows about fleets.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../../shared/log.js';
import type { Kind } from '../../shared/resource.js';
import { stateServiceHandlers } from '../api/service.js';
import type { FramedStreamStats } from '../api/framed-stream.js';
import type { Metrics } from '../metrics.js';
import { META_NAMESPACE, type Registry } from '../resources/registry.js';
import type { ChangeFeed } from '../store/store.js';
import type { CurrentFrames } from '../watch/current-frames.js';
import type { Frames } from '../watch/frames.js';
import { WatchHub } from '../watch/hub.js';
import type { NodeScope } from './node-view.js';
import { DEFAULT_WATCH_LIMITS } from '../watch/limits.js';
import type { CosiError } from '../../shared/errors.js';
import { NODE_METADATA_KEY } from '../api/node-routing.js';
import { isMirroredKind } from './keys.js';

/** Response header of the fleet view: the fleet's etcd prefix (cosictl takes NODE from the node label). */
export const FLEET_HEADER = 'cosi-fleet';
/** Response header of a node's view while the fleet does not follow the node live: `Unreachable; since=<RFC 3339>`. */
export const NODE_STATE_HEADER = 'cosi-fleet-node-state';

export interface ScopeDeps {
  fleetFeed: ChangeFeed;
  /** A node's view of the fleet feed and its hub (node-view.ts), made on first use; dropped when idle. */
  nodeScope(node: string): NodeScope;
  /** How the fleet follows a node now, as its FleetNode says: undefined while it is followed live. */
  nodeLag(node: string): string | undefined;
  registry: Registry;
  frames: Frames;
  current: CurrentFrames;
  listStats: FramedStreamStats;
  metrics: Metrics;
  log: Logger;
  replica: string;
  prefix: string;
  audit: boolean;
}


export class FleetScopes {
  readonly fleetHub: WatchHub;
  private readonly fleet: grpc.UntypedServiceImplementation;
  /** Each node scope's handlers, made with it (NodeViews drops idle scopes; their handlers go with them). */
  private readonly nodeHandlers = new WeakMap<NodeScope, grpc.UntypedServiceImplementation>();

  constructor(private readonly deps: ScopeDeps) {
    this.fleetHub = new WatchHub(deps.fleetFeed, deps.frames, DEFAULT_WATCH_LIMITS, deps.metrics);
    const fleetHeader = { [FLEET_HEADER]: deps.prefix };
    this.fleet = stateServiceHandlers({
      feed: deps.fleetFeed,
      registry: deps.registry,
      frames: deps.frames,
      current: deps.current,
      listStats: deps.listStats,
      hub: this.fleetHub,
      log: deps.log,
      metrics: deps.metrics,
      nodeName: deps.replica,
      extraHeaders: () => fleetHeader,
      audit: deps.audit,
    });
  }

  /** node-routing.ts: a call naming a node is answered here for the kinds the fleet holds of it. */
  answerHere(method: string, request: unknown): boolean {
    if (method !== 'Get' && method !== 'List' && method !== 'Watch') return false;
    const kind = request as Partial<Kind> | null;
    if (kind === null || typeof kind.type !== 'string' || typeof kind.namespace !== 'string') return false;
    return kind.namespace === META_NAMESPACE || isMirroredKind({ namespace: kind.namespace, type: kind.type });
  }

  /** The State service's handlers, each call sent to its scope's. */
  handlers(): grpc.UntypedServiceImplementation {
    const out: grpc.UntypedServiceImplementation = {};
    for (const method of Object.keys(this.fleet)) {
      out[method] = ((call: grpc.ServerUnaryCall<unknown, unknown> & { emit?: unknown }, callback?: grpc.sendUnaryData<unknown>) => {
        const node = call.metadata.get(NODE_METADATA_KEY)[0];
        const scope = typeof node === 'string' && node.trim() !== '' ? this.nodeScope(node.trim()) : this.fleet;
        (scope[method] as (c: unknown, cb: unknown) => void)(call, callback);
      }) as grpc.UntypedHandleCall;
    }
    return out;
  }

  /** Ends every watch of the fleet view (NodeViews.close ends the node views'). */
  endAll(err: CosiError): void {
    this.fleetHub.endAll(err);
  }

  private nodeScope(node: string): grpc.UntypedServiceImplementation {
    const scope = this.deps.nodeScope(node);
    let handlers = this.nodeHandlers.get(scope);
    if (handlers === undefined) {
      // Without CurrentFrames: a node's List is small, and a dropped scope must leave nothing tracked behind.
      handlers = stateServiceHandlers({
        feed: scope.feed,
        registry: this.deps.registry,
        frames: this.deps.frames,
        hub: scope.hub,
        log: this.deps.log,
        metrics: this.deps.metrics,
        nodeName: node,
        extraHeaders: () => {
          const state = this.deps.nodeLag(node);
          return state === undefined ? undefined : { [NODE_STATE_HEADER]: state };
        },
        audit: this.deps.audit,
      });
      this.nodeHandlers.set(scope, handlers);
    }
    return handlers;
  }
}
