// cosid on etcd while etcd goes away and comes back: reads answer UNAVAILABLE within the deadline, watches end with
// UNAVAILABLE and the client library resumes them, cosid stays up, and a machine config change made during the
// outage is written once etcd is back.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connect, type ConnectionState, type WatchEvent } from '../client/index.js';
import { isCosiError } from '../shared/errors.js';
import { CosiNode } from '../server/node.js';
import { EtcdStore } from '../server/store/etcd.js';
import { etcdPrerequisites, startEtcdCluster } from './etcd/cluster.js';
import { makePki } from './harness.js';
import { machineConfig } from './pipeline-harness.js';

const skip = process.env['COSI_TEST_ETCD'] === 'off' || !etcdPrerequisites().ok;
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

const pod = (name: string) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name }, spec: { containers: [{ name, image: 'busybox' }] } });

describe.skipIf(skip)('cosid when etcd goes away', () => {
  it('answers UNAVAILABLE, stays up, resumes watches and lands the config written meanwhile', async () => {
    const cluster = await startEtcdCluster({ size: 1 });
    cleanups.push(() => cluster.close());
    const pki = await makePki();
    const dir = await mkdtemp(join(tmpdir(), 'cosi-outage-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const configPath = join(dir, 'machine.yaml');
    await writeFile(configPath, machineConfig([pod('one')]));
    const store = await EtcdStore.connect({
      endpoints: cluster.endpoints,
      tls: { caPem: cluster.client.caPem, certPem: cluster.client.certPem, keyPem: cluster.client.keyPem },
      prefix: '/cosi/outage-node/',
      callTimeoutMs: 1000,
      watchGraceMs: 300,
    });
    const node = await CosiNode.start({
      listen: '127.0.0.1:0',
      tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
      nodeName: 'outage-node',
      configPath,
      store,
    });
    cleanups.push(() => node.stop());
    const client = connect({ endpoint: `127.0.0.1:${node.cosid.port}`, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
    cleanups.push(() => client.close());

    const states: ConnectionState[] = [];
    const stateWaiters: { state: ConnectionState; resolve: () => void }[] = [];
    const onState = (s: ConnectionState) => {
      states.push(s);
      for (const w of stateWaiters.filter((x) => x.state === s)) w.resolve();
    };
    const stateSeen = (state: ConnectionState) => new Promise<void>((resolve) => (states.includes(state) ? resolve() : stateWaiters.push({ state, resolve })));
    const stream = client.watchIter('staticpods', { bootstrap: true, reconnect: { initialDelayMs: 100, maxDelayMs: 300, jitter: 0, onState } });
    const events: WatchEvent[] = [];
    let wanted: ((e: WatchEvent) => boolean) | undefined;
    let found: (() => void) | undefined;
    const consumer = (async () => {
      for await (const e of stream) {
        events.push(e);
        if (wanted?.(e) === true) found?.();
      }
    })();
    const until = (match: (e: WatchEvent) => boolean) =>
      new Promise<void>((resolve) => {
        if (events.some(match)) return resolve();
        wanted = match;
        found = resolve;
      });
    await until((e) => e.type === 'bootstrapped');
    expect(events.filter((e) => e.type === 'created').map((e) => e.resource?.metadata.id)).toEqual(['default-one']);

    // etcd goes away. The watch ends with UNAVAILABLE (the library says it is reconnecting), reads answer
    // UNAVAILABLE within the deadline, and cosid itself keeps answering.
    await cluster.kill(0);
    await stateSeen('reconnecting');
    const started = Date.now();
    const err = await client.get('staticpods', 'default-one').catch((e: unknown) => e);
    expect(isCosiError(err, 'unavailable')).toBe(true);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect((err as Error).message).toMatch(/etcd/);

    // The config changes while etcd is away: the reconcile waits for etcd and lands when it is back.
    await writeFile(configPath, machineConfig([pod('one'), pod('two')]));
    const reloaded = node.config.reload('test');
    await cluster.start(0);
    expect(await reloaded).toBe(true);

    await until((e) => e.type === 'created' && e.resource?.metadata.id === 'default-two');
    expect((await client.list('staticpods')).map((r) => r.metadata.id)).toEqual(['default-one', 'default-two']);
    await stream.close();
    await consumer;
    // Resumed from its bookmark: no re-list, nothing twice.
    expect(states).not.toContain('resyncing');
    const ids = events.filter((e) => e.type === 'created').map((e) => e.resource?.metadata.id);
    expect(ids).toEqual(['default-one', 'default-two']);
  }, 90_000);
});
