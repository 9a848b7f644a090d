// cosictl wait as a user runs it: the compiled binary against real cosids, the state driven by writing to their
// stores; the test waits for the lines the command prints, never for time to pass.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Json } from '../shared/wire.js';
import { makePki, podStatus, startServer, STATUSES, TEST_OWNER, type TestPki, type TestServer } from './harness.js';

const CLI = join(process.cwd(), 'dist', 'client', 'cli', 'main.js');
const servers: TestServer[] = [];
const children: ChildProcess[] = [];
afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const s of servers) await s.close();
});

async function server(nodeName: string, pki?: TestPki): Promise<TestServer> {
  const s = await startServer({ nodeName, ...(pki !== undefined ? { pki } : {}) });
  servers.push(s);
  return s;
}

/** A running cosictl: its output so far, a way to wait for a line of it, and its exit. */
class Cosictl {
  stdout = '';
  stderr = '';
  readonly exit: Promise<number | null>;
  private readonly waiters: { check: () => boolean; resolve: () => void }[] = [];
  private readonly child: ChildProcess;

  constructor(srv: TestServer, args: string[], target: string[] = ['-e', srv.endpoint]) {
    this.child = spawn(process.execPath, [CLI, '--cosiconfig', srv.pki.cosiconfig, ...target, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(this.child);
    this.child.stdout?.on('data', (d: Buffer) => {
      this.stdout += d.toString();
      this.settle();
    });
    this.child.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      this.settle();
    });
    // A bound, not a synchronisation: a command that hangs fails the test rather than the run.
    const kill = setTimeout(() => this.child.kill('SIGKILL'), 45_000);
    this.exit = new Promise((resolve) =>
      this.child.on('close', (code) => {
        clearTimeout(kill);
        this.settle();
        resolve(code);
      }),
    );
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  private settle(): void {
    for (const w of [...this.waiters]) {
      if (w.check()) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }

  /** Resolves once stderr (or stdout) holds `text`. */
  until(stream: 'stdout' | 'stderr', text: string): Promise<void> {
    const check = () => this[stream].includes(text);
    if (check()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${JSON.stringify(text)} on ${stream}; stdout ${JSON.stringify(this.stdout)}, stderr ${JSON.stringify(this.stderr)}`)), 30_000);
      this.waiters.push({
        check: () => check() || !this.running,
        resolve: () => {
          clearTimeout(timer);
          if (check()) resolve();
          else reject(new Error(`cosictl exited without ${JSON.stringify(text)} on ${stream}; stdout ${JSON.stringify(this.stdout)}, stderr ${JSON.stringify(this.stderr)}`));
        },
      });
    });
  }

  async result(): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const code = await this.exit;
    return { code, stdout: this.stdout, stderr: this.stderr };
  }
}

const run = (srv: TestServer, args: string[], target?: string[]) => new Cosictl(srv, args, target).result();

const put = async (s: TestServer, id: string, spec: Json): Promise<void> => {
  const exists = (await s.cosid.store.list(STATUSES)).some((r) => r.metadata.id === id);
  if (exists) await s.cosid.store.update({ ...STATUSES, id, spec }, TEST_OWNER);
  else await s.cosid.store.create({ ...STATUSES, id, spec }, TEST_OWNER);
};
const remove = (s: TestServer, id: string): Promise<void> => s.cosid.store.destroy({ ...STATUSES, id }, TEST_OWNER);

describe('cosictl wait for one resource', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await server('node-1');
  });

  it('says what it waits for, then prints "condition met" once the condition holds, and exits 0', async () => {
    await put(srv, 'default/one-node-1', podStatus(false));
    const c = new Cosictl(srv, ['wait', 'staticpodstatus', 'default/one-node-1', '--for', 'condition=Ready', '--timeout', '1m']);
    await c.until('stderr', 'waiting for staticpodstatus/default/one-node-1: condition Ready is False\n');
    expect(c.stdout).toBe('');
    await put(srv, 'default/one-node-1', podStatus(true));
    expect(await c.result()).toEqual({ code: 0, stdout: 'staticpodstatus/default/one-node-1 condition met\n', stderr: 'waiting for staticpodstatus/default/one-node-1: condition Ready is False\n' });
  });

  it('prints nothing but the result when the condition already holds (full type name, case-insensitive condition, --for=)', async () => {
    await put(srv, 'default/ready-node-1', podStatus(true));
    expect(await run(srv, ['wait', 'StaticPodStatuses.Kubernetes.Talos.dev', 'default/ready-node-1', '--for=condition=ready'])).toEqual({ code: 0, stdout: 'staticpodstatus/default/ready-node-1 condition met\n', stderr: '' });
    expect(await run(srv, ['wait', 'podstatus', 'default/ready-node-1', '--for', 'condition=Ready=false', '--timeout', '0'])).toMatchObject({ code: 1, stdout: '', stderr: 'error: timed out waiting for the condition on staticpodstatus/default/ready-node-1\n' });
  });

  it('condition=NAME=VALUE waits for another status; a line on stderr for each change of it, none for other updates', async () => {
    await put(srv, 'default/flip-node-1', podStatus(true));
    const c = new Cosictl(srv, ['wait', 'podstatus', 'default/flip-node-1', '--for', 'condition=Ready=False']);
    await c.until('stderr', 'condition Ready is True\n');
    await put(srv, 'default/flip-node-1', podStatus(true, { message: 'an update that leaves Ready as it is' }));
    await put(srv, 'default/flip-node-1', { conditions: [{ type: 'Ready', status: 'Unknown' }] });
    await c.until('stderr', 'condition Ready is Unknown\n');
    await put(srv, 'default/flip-node-1', podStatus(false));
    const r = await c.result();
    expect(r).toEqual({
      code: 0,
      stdout: 'staticpodstatus/default/flip-node-1 condition met\n',
      stderr: ['waiting for staticpodstatus/default/flip-node-1: condition Ready is True', 'waiting for staticpodstatus/default/flip-node-1: condition Ready is Unknown', ''].join('\n'),
    });
  });

  it("--for jsonpath='{...}'=VALUE compares what get -o jsonpath would print", async () => {
    await put(srv, 'default/phase-node-1', podStatus(false));
    const c = new Cosictl(srv, ['wait', 'podstatus', 'default/phase-node-1', '--for', "jsonpath={.spec.conditions[?(@.type=='Ready')].status}=True"]);
    await c.until('stderr', `waiting for staticpodstatus/default/phase-node-1: {.spec.conditions[?(@.type=='Ready')].status} is "False"\n`);
    await put(srv, 'default/phase-node-1', podStatus(true));
    expect(await c.result()).toMatchObject({ code: 0, stdout: 'staticpodstatus/default/phase-node-1 condition met\n' });
    expect(await run(srv, ['wait', 'podstatus', 'default/phase-node-1', '--for', 'jsonpath={.spec.phase}=Running'])).toMatchObject({ code: 0, stdout: 'staticpodstatus/default/phase-node-1 condition met\n' });
    expect(await run(srv, ['wait', 'podstatus', 'default/phase-node-1', '--for', 'jsonpath={.metadata.id}'])).toMatchObject({ code: 0, stdout: 'staticpodstatus/default/phase-node-1 condition met\n' });
  });

  it('--for delete waits until it is gone, and succeeds at once for what does not exist', async () => {
    await put(srv, 'default/doomed-node-1', podStatus(true));
    const c = new Cosictl(srv, ['wait', 'podstatus', 'default/doomed-node-1', '--for', 'delete']);
    await c.until('stderr', 'waiting for staticpodstatus/default/doomed-node-1 to be deleted\n');
    await remove(srv, 'default/doomed-node-1');
    expect(await c.result()).toEqual({ code: 0, stdout: 'staticpodstatus/default/doomed-node-1 condition met\n', stderr: 'waiting for staticpodstatus/default/doomed-node-1 to be deleted\n' });
    expect(await run(srv, ['wait', 'podstatus', 'default/doomed-node-1', '--for', 'delete'])).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(await run(srv, ['wait', 'staticpods', '--namespace', 'meta', '--for', 'delete'])).toEqual({ code: 0, stdout: '', stderr: '' });
  });

  it('times out with exit code 1, naming what is not met', async () => {
    await put(srv, 'default/never-node-1', podStatus(false));
    // Long enough to list even on a loaded machine: the point is what it names, not when.
    const r = await run(srv, ['wait', 'podstatus', 'default/never-node-1', '--for', 'condition=Ready', '--timeout', '3s']);
    expect(r).toEqual({
      code: 1,
      stdout: '',
      stderr: 'waiting for staticpodstatus/default/never-node-1: condition Ready is False\nerror: timed out waiting for the condition on staticpodstatus/default/never-node-1\n',
    });
  });

  it.each([
    [['wait', 'podstatus', 'default/absent-node-1', '--for', 'condition=Ready'], 'error: staticpodstatus/default/absent-node-1 not found\n'],
    [['wait', 'staticpods', '--namespace', 'meta', '--for', 'condition=Ready'], 'error: no matching resources found\n'],
    [['wait', 'frobs', '--for', 'delete'], /^error: resource "frobs" is not registered/],
  ] as const)('fails with exit code 1: %j', async (args, message) => {
    const r = await run(srv, [...args]);
    expect(r.stdout).toBe('');
    if (typeof message === 'string') expect(r.stderr).toBe(message);
    else expect(r.stderr).toMatch(message);
    expect(r.code).toBe(1);
  });

  it.each([
    [['wait', 'podstatus', 'x'], /^error: wait needs a condition: --for create, --for delete, --for condition=NAME\[=VALUE\]/],
    [['wait', '--for', 'delete'], /^error: wait needs a resource type/],
    [['wait', 'podstatus', 'x', 'y', '--for', 'delete'], /^error: wait takes a type and at most one ID; unexpected "y"/],
    [['wait', 'podstatus', '--for', 'ready'], /^error: unknown --for "ready"/],
    [['wait', 'podstatus', '--for', 'condition='], /^error: --for "condition=": the condition needs a name/],
    [['wait', 'podstatus', '--for', 'jsonpath={.spec.phase'], /^error: --for "jsonpath=\{\.spec\.phase": unclosed "\{"/],
    [['wait', 'podstatus', '--for', 'jsonpath={.spec.phase}Running'], /^error: --for "jsonpath=\{\.spec\.phase\}Running": expected "=VALUE"/],
    [['wait', 'podstatus', '--for', 'delete', '--timeout', '30'], /^error: --timeout "30": use a duration such as 30s/],
    [['wait', 'podstatus', '--for', 'delete', '-o', 'json'], /^error: -o does not apply to wait/],
  ] as const)('is a usage error (exit code 2): %j', async (args, message) => {
    const r = await run(srv, [...args]);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/run 'cosictl wait --help' for usage\n$/);
    expect(r.code).toBe(2);
  });
});

describe('cosictl wait --for create', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await server('node-1');
  });

  it('waits for a named resource that appears after the wait started, then prints "condition met", exit 0', async () => {
    const c = new Cosictl(srv, ['wait', 'podstatus', 'default/new-node-1', '--for', 'create', '--timeout', '1m']);
    await c.until('stderr', 'waiting for staticpodstatus/default/new-node-1 to be created\n');
    expect(c.stdout).toBe('');
    await put(srv, 'default/new-node-1', podStatus(false));
    expect(await c.result()).toEqual({ code: 0, stdout: 'staticpodstatus/default/new-node-1 condition met\n', stderr: 'waiting for staticpodstatus/default/new-node-1 to be created\n' });
    // Already there: met at once, whatever its state.
    expect(await run(srv, ['wait', 'podstatus', 'default/new-node-1', '--for=create'])).toEqual({ code: 0, stdout: 'staticpodstatus/default/new-node-1 condition met\n', stderr: '' });
  });

  it('times out with exit code 1, naming the resource that was not created', async () => {
    const r = await run(srv, ['wait', 'podstatus', 'default/never-node-1', '--for', 'create', '--timeout', '3s']);
    expect(r).toEqual({
      code: 1,
      stdout: '',
      stderr: 'waiting for staticpodstatus/default/never-node-1 to be created\nerror: timed out waiting for the condition on staticpodstatus/default/never-node-1\n',
    });
    expect(await run(srv, ['wait', 'podstatus', 'default/never-node-1', '--for', 'create', '--timeout', '0'])).toEqual({
      code: 1,
      stdout: '',
      stderr: 'error: timed out waiting for the condition on staticpodstatus/default/never-node-1\n',
    });
  });

  it('waits on every node, each told as it has the resource', async () => {
    const pki = await makePki();
    const one = await server('node-1', pki);
    const two = await server('node-2', pki);
    const c = new Cosictl(one, ['wait', 'podstatus', 'default/web', '--for', 'create', '--timeout', '1m'], ['-e', one.endpoint, '-n', `${one.endpoint},${two.endpoint}`]);
    await c.until('stderr', `${two.endpoint}: waiting for staticpodstatus/default/web to be created\n`);
    await put(two, 'default/web', podStatus(false));
    await c.until('stdout', `${two.endpoint}: staticpodstatus/default/web condition met\n`);
    expect(c.running).toBe(true);
    await put(one, 'default/web', podStatus(false));
    expect(await c.result()).toMatchObject({ code: 0, stdout: `${two.endpoint}: staticpodstatus/default/web condition met\n${one.endpoint}: staticpodstatus/default/web condition met\n` });
  });

  it('needs a named resource (usage error), and --help says what the other conditions do with one that does not exist', async () => {
    const r = await run(srv, ['wait', 'podstatus', '--for', 'create']);
    expect(r).toEqual({ code: 2, stdout: '', stderr: "error: --for create waits for one resource: name it, for example: cosictl wait staticpodstatus default/web-node-1 --for create\nrun 'cosictl wait --help' for usage\n" });
    const help = await run(srv, ['wait', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain('A named resource that does not exist once its node has listed: --for create waits for it; --for delete succeeds at once; --for condition= and --for jsonpath= fail at once with "<type>/<id> not found" (exit code 1)');
  });
});

describe('cosictl wait for every resource of a type', () => {
  it('waits for those there are when it starts, each reported once as it meets the condition', async () => {
    const srv = await server('node-1');
    await put(srv, 'default/a-node-1', podStatus(true));
    await put(srv, 'default/b-node-1', podStatus(false));
    await put(srv, 'default/c-node-1', podStatus(false));
    const c = new Cosictl(srv, ['wait', 'podstatus', '--for', 'condition=Ready']);
    await c.until('stderr', 'waiting for staticpodstatus/default/c-node-1: condition Ready is False\n');
    expect(c.stdout).toBe('staticpodstatus/default/a-node-1 condition met\n');
    // One that comes later is not waited for (as kubectl lists once); one already met is not looked at again.
    await put(srv, 'default/late-node-1', podStatus(false));
    await put(srv, 'default/a-node-1', podStatus(false));
    await put(srv, 'default/b-node-1', podStatus(true));
    await c.until('stdout', 'staticpodstatus/default/b-node-1 condition met\n');
    expect(c.running).toBe(true);
    await put(srv, 'default/c-node-1', podStatus(true));
    const r = await c.result();
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(['staticpodstatus/default/a-node-1 condition met', 'staticpodstatus/default/b-node-1 condition met', 'staticpodstatus/default/c-node-1 condition met', ''].join('\n'));
    expect(r.stderr).toBe(['waiting for staticpodstatus/default/b-node-1: condition Ready is False', 'waiting for staticpodstatus/default/c-node-1: condition Ready is False', ''].join('\n'));
  });

  it('with several nodes, waits on every one of them and prefixes each line with its node', async () => {
    // One cluster: the nodes share a CA, as the client config's one context expects.
    const pki = await makePki();
    const one = await server('node-1', pki);
    const two = await server('node-2', pki);
    await put(one, 'default/web-node-1', podStatus(false));
    await put(two, 'default/web-node-2', podStatus(false));
    const nodes = ['-e', one.endpoint, '-n', `${one.endpoint},${two.endpoint}`];
    const c = new Cosictl(one, ['wait', 'podstatus', '--for', 'condition=Ready', '--timeout', '1m'], nodes);
    await c.until('stderr', `${one.endpoint}: waiting for staticpodstatus/default/web-node-1: condition Ready is False\n`);
    await c.until('stderr', `${two.endpoint}: waiting for staticpodstatus/default/web-node-2: condition Ready is False\n`);
    await put(one, 'default/web-node-1', podStatus(true));
    await c.until('stdout', `${one.endpoint}: staticpodstatus/default/web-node-1 condition met\n`);
    expect(c.running).toBe(true);
    await put(two, 'default/web-node-2', podStatus(true));
    const r = await c.result();
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${one.endpoint}: staticpodstatus/default/web-node-1 condition met\n${two.endpoint}: staticpodstatus/default/web-node-2 condition met\n`);
  });

  it('a node named twice is a usage error told at once, not after the timeout', async () => {
    const one = await server('node-1');
    const started = Date.now();
    const r = await run(one, ['wait', 'podstatus', '--for', 'condition=Ready', '--timeout', '1m'], ['-n', `${one.endpoint},${one.endpoint}`]);
    expect(r).toEqual({ code: 2, stdout: '', stderr: `error: -n names ${one.endpoint} twice\nrun 'cosictl wait --help' for usage\n` });
    // The time is the behaviour here: the process must not linger until the 1 minute timeout.
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it('a node that does not answer fails the wait at the timeout, named with why, while the others are reported', async () => {
    const one = await server('node-1');
    await put(one, 'default/web-node-1', podStatus(true));
    const down = '127.0.0.1:1';
    const r = await run(one, ['wait', 'podstatus', '--for', 'condition=Ready', '--timeout', '3s'], ['-e', one.endpoint, '-n', `${one.endpoint},${down}`]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe(`${one.endpoint}: staticpodstatus/default/web-node-1 condition met\n`);
    expect(r.stderr).toContain(`node ${down}: connection lost (`);
    expect(r.stderr).toMatch(new RegExp(`\\nerror: timed out waiting for the condition on node ${down.replace(/\./g, '\\.')} \\(not listed yet: reconnecting: .+\\)\\n$`));
  });
});
