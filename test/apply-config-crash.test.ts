// Crash safety of the saved config: the compiled cosid as a child process takes NO_REBOOT applies of two configs in
// turn and is killed with SIGKILL at a random point (a seeded random delay, so a failure can be replayed), again and
// again. After each kill the file parses and is exactly one of the two texts, never a torn mix; the restarted cosid
// serves exactly what the file holds, and leaves no temporary file of the interrupted write behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { connect } from '../client/index.js';
import { parseMachineConfig } from '../server/config/machine-config.js';
import { ApplyMode } from '../shared/wire.js';
import { applyClient } from './apply-config-helpers.js';
import { eventually, makePki, pod, type TestPki } from './harness.js';
import { freePort, machineConfig } from './pipeline-harness.js';
import { prng } from './fuzz/fuzzer.js';

const COSID = join(process.cwd(), 'dist', 'server', 'main.js');
const KILLS = 20;
const SEED = 19;
/**
 * The kill lands this long (uniformly) after the applies start. A NO_REBOOT apply of these configs takes some 10 to
 * 60 ms here (validation, the StaticPods, fsync): kills land before, during and after the rename.
 */
const MAX_KILL_DELAY_MS = 150;

// Two configs of different sizes and content, so that any mix of them is neither.
const X = machineConfig(Array.from({ length: 40 }, (_, i) => pod(`x${i}`, `registry.example/x:${i}`)));
const Y = machineConfig(Array.from({ length: 25 }, (_, i) => pod(`y${i}`, `registry.example/why-not-a-longer-image-name:${i}`)));

let pki: TestPki;
let dir: string;
beforeAll(async () => {
  pki = await makePki();
  dir = await mkdtemp(join(tmpdir(), 'cosi-crash-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await rm(pki.dir, { recursive: true, force: true });
});

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

it(`leaves the old or the new config, never a torn one, across ${KILLS} SIGKILLs during applies; the restarted cosid serves the file`, async () => {
  const configPath = join(dir, 'machine.yaml');
  await writeFile(configPath, X);
  const next = prng(SEED);
  const port = await freePort();
  const endpoint = `127.0.0.1:${port}`;
  let children: ChildProcess[] = [];
  let acked = 0;
  /** How the kills left the file: as it was at the start of the round, or with the other config. */
  const outcomes = { kept: 0, replaced: 0 };
  try {
    for (let kill = 0; kill < KILLS; kill++) {
      const child = spawn(process.execPath, [COSID, '--pki', pki.dir, '--config', configPath, '--listen', endpoint, '--node', 'crash-node'], { stdio: ['ignore', 'ignore', 'pipe'] });
      children.push(child);
      let stderr = '';
      // Connecting before cosid listens would cost a reconnect backoff: its "serving" log line says when to.
      const serving = new Promise<void>((resolve, reject) => {
        child.stderr?.on('data', (b: Buffer) => {
          stderr += b.toString();
          if (stderr.includes('"msg":"cosid serving"')) resolve();
        });
        child.once('exit', () => reject(new Error(`cosid exited (kill ${kill}):\n${stderr}`)));
      });
      await serving;
      const onDisk = await readFile(configPath, 'utf8');
      const client = connect({ endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
      try {
        // The restarted cosid serves exactly what the file holds, and cleaned up after the interrupted write.
        const served = await eventually(() => client.get('mc', 'v1alpha1'), 15_000);
        expect(served.spec).toBe(onDisk);
        expect((await client.get('mc', 'persistent')).spec).toBe(onDisk);
        expect(await readdir(dir)).toEqual(['machine.yaml']);
      } finally {
        client.close();
      }
      const applies = applyClient(endpoint, pki, pki.admin);
      // The connection is up before the clock of the kill starts.
      expect((await applies.apply({ text: onDisk, mode: ApplyMode.NO_REBOOT, dryRun: true })).ok).toBe(true);

      // Applies of the other config, then the first again, ... until the kill.
      const delay = Math.floor(next() * MAX_KILL_DELAY_MS);
      let killed = false;
      const applying = (async () => {
        for (let i = 0; !killed && i < 1000; i++) {
          const answer = await applies.apply({ text: (onDisk === X) === (i % 2 === 0) ? Y : X, mode: ApplyMode.NO_REBOOT });
          if (answer.ok) acked++;
        }
      })();
      await new Promise((r) => setTimeout(r, delay));
      killed = true;
      child.kill('SIGKILL');
      await exited(child);
      await applying;
      applies.close();
      children = children.filter((c) => c !== child);

      const text = await readFile(configPath, 'utf8');
      expect(text === X || text === Y, `kill ${kill} after ${delay} ms: the file is neither config (${text.length} bytes)`).toBe(true);
      expect(parseMachineConfig(text, configPath).pods.length).toBe(text === X ? 40 : 25);
      outcomes[text === onDisk ? 'kept' : 'replaced']++;
    }
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(children.map(exited));
  }
  // The kills landed on both sides of the writes: some rounds ended with the file as it was, others with the new one.
  expect(outcomes.kept, JSON.stringify({ ...outcomes, acked })).toBeGreaterThan(0);
  expect(outcomes.replaced, JSON.stringify({ ...outcomes, acked })).toBeGreaterThan(0);
  // Twenty-one cosid starts: about 40 s on a quiet machine, and seen past 120 s on a 2-core one at load 10.
}, 300_000);
