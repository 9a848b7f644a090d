// cosictl get -w survives a cosid restart: no duplicate and no missing rows.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, makePki, podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';
import { freePort } from './pipeline-harness.js';

const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');
const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.close();
});

describe('cosictl get staticpodstatus -w across a cosid restart', () => {
  it('prints each change once: nothing again for what did not change, then the new rows', async () => {
    const pki = await makePki();
    const port = await freePort();
    const fill = async (srv: TestServer, ids: string[]): Promise<void> => {
      for (const id of ids) await srv.cosid.store.create({ ...STATUSES, id, spec: podStatus(true) }, TEST_OWNER);
    };
    const first = await startServer({ pki, listen: `127.0.0.1:${port}`, nodeName: 'node-1' });
    await fill(first, ['default/a-node-1', 'default/b-node-1']);
    const child = spawn(process.execPath, [CLI, '--cosiconfig', pki.cosiconfig, '-e', `127.0.0.1:${port}`, 'get', 'staticpodstatus', '-w'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', r));
    await eventually(() => expect(stdout).toContain('b-node-1'));

    await first.close();
    await eventually(() => expect(stderr).toContain('connection lost'));
    const second = await startServer({ pki, listen: `127.0.0.1:${port}`, nodeName: 'node-1' });
    servers.push(second);
    await fill(second, ['default/a-node-1', 'default/b-node-1']);
    await eventually(() => expect(stderr).toContain('listing again'), 20_000);
    await fill(second, ['default/c-node-1']);
    await eventually(() => expect(stdout).toContain('c-node-1'), 20_000);
    child.kill('SIGINT');
    expect(await exited).toBe(0);

    const rows = stdout.trimEnd().split('\n').slice(1).map((l) => l.split(/\s+/).filter((c) => c !== ''));
    expect(rows.map((r) => `${r[1]} ${r[4]} ${r[5]}`)).toEqual(['+ default/a-node-1 1', '+ default/b-node-1 1', '+ default/c-node-1 1']);
  });
});
