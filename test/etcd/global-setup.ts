// One real single-member etcd (mutual TLS, loopback) for the whole test run (vitest globalSetup), shared by every
// test file that needs it. Where it cannot start, the run fails saying what to install, unless COSI_TEST_ETCD=off
// says to skip those tests. COSI_TEST_ETCD_LOG=1 copies etcd's (error-level) log to stderr.
import type { TestProject } from 'vitest/node';
import { ETCD_APT_INSTALL, etcdPrerequisites, startEtcdCluster, type EtcdCluster, type EtcdTls } from './cluster.js';

export interface EtcdTestEnv {
  /** https://127.0.0.1:PORT */
  endpoints: string[];
  /** A client certificate signed by the CA the server trusts, and that CA. */
  tls: EtcdTls;
}

declare module 'vitest' {
  export interface ProvidedContext {
    etcd: EtcdTestEnv | null;
  }
}

let cluster: EtcdCluster | undefined;

export async function setup(project: TestProject): Promise<void> {
  if (process.env['COSI_TEST_ETCD'] === 'off') {
    process.stderr.write('\nCOSI_TEST_ETCD=off: the tests that need a real etcd are SKIPPED\n\n');
    project.provide('etcd', null);
    return;
  }
  const pre = etcdPrerequisites();
  if (!pre.ok) {
    throw new Error(`the etcd tests cannot run: ${pre.reason}\n(install with: ${ETCD_APT_INSTALL}; or set COSI_TEST_ETCD=off to skip them)`);
  }
  cluster = await startEtcdCluster({ size: 1, log: (line) => process.env['COSI_TEST_ETCD_LOG'] === '1' && process.stderr.write(`etcd ${line}\n`) });
  const { caFile, certFile, keyFile, caPem, certPem, keyPem } = cluster.client;
  project.provide('etcd', { endpoints: [...cluster.endpoints], tls: { caFile, certFile, keyFile, caPem, certPem, keyPem } });
}

export async function teardown(): Promise<void> {
  await cluster?.close();
  cluster = undefined;
}
