// The fleet simulator as a process: a CLI (`node dist/node-sim/fleet/main.js --nodes 1000 --dir D`), and under
// fork() an IPC server of the SimFleet operations, with forkSimFleet() its client for tests and benches.
import { fork, type ChildProcess } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createLogger, parseLevel } from '../../shared/log.js';
import { SimFleet, type SimFleetStats, type SimMemory } from './sim-fleet.js';

export { SimFleet } from './sim-fleet.js';
export type { SimFleetOptions, SimFleetStats, SimMemory, SimPki } from './sim-fleet.js';
export { SimNode, AT_ANNOTATION } from './sim-node.js';
export type { SimNodeStats } from './sim-node.js';

const USAGE = `Usage: node dist/node-sim/fleet/main.js --dir DIR [flags]

Serves many simulated nodes (cosid's State API over mTLS, one port each) from one process, with changes.

  --dir DIR          where ca.crt, server.crt/key, fleet.crt/key (roles os:reader, os:impersonator) and
                     nodes.yaml are written (an existing PKI there is used again)
  --nodes N          nodes to serve (default 10)
  --pods N           static pods (and statuses) per node (default 5)
  --rate N           changes per second over all nodes (default 0)
  --base-port P      node i listens on 127.0.0.1:P+i (default: free ports)
  --log-level LEVEL  debug, info, warn or error (default info)
  -h, --help         this help

Under fork() with an IPC channel it answers {type:'call', id, op, args}: down(n), up(n), flood(n, perSec),
flap(n, periodMs), bump(n, count), addNode(), setRate(r), stats(), memory(), stop().
`;

/** The operations the IPC channel offers (n: a node's index or name). */
export interface SimOps {
  down(n: number | string): void;
  up(n: number | string): Promise<void>;
  flood(n: number | string, perSec: number): void;
  flap(n: number | string, periodMs: number): void;
  bump(n: number | string, count?: number): void;
  addNode(): Promise<{ name: string; address: string }>;
  setRate(perSec: number): void;
  stats(): SimFleetStats;
  memory(): SimMemory;
  stop(): Promise<void>;
}

type OpName = keyof SimOps;
const OPS: readonly OpName[] = ['down', 'up', 'flood', 'flap', 'bump', 'addNode', 'setRate', 'stats', 'memory', 'stop'];

type Call = { type: 'call'; id: number; op: string; args?: unknown[] };
type Reply = { type: 'reply'; id: number; ok: true; result: unknown } | { type: 'reply'; id: number; ok: false; error: string };
type Ready = { type: 'ready'; dir: string; nodesFile: string; nodes: number; startMs: number };
type Failed = { type: 'failed'; error: string };

export interface SimFleetProcess {
  readonly child: ChildProcess;
  readonly ready: Ready;
  /** One IPC operation; rejects with the simulator's error message. */
  call<K extends OpName>(op: K, ...args: Parameters<SimOps[K]>): Promise<Awaited<ReturnType<SimOps[K]>>>;
  /** stop() over IPC, then waits for the process to end (SIGKILL after `graceMs`, default 10 s). */
  close(graceMs?: number): Promise<void>;
}

/** Starts the simulator in a child process (the compiled main.js) and waits until it serves. */
export function forkSimFleet(opts: { nodes: number; pods?: number; rate?: number; dir: string; basePort?: number; logLevel?: string; script?: string }): Promise<SimFleetProcess> {
  const args = ['--dir', opts.dir, '--nodes', String(opts.nodes)];
  if (opts.pods !== undefined) args.push('--pods', String(opts.pods));
  if (opts.rate !== undefined) args.push('--rate', String(opts.rate));
  if (opts.basePort !== undefined) args.push('--base-port', String(opts.basePort));
  if (opts.logLevel !== undefined) args.push('--log-level', opts.logLevel);
  const child = fork(opts.script ?? compiledMain(), args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let nextId = 1;
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  const failAll = (why: string) => {
    for (const p of pending.values()) p.reject(new Error(why));
    pending.clear();
  };
  child.on('message', (m: Reply) => {
    if (m?.type !== 'reply') return;
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.ok) p?.resolve(m.result);
    else p?.reject(new Error(m.error));
  });
  child.on('exit', (code, signal) => failAll(`the fleet simulator ended (${signal ?? `exit code ${code}`})`));
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null, signal: string | null) => reject(new Error(`the fleet simulator ended before serving (${signal ?? `exit code ${code}`})`));
    child.once('exit', onExit);
    const onMessage = (m: Ready | Failed) => {
      if (m?.type === 'failed') {
        child.off('message', onMessage);
        reject(new Error(`the fleet simulator did not start: ${m.error}`));
      }
      if (m?.type !== 'ready') return;
      child.off('message', onMessage);
      child.off('exit', onExit);
      const call = (op: string, ...a: unknown[]) =>
        new Promise<unknown>((res, rej) => {
          const id = nextId++;
          pending.set(id, { resolve: res, reject: rej });
          child.send({ type: 'call', id, op, args: a } satisfies Call, (err) => {
            if (err === null) return;
            pending.delete(id);
            rej(err);
          });
        });
      resolve({
        child,
        ready: m,
        call: call as SimFleetProcess['call'],
        async close(graceMs = 10_000) {
          if (child.exitCode !== null || child.signalCode !== null) return;
          const ended = new Promise<void>((res) => child.once('exit', () => res()));
          const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
          await call('stop').catch(() => undefined);
          await ended;
          clearTimeout(kill);
        },
      });
    };
    child.on('message', onMessage);
  });
}

/** dist/node-sim/fleet/main.js, from this module whether it runs compiled or as TypeScript source (tests). */
function compiledMain(): string {
  const here = fileURLToPath(import.meta.url);
  return here.endsWith('.js') ? here : join(here, '..', '..', '..', 'dist', 'node-sim', 'fleet', 'main.js');
}

/** Answers IPC calls with the fleet's operations until stop() or until the parent goes away. */
function serveIpc(fleet: SimFleet, exit: () => Promise<void>): void {
  const ops: SimOps = {
    down: (n) => fleet.down(n),
    up: (n) => fleet.up(n),
    flood: (n, perSec) => fleet.flood(n, perSec),
    flap: (n, periodMs) => fleet.flap(n, periodMs),
    bump: (n, count) => fleet.bump(n, count),
    addNode: () => fleet.addNode(),
    setRate: (r) => fleet.setRate(r),
    stats: () => fleet.stats(),
    memory: () => fleet.memory(),
    // Answered first, then the process ends.
    stop: async () => void setImmediate(() => void exit()),
  };
  process.on('message', (m: Call) => {
    if (m?.type !== 'call') return;
    const reply = (r: Reply) => process.send?.(r);
    void (async () => {
      try {
        if (!OPS.includes(m.op as OpName)) throw new Error(`unknown operation ${JSON.stringify(m.op)} (known: ${OPS.join(', ')})`);
        const fn = ops[m.op as OpName] as (...a: unknown[]) => unknown;
        reply({ type: 'reply', id: m.id, ok: true, result: (await fn(...(m.args ?? []))) ?? null });
      } catch (err) {
        reply({ type: 'reply', id: m.id, ok: false, error: err instanceof Error ? err.message : String(err) });
      }
    })();
  });
  process.on('disconnect', () => void exit());
}

export async function runSimFleetCli(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      dir: { type: 'string' },
      nodes: { type: 'string', default: '10' },
      pods: { type: 'string', default: '5' },
      rate: { type: 'string', default: '0' },
      'base-port': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const count = (flag: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < min) throw new Error(`--${flag} must be a number >= ${min}, not ${JSON.stringify(v)}`);
    return n;
  };
  if (values.dir === undefined) throw new Error('--dir is required');
  const level = parseLevel(values['log-level']);
  if (level === undefined) throw new Error(`--log-level must be debug, info, warn or error, not ${JSON.stringify(values['log-level'])}`);
  const log = createLogger({ level, fields: { component: 'fleet-sim' } });
  const fleet = await SimFleet.start({
    dir: values.dir,
    nodes: Math.floor(count('nodes', values.nodes, 1)),
    pods: Math.floor(count('pods', values.pods, 0)),
    rate: count('rate', values.rate, 0),
    ...(values['base-port'] !== undefined ? { basePort: Math.floor(count('base-port', values['base-port'], 1)) } : {}),
    log,
  });
  let stopping: Promise<void> | undefined;
  const exit = () =>
    (stopping ??= fleet.stop().then(() => {
      log.info('simulated fleet stopped');
      process.exit(0);
    }));
  process.once('SIGINT', () => void exit());
  process.once('SIGTERM', () => void exit());
  if (process.send !== undefined) {
    serveIpc(fleet, exit);
    process.send({ type: 'ready', dir: fleet.dir, nodesFile: fleet.nodesFile, nodes: fleet.nodes.length, startMs: fleet.startMs } satisfies Ready);
  }
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  runSimFleetCli(process.argv.slice(2)).catch((err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`fleet-sim: ${message}\n`);
    process.send?.({ type: 'failed', error: message } satisfies Failed);
    process.exit(1);
  });
}
