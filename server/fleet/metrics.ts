// The fleet's own metrics, beside the State service's (server/metrics.ts): how many nodes this replica follows and
// in which state, bootstrap slots, handovers and fenced writes, the writer's transactions, and the time from a
// node's change reaching the follower to its commit in etcd.
import { Counter, Gauge, Histogram } from 'prom-client';
import type { Metrics } from '../metrics.js';
import type { Followers } from './followers.js';
import type { FleetWriter } from './writer.js';

const COMMIT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** A counter whose value is read from a running total at scrape time. */
function totalCounter(name: string, help: string, metrics: Metrics, read: () => number): void {
  new Counter({
    name,
    help,
    registers: [metrics.registry],
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

/** Registers the fleet's metrics; returns the observer of change-to-commit times for the followers. */
export function fleetMetrics(metrics: Metrics, sources: { followers: () => Followers; writer: FleetWriter; replicas: () => number }): (seconds: number) => void {
  const registers = [metrics.registry];
  new Gauge({
    name: 'fleet_nodes',
    help: 'Nodes this replica follows, by state (Waiting, Following, Unreachable, Throttled)',
    labelNames: ['state'],
    registers,
    collect() {
      this.reset();
      for (const [state, n] of sources.followers().countByState()) this.set({ state }, n);
    },
  });
  new Gauge({
    name: 'fleet_bootstraps',
    help: 'Bootstrap slots (nodes connecting, resuming or listing again): held now, and the most held at once since start',
    labelNames: ['stat'],
    registers,
    collect() {
      const s = sources.followers().stats();
      this.set({ stat: 'in_flight' }, s.bootstrapsInFlight);
      this.set({ stat: 'max' }, s.bootstrapsMax);
    },
  });
  new Gauge({ name: 'fleet_replicas', help: 'Live replicas of the fleet, as this one sees them', registers, collect() { this.set(sources.replicas()); } });
  totalCounter('fleet_handovers_total', 'Nodes this replica handed over to another', metrics, () => sources.followers().stats().handovers);
  totalCounter('fleet_fenced_total', "Nodes whose writes were fenced: another replica owned them (this one's lease was lost)", metrics, () => sources.followers().stats().fenced);
  totalCounter('fleet_txns_total', 'Transactions the fleet writer committed', metrics, () => sources.writer.stats.txns);
  totalCounter('fleet_ops_committed_total', 'Puts and deletes of node state the fleet writer committed', metrics, () => sources.writer.stats.opsCommitted);
  const commit = new Histogram({ name: 'fleet_change_to_commit_seconds', help: "From a node's change reaching its follower to its commit in etcd", buckets: COMMIT_BUCKETS, registers });
  return (seconds) => commit.observe(seconds);
}
