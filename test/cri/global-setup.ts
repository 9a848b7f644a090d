// One real containerd for the whole test run (vitest globalSetup), shared by every test file that needs it.
// Where it cannot start, the run fails saying what to install, unless COSI_TEST_CRI=off says to skip those tests.
import { mkdtemp } from 'node:fs/promises';
import type { TestProject } from 'vitest/node';
import { APT_INSTALL, criPrerequisites, startContainerd, type ContainerdHandle } from '../../node-sim/containerd.js';

export interface CriTestEnv {
  endpoint: string;
  images: { pause: string; busybox: string };
  cgroupParent: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    cri: CriTestEnv | null;
  }
}

let handle: ContainerdHandle | undefined;

export async function setup(project: TestProject): Promise<void> {
  if (process.env['COSI_TEST_CRI'] === 'off') {
    process.stderr.write('\nCOSI_TEST_CRI=off: the tests that need a real containerd are SKIPPED\n\n');
    project.provide('cri', null);
    return;
  }
  const pre = criPrerequisites();
  if (!pre.ok) {
    throw new Error(`the container runtime tests cannot run: ${pre.reason}\n(install with: ${APT_INSTALL}; or set COSI_TEST_CRI=off to skip them)`);
  }
  // Short: the socket path must fit in a unix socket address.
  const dir = await mkdtemp('/tmp/cosi-ctrd-');
  handle = await startContainerd({ dir, log: (line) => process.env['COSI_TEST_CRI_LOG'] === '1' && process.stderr.write(`containerd: ${line}\n`) });
  project.provide('cri', { endpoint: handle.endpoint, images: handle.images, cgroupParent: handle.cgroupParent });
}

export async function teardown(): Promise<void> {
  await handle?.stop();
}
