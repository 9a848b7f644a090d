// A Cosid.start that fails (here: an address it cannot listen on) leaves nothing of itself running: no timer, no
// server, nothing that keeps its store reachable. Run in a child process with a collectable store: once start has
// failed, the store must be garbage, and the process must end on its own.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { makePki } from './harness.js';

const dist = (file: string) => pathToFileURL(join(process.cwd(), 'dist', file)).href;

const CHILD = `
import { Cosid } from ${JSON.stringify(dist('server/cosid.js'))};
import { MemoryStore } from ${JSON.stringify(dist('server/store/memory.js'))};
const tls = JSON.parse(process.env.COSI_TEST_TLS);
let collected = false;
const registry = new FinalizationRegistry(() => { collected = true; });
async function attempt() {
  const store = new MemoryStore();
  registry.register(store, 'store');
  try {
    await Cosid.start({ listen: '256.0.0.1:1', tls, nodeName: 'n', store, watchLimits: { bookmarkIntervalMs: 50 } });
    console.log('started');
  } catch (err) {
    console.log('failed: ' + err.message);
  }
}
await attempt();
for (let i = 0; i < 50 && !collected; i++) {
  await new Promise((resolve) => setTimeout(resolve, 10));
  globalThis.gc();
}
console.log('store collected: ' + collected);
`;

describe('Cosid.start failing', () => {
  it('leaves nothing running: the store it was given is released and the process exits on its own', async () => {
    const pki = await makePki();
    const tls = JSON.stringify({ caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem });
    const result = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }>((resolve) => {
      // Bounded: a child that does not end on its own is killed, and the test fails on its exit.
      const c = spawn(process.execPath, ['--expose-gc', '--input-type=module', '-e', CHILD], { env: { ...process.env, COSI_TEST_TLS: tls }, timeout: 30_000 });
      let out = '';
      let err = '';
      c.stdout.on('data', (d: Buffer) => (out += d.toString()));
      c.stderr.on('data', (d: Buffer) => (err += d.toString()));
      c.on('close', (code, signal) => resolve({ code, signal, out, err }));
    });
    expect(result.out).toContain('failed: cannot listen on 256.0.0.1:1');
    expect(result.out).toContain('store collected: true');
    expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null });
  });
});
