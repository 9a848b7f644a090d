// The client library's examples (examples/*.ts, included word for word in docs/client-library.md) as a user runs
// them: compiled, as child processes, with a client config file, against a real cosid with its pipeline (the kubelet
// simulator; for containers and logs, the run's real containerd). The test waits for the lines they print.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import YAML from 'yaml';
import type { Json } from '../shared/wire.js';
import { eventually, pod } from './harness.js';
import { machineConfig, NODE, startNode, type TestNode } from './pipeline-harness.js';

const cri = inject('cri');
const describeCri = cri === null ? describe.skip : describe;
const children: ChildProcess[] = [];
const temps: string[] = [];
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

/** A copy of the node's client config that points at its real port (the generated one says 127.0.0.1:0). */
async function cosiconfigFor(n: TestNode): Promise<string> {
  const config = YAML.parse(await readFile(n.pki.cosiconfig, 'utf8')) as { contexts: Record<string, { endpoints: string[] }> };
  for (const ctx of Object.values(config.contexts)) ctx.endpoints = [`127.0.0.1:${n.node.cosid.port}`];
  const dir = await mkdtemp(join(tmpdir(), 'cosi-example-'));
  temps.push(dir);
  const path = join(dir, 'cosiconfig');
  await writeFile(path, YAML.stringify(config));
  return path;
}

/** A compiled example running: its output so far, and its exit. */
class Example {
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  private readonly child: ChildProcess;

  constructor(name: string, args: string[]) {
    this.child = spawn(process.execPath, [join(process.cwd(), 'dist', 'examples', `${name}.js`), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(this.child);
    this.child.stdout?.on('data', (d: Buffer) => (this.stdout += d.toString('utf8')));
    this.child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString('utf8')));
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  /** Waits for a line of stdout matching `pattern`. */
  async line(pattern: RegExp, ms = 30_000): Promise<string> {
    return eventually(() => {
      const found = this.stdout.split('\n').find((l) => pattern.test(l));
      if (found === undefined) throw new Error(`no line ${pattern} yet; stdout: ${this.stdout}\nstderr: ${this.stderr}`);
      return found;
    }, ms);
  }

  interrupt(): void {
    this.child.kill('SIGINT');
  }
}

describe('the client library examples, on a cosid with the kubelet simulator', () => {
  let n: TestNode;
  let cosiconfig: string;
  const web = pod('web');
  const ticker = pod('ticker', 'busybox');

  beforeAll(async () => {
    n = await startNode(machineConfig([web, ticker]));
    cosiconfig = await cosiconfigFor(n);
    // Both statuses exist, so the first list and the informer's cache hold them.
    await eventually(async () => expect((await n.client.list('staticpodstatus')).length).toBe(2), 30_000);
  });
  afterAll(async () => n?.close());

  it('read-and-watch: lists, gets, then prints every change until Ctrl-C, and ends cleanly', async () => {
    const example = new Example('read-and-watch', ['--cosiconfig', cosiconfig]);
    await example.line(/^static pods: default-ticker, default-web$/);
    await example.line(/^default-ticker is at version 1$/);
    await example.line(new RegExp(`^created default/web-${NODE}$`));
    await example.line(/^bootstrapped $/);
    // A change made while it watches: a third pod, whose status the kubelet then reports.
    await n.writeConfig(machineConfig([web, ticker, pod('extra')]));
    await example.line(new RegExp(`^created default/extra-${NODE}$`));
    example.interrupt();
    expect(await example.exited).toBe(0);
    expect(example.stdout.trimEnd().split('\n').at(-1)).toBe('watch ended');
    expect(example.stderr).toBe('');
    await n.writeConfig(machineConfig([web, ticker]));
    await eventually(async () => expect((await n.client.list('staticpodstatus')).length).toBe(2), 30_000);
  });

  it('informer: hears each status, prints the synced cache, stops on Ctrl-C', async () => {
    const endpoint = `127.0.0.1:${n.node.cosid.port}`;
    const statuses = (await n.client.list('staticpodstatus')).map((r) => r.metadata.id);
    expect(statuses).toContain(`default/ticker-${NODE}`);
    const example = new Example('informer', ['--cosiconfig', cosiconfig]);
    await example.line(new RegExp(`^${endpoint}: added default/ticker-${NODE}$`));
    expect(await example.line(/^synced: /)).toBe(`synced: ${statuses.map((id) => `${endpoint}/${id}`).join(', ')}`);
    example.interrupt();
    expect(await example.exited).toBe(0);
    expect(example.stdout.trimEnd().split('\n').at(-1)).toBe('stopped');
    expect(example.stderr).toBe('');
  });
});

describeCri('the containers-and-logs example, on the run\'s real containerd', () => {
  let n: TestNode;

  beforeAll(async () => {
    if (cri === null) return;
    const ticker: Json = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'ticker' },
      spec: {
        terminationGracePeriodSeconds: 2,
        containers: [{ name: 'ticker', image: cri.images.busybox, command: ['/bin/sh', '-c', "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done"] }],
      },
    };
    n = await startNode(machineConfig([ticker]), { runtime: { cri } });
    // Running, with a few lines written.
    await eventually(async () => {
      const c = (await n.client.containers()).find((x) => x.podId === `default/ticker-${NODE}` && x.id !== x.podId && x.status === 'CONTAINER_RUNNING');
      if (c === undefined) throw new Error('ticker is not running yet');
      let text = '';
      for await (const chunk of n.client.logs(c.id)) text += chunk.toString('utf8');
      expect(text).toContain('tick 3');
    }, 30_000);
  });
  afterAll(async () => n?.close());

  it('prints the sandbox and its container, then the last lines of its log', async () => {
    const example = new Example('containers-and-logs', ['--cosiconfig', await cosiconfigFor(n), '--tail', '2']);
    expect(await example.exited).toBe(0);
    const lines = example.stdout.trimEnd().split('\n');
    expect(lines.filter((l) => new RegExp(`^default/ticker-${NODE} SANDBOX_READY pid=[1-9]\\d* restarts=0$`).test(l))).toHaveLength(1);
    const header = lines.findIndex((l) => new RegExp(`^--- default/ticker-${NODE}:ticker:[0-9a-f]{12}$`).test(l));
    expect(header).toBeGreaterThan(0);
    const logLines = lines.slice(header + 1);
    expect(logLines).toHaveLength(2);
    for (const l of logLines) expect(l).toMatch(/^\S+Z stdout F tick \d+$/);
    expect(example.stderr).toBe('');
  });
});
