// Test-only: a kind's history once it holds every change committed before the call. A memory store's commits reach
// its history before their writer's promise settles; an etcd store's history is fed by the kind's watch, so it is
// read once the feed has reached the cluster's revision as of this call (a fence write when it is behind).
import { EtcdStore } from '../server/store/etcd.js';
import { wholeRevision } from '../server/store/etcd/backend.js';
import type { KindHistory, ResourceStore } from '../server/store/store.js';
import type { Kind } from '../shared/resource.js';

export async function caughtUp(store: ResourceStore, kind: Kind): Promise<KindHistory> {
  const history = await store.feed.history(kind);
  if (store instanceof EtcdStore) {
    const { header } = await store.etcd.client.maintenance.status({});
    await store.feed.reach(kind, wholeRevision(Number(header.revision)));
  }
  return history;
}
