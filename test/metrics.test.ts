// Prometheus metrics (--metrics-listen): a real node with a simulated kubelet, scraped over HTTP during a watch.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WatchEvent, WatchStream } from '../client/index.js';
import { isCosiError } from '../shared/errors.js';
import { eventually } from './harness.js';
import { machineConfig, startNode, type TestNode } from './pipeline-harness.js';

const pod = (name: string) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name }, spec: { containers: [{ name, image: 'busybox' }] } });

/** One scrape, as sample name{labels} -> value. */
async function scrape(url: string): Promise<Map<string, number>> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const samples = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

const STATE = 'service="cosi.resource.State"';

describe('metrics', () => {
  let n: TestNode;
  let url: string;
  let stream: WatchStream;
  const events: WatchEvent[] = [];
  let arrived: (() => void) | undefined;
  const nextEvent = () => new Promise<void>((resolve) => (arrived = resolve));

  beforeAll(async () => {
    n = await startNode(machineConfig([pod('one')]), { metrics: true });
    url = n.node.cosid.metricsUrl ?? '';
    stream = n.client.watchIter('staticpods', { bootstrap: true });
    void (async () => {
      for await (const e of stream) {
        events.push(e);
        arrived?.();
      }
    })();
    await eventually(() => expect(events.map((e) => e.type)).toEqual(['created', 'bootstrapped']));
    // The kubelet has been read and its statuses written.
    await eventually(async () => expect((await n.client.list('podstatus')).map((r) => r.metadata.id)).toEqual(['default/one-node-1']));
  });
  afterAll(async () => {
    await stream.close();
    await n.close();
  });

  it('counts the watch, its events and bytes, calls, reloads, polls, the store and the certificates', async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    let m = await scrape(url);
    expect(m.get('cosi_watchers{state="streaming"}')).toBe(1);
    expect(m.get('cosi_watchers{state="parked"}')).toBe(0);
    expect(m.get('cosi_watch_lag_events{stat="max"}')).toBe(0);
    expect(m.get('cosi_watch_lag_events{stat="total"}')).toBe(0);
    // The bootstrap: one created event and BOOTSTRAPPED.
    expect(m.get('cosi_watch_events_sent_total{form="lean+gzip"}')).toBe(2);
    const bytes = m.get('cosi_watch_bytes_sent_total{form="lean+gzip"}') ?? 0;
    expect(bytes).toBeGreaterThan(0);
    expect(m.get('cosi_store_resources{namespace="k8s",type="StaticPods.kubernetes.talos.dev"}')).toBe(1);
    expect(m.get('cosi_store_resources{namespace="k8s",type="StaticPodStatuses.kubernetes.talos.dev"}')).toBe(1);
    expect(m.get('cosi_config_reloads_total{outcome="applied"}')).toBe(1);
    expect(m.get('cosi_kubelet_poll_duration_seconds_count{outcome="ok"}')).toBeGreaterThanOrEqual(1);
    const age = m.get('cosi_kubelet_last_good_poll_age_seconds') ?? -1;
    expect(age).toBeGreaterThanOrEqual(0);
    expect(age).toBeLessThan(60);
    // The test PKI's server certificate is valid for a year or so: well in the future, not past.
    expect(m.get('cosi_certificate_expiry_seconds{certificate="server",subject=""}')).toBeGreaterThan(86_400);
    expect([...m.keys()].some((k) => k.startsWith('cosi_certificate_expiry_seconds{certificate="client-ca"'))).toBe(true);

    // Three Gets: three more observations of Get with code OK.
    const gets = m.get(`cosi_grpc_call_duration_seconds_count{${STATE},method="Get",code="OK"}`) ?? 0;
    for (let i = 0; i < 3; i++) await n.client.get('staticpods', 'default-one');
    // A Get of what does not exist is NOT_FOUND, counted under its code.
    await expect(n.client.get('staticpods', 'default-none')).rejects.toMatchObject({ kind: 'not-found' });

    // A config change reaches the watch as one more event; a broken config is rejected and counted.
    const created = nextEvent();
    await n.writeConfig(machineConfig([pod('one'), pod('two')]));
    await created;
    await n.writeConfig('version: v1alpha1\nmachine: [not, a, map');
    await eventually(async () => expect((await scrape(url)).get('cosi_config_reloads_total{outcome="rejected"}')).toBe(1));

    // A bookmark of another history is answered "too old".
    const foreign = Buffer.alloc(18);
    foreign.writeUInt8(1, 0);
    randomBytes(8).copy(foreign, 2);
    const refused = n.client.watchIter('staticpods', { fromBookmark: foreign, reconnect: false });
    const err = await refused.next().catch((e: unknown) => e);
    expect(isCosiError(err, 'too-old')).toBe(true);

    m = await scrape(url);
    expect(m.get(`cosi_grpc_call_duration_seconds_count{${STATE},method="Get",code="OK"}`)).toBe(gets + 3);
    expect(m.get(`cosi_grpc_call_duration_seconds_count{${STATE},method="Get",code="NOT_FOUND"}`)).toBe(1);
    expect(m.get('cosi_watch_events_sent_total{form="lean+gzip"}')).toBe(3);
    expect(m.get('cosi_watch_bytes_sent_total{form="lean+gzip"}')).toBeGreaterThan(bytes);
    expect(m.get('cosi_config_reloads_total{outcome="applied"}')).toBe(2);
    expect(m.get('cosi_store_resources{namespace="k8s",type="StaticPods.kubernetes.talos.dev"}')).toBe(2);
    expect(m.get('cosi_watch_too_old_total')).toBe(1);
    expect(m.get('cosi_watch_overruns_total')).toBe(0);
  });

  it('answers only GET /metrics', async () => {
    expect((await fetch(url.replace('/metrics', '/'))).status).toBe(404);
    expect((await fetch(url, { method: 'POST' })).status).toBe(405);
  });
});
