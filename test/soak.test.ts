// The short soak (`npm run soak` is the long one): the whole node on loopback for ~25 s under every fault kind,
// with a fixed seed; every watcher's history must hold the watch guarantees and converge to a fresh List.
// Needs the real etcd and containerd (the soak starts its own: a 3-member etcd and a private containerd), and the
// compiled children (dist/, which `npm test` builds first); COSI_TEST_ETCD=off or COSI_TEST_CRI=off skip it.
import { expect, inject, it } from 'vitest';
import { FAULT_KINDS, runSoak } from './soak/soak.js';

const skip = inject('etcd') === null || inject('cri') === null;
const SEED = Number(process.env['SOAK_SEED'] ?? 20);

it.skipIf(skip)(`a short soak (seed ${SEED}): every fault kind, every watcher's history checked, no violation`, async () => {
  const report = await runSoak({ seed: SEED, durationMs: 25_000, faultEveryMs: 1200, watchers: 6, everyKind: true });
  expect(report.firstViolations).toEqual([]);
  expect(report.violations).toBe(0);
  // The run exercised what it claims to: every fault kind, and events on every watcher.
  for (const kind of FAULT_KINDS) expect(report.faults[kind], kind).toBeGreaterThanOrEqual(1);
  for (const w of report.perWatcher) expect(w.events, w.name).toBeGreaterThan(0);
  expect(report.writes).toBeGreaterThan(50);
}, 240_000);
