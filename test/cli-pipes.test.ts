// cosictl with its output piped into a reader that stops early, as `cosictl ... | head -1` does: the compiled
// binary against a real cosid, its stdout a real pipe whose read end this test closes after the first chunk. The
// command must end quietly (exit code 0, nothing on stderr), not crash with "write EPIPE ... Unhandled 'error'".
import { spawn } from 'node:child_process';
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');
/** Resources whose -o yaml listing (about 1 MB) is many times a pipe's buffer (64 KiB on Linux). */
const MANY = 300;

let srv: TestServer;
let tmp: string;
let kubeletLog: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cosi-cli-pipes-'));
  kubeletLog = join(tmp, 'kubelet.log');
  await writeFile(kubeletLog, '{"msg":"first"}\n');
  srv = await startServer({ nodeName: 'node-1', runtime: { kubeletLog } });
  const padding = 'x'.repeat(3000);
  for (let i = 0; i < MANY; i++) await srv.cosid.store.create({ ...STATUSES, id: `bulk/pod-${i}-node-1`, spec: podStatus(true, { message: padding }) }, TEST_OWNER);
});
afterAll(async () => {
  await srv?.close();
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
});

interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/**
 * Runs cosictl with stdout into a pipe this test closes once the first chunk has arrived (then `afterClose` runs:
 * it makes the command print more, into the closed pipe). Resolves when cosictl has exited.
 */
function runClosingEarly(
  args: string[],
  afterClose: () => Promise<void> = async () => {},
  opts: { target?: TestServer; onStderr?: { when: string; then: () => Promise<void> } } = {},
): Promise<Ended> {
  const target = opts.target ?? srv;
  const child = spawn(process.execPath, [CLI, '--cosiconfig', target.pki.cosiconfig, '-e', target.endpoint, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let started: Promise<void> | undefined;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    // What makes the first output come, once the command says it is waiting for it.
    if (started === undefined && opts.onStderr !== undefined && stderr.includes(opts.onStderr.when)) started = opts.onStderr.then();
  });
  let closing: Promise<void> = Promise.resolve();
  child.stdout.once('data', () => {
    closing = new Promise<void>((resolve, reject) => {
      child.stdout.once('close', () => afterClose().then(resolve, reject));
    });
    child.stdout.destroy();
  });
  // A bound, not a synchronisation: a command that hangs on a closed pipe fails the test rather than the run.
  const kill = setTimeout(() => child.kill('SIGKILL'), 45_000);
  return new Promise((resolve, reject) =>
    child.on('close', (code, signal) => {
      clearTimeout(kill);
      Promise.all([started ?? Promise.resolve(), closing]).then(() => resolve({ code, signal, stderr }), reject);
    }),
  );
}

function expectQuiet(r: Ended): void {
  expect(r.stderr).toBe('');
  expect(r.signal).toBe(null);
  expect(r.code).toBe(0);
}

describe('cosictl | head', () => {
  it.each([
    ['get -o yaml', ['get', 'podstatus', '-o', 'yaml'], 5],
    ['get (table)', ['get', 'podstatus'], 2],
    ['get -o json --json-array', ['get', 'podstatus', '-o', 'json', '--json-array'], 2],
  ])('%s exits quietly with 0 when the reader stops after the first chunk, every time', async (_name, args, runs) => {
    for (let i = 0; i < runs; i++) expectQuiet(await runClosingEarly(args));
  });

  it('get -w exits quietly on a closed pipe, whether the list or a later change meets it', async () => {
    // The first screen is larger than the pipe: the list meets the closed pipe.
    expectQuiet(await runClosingEarly(['get', 'podstatus', '-w', '-o', 'yaml']));
    // One resource: the first screen fits; the change that follows meets the closed pipe.
    await srv.cosid.store.create({ ...STATUSES, id: 'watched/one-node-1', spec: podStatus(false) }, TEST_OWNER);
    const r = await runClosingEarly(['get', 'podstatus', 'watched/one-node-1', '-w'], async () => {
      await srv.cosid.store.update({ ...STATUSES, id: 'watched/one-node-1', spec: podStatus(true) }, TEST_OWNER);
    });
    expectQuiet(r);
  });

  it('logs -f exits quietly when a line comes after the reader has gone', async () => {
    const r = await runClosingEarly(['logs', 'kubelet', '-f'], async () => {
      await appendFile(kubeletLog, '{"msg":"after the reader left"}\n');
    });
    expectQuiet(r);
  });

  it('wait exits quietly when a resource meets the condition after the reader has gone', async () => {
    // A cosid of its own: two statuses waited for, the first to be met fills the pipe's first chunk, the second
    // comes after the reader has gone.
    const small = await startServer({ nodeName: 'node-2' });
    try {
      await small.cosid.store.create({ ...STATUSES, id: 'default/a-node-2', spec: podStatus(false) }, TEST_OWNER);
      await small.cosid.store.create({ ...STATUSES, id: 'default/b-node-2', spec: podStatus(false) }, TEST_OWNER);
      const r = await runClosingEarly(
        ['wait', 'podstatus', '--for', 'condition=Ready', '--timeout', '1m'],
        async () => {
          await small.cosid.store.update({ ...STATUSES, id: 'default/b-node-2', spec: podStatus(true) }, TEST_OWNER);
        },
        {
          target: small,
          onStderr: {
            when: 'b-node-2: condition Ready is False\n',
            then: async () => {
              await small.cosid.store.update({ ...STATUSES, id: 'default/a-node-2', spec: podStatus(true) }, TEST_OWNER);
            },
          },
        },
      );
      expect(r.stderr).toBe('waiting for staticpodstatus/default/a-node-2: condition Ready is False\nwaiting for staticpodstatus/default/b-node-2: condition Ready is False\n');
      expect(r.signal).toBe(null);
      expect(r.code).toBe(0);
    } finally {
      await small.close();
    }
  });
});
