import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One real containerd and one real etcd for the run (COSI_TEST_CRI=off, COSI_TEST_ETCD=off skip the tests that need them).
    // One temporary folder for the run's PKIs, removed at its end (test/tmp-setup.ts).
    globalSetup: ['test/tmp-setup.ts', 'test/cri/global-setup.ts', 'test/etcd/global-setup.ts'],
    // Real servers and child processes on a loaded 2-core machine: generous, bounded timeouts.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
  },
});
