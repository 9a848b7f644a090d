// Hostile requests: the server answers every one with a documented status, keeps serving others, and its
// memory returns to its baseline. (A longer run: npm run fuzz -- --duration 10m.)
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { silentLogger } from '../shared/log.js';
import { runFuzz } from './fuzz/fuzzer.js';
import { pod, podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const heap = () => {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
};

let srv: TestServer;
beforeAll(async () => {
  srv = await startServer();
  reconcileStaticPods(srv.cosid.store, [{ id: 'default-nginx', pod: pod('nginx'), origin: 'test' }], silentLogger);
  for (let i = 0; i < 20; i++) srv.cosid.store.create({ ...STATUSES, id: `default/p${i}`, spec: podStatus(i % 2 === 0), labels: { n: String(i) } }, TEST_OWNER);
});
afterAll(() => srv.close());

describe('fuzzing every method', () => {
  it('answers random, mutated and wild requests with documented statuses while serving another client', async () => {
    const seed = Number(process.env['FUZZ_SEED'] ?? 7);
    const good = srv.client();
    await good.list('staticpods');
    const baseline = heap();
    let served = 0;
    let failed = 0;
    let fuzzing = true;
    const bystander = (async () => {
      while (fuzzing) {
        try {
          const r = await good.get('staticpods', 'default-nginx');
          if (r.metadata.id === 'default-nginx') served++;
        } catch {
          failed++;
        }
      }
    })();
    const report = await runFuzz(
      { endpoint: srv.endpoint, caPem: srv.pki.ca.certPem, certPem: srv.pki.admin.certPem, keyPem: srv.pki.admin.keyPem },
      { durationMs: 4000, seed, concurrency: 4 },
    );
    fuzzing = false;
    await bystander;
    expect(report.findings).toEqual([]);
    expect(report.calls).toBeGreaterThan(100);
    // The generator really reached the validation paths, not just the happy ones.
    expect(report.byCode['INVALID_ARGUMENT'] ?? 0).toBeGreaterThan(10);
    expect(report.byCode['OK'] ?? 0).toBeGreaterThan(0);
    expect(failed).toBe(0);
    expect(served).toBeGreaterThan(10);
    expect((await good.list('podstatus')).length).toBe(20);
    // Nothing the fuzzer sent is still held: watches are gone and memory is back near its baseline.
    await new Promise((r) => setTimeout(r, 300));
    expect(srv.cosid.hub.stats().sessions).toBe(0);
    expect(heap() - baseline).toBeLessThan(32 << 20);
  });
});
