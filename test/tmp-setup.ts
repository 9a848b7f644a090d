// One temporary folder for the whole test run (vitest globalSetup): the PKIs the tests make (test/harness.ts
// makePki) go under it, and it is removed when the run ends. Test files run in forked workers, which end without
// running exit handlers, so a file that forgets to remove its PKI would otherwise leave it in /tmp for good.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default async function setup(): Promise<() => Promise<void>> {
  const dir = await mkdtemp(join(tmpdir(), 'cosi-test-run-'));
  // Set before the workers start: they inherit it.
  process.env['COSI_TEST_TMP'] = dir;
  return async () => {
    await rm(dir, { recursive: true, force: true });
  };
}
