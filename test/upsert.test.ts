// upsert() on a store shared by several writers: a create that lost the race to another writer becomes an update.
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../server/store/memory.js';
import type { ResourceStore } from '../server/store/store.js';
import { upsert } from '../server/store/upsert.js';

const input = { namespace: 'meta', type: 'Namespaces.meta.cosi.dev', id: 'k8s', spec: { description: 'mine' } };

describe('upsert', () => {
  it('updates what another writer created between its read and its create', async () => {
    const store = new MemoryStore();
    // The other writer (a second replica starting on the same etcd) creates the resource right after our read.
    const racing: ResourceStore = Object.create(store, {
      get: {
        value: async (p: Parameters<ResourceStore['get']>[0]) => {
          try {
            return await store.get(p);
          } catch (err) {
            await store.create({ ...input, spec: { description: 'theirs' } }, 'cosi.meta').catch(() => undefined);
            throw err;
          }
        },
      },
    });
    expect(await upsert(racing, input, 'cosi.meta')).toBe('updated');
    expect((await store.get(input)).spec).toEqual({ description: 'mine' });
    await store.close();
  });
});
