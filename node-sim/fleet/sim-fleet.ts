// Many simulated nodes in one process (docs/design/fleet.md §6): their PKI and node list in a folder, the churn over
// them, and the operations a test or bench drives them with (down, up, flood, flap, addNode, setRate, stats).
import { readdirSync } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { silentLogger, type Logger } from '../../shared/log.js';
import { generateCa, issueClientCert, issueServerCert, type KeyPairPem } from '../../shared/pki.js';
import { IMPERSONATOR_ROLE } from '../../server/api/access.js';
import { registerK8sTypes } from '../../server/resources/k8s.js';
import { Registry } from '../../server/resources/registry.js';
import { MemoryStore } from '../../server/store/memory.js';
import { TlsMaterial } from '../../server/tls/material.js';
import { Frames } from '../../server/watch/frames.js';
import type { WatchLimits } from '../../server/watch/limits.js';
import { Churn } from './churn.js';
import { SimNode, type SimNodeStats, type SimShared } from './sim-node.js';

export interface SimFleetOptions {
  nodes: number;
  /** StaticPods (and statuses) per node (default 5). */
  pods?: number;
  /** Changes per second over the fleet (default 0). */
  rate?: number;
  /** Where ca.crt, server.crt/key, fleet.crt/key and nodes.yaml go; an existing PKI there is used again. */
  dir: string;
  /** Node i listens on basePort + i (default: free ports). */
  basePort?: number;
  log?: Logger;
  watchLimits?: Partial<WatchLimits>;
  /** The churn's tick (default 50 ms). */
  tickMs?: number;
}

/** The files a fleet (or a test's client) needs: the CA, and the certificate it follows the nodes with. */
export interface SimPki {
  ca: KeyPairPem;
  server: KeyPairPem;
  /** Client certificate with roles os:reader and os:impersonator (the fleet's --pki DIR/fleet.crt). */
  fleet: KeyPairPem;
}

export interface SimFleetStats {
  nodes: SimNodeStats[];
  rate: number;
  /** Changes the churn wrote (steady and floods). */
  changes: number;
  bootstraps: number;
  overruns: number;
}

export interface SimMemory {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  /** Open file descriptors of the process. */
  fds: number;
  /** CPU time since the process started, in microseconds. */
  cpuUser: number;
  cpuSystem: number;
}

export const NODES_FILE = 'nodes.yaml';
/** Nodes started at once: binding is quick, but a thousand at once would hold a thousand handshake setups. */
const START_BATCH = 50;

export class SimFleet {
  private readonly byName = new Map<string, SimNode>();
  readonly churn: Churn;
  private nextIndex: number;
  private listWrite: Promise<void> = Promise.resolve();
  private startedIn = 0;

  private constructor(
    private readonly opts: SimFleetOptions,
    readonly pki: SimPki,
    private readonly shared: SimShared,
    readonly nodes: SimNode[],
  ) {
    for (const n of nodes) this.byName.set(n.name, n);
    this.nextIndex = nodes.length;
    this.churn = new Churn(() => this.nodes, {
      rate: opts.rate ?? 0,
      ...(opts.tickMs !== undefined ? { tickMs: opts.tickMs } : {}),
      onError: (what, err) => shared.log.warn(what, { error: err }),
    });
  }

  static async start(opts: SimFleetOptions): Promise<SimFleet> {
    const began = performance.now();
    const log = opts.log ?? silentLogger;
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    const pki = await loadOrMakePki(opts.dir);
    // Every node registers the same definitions: one encoding cache serves them all.
    const definitions = new Registry(new MemoryStore());
    registerK8sTypes(definitions);
    const shared: SimShared = {
      frames: new Frames(definitions),
      tls: TlsMaterial.fromPem({ caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem }, log),
      log,
      ...(opts.watchLimits !== undefined ? { watchLimits: opts.watchLimits } : {}),
    };
    const nodes: SimNode[] = [];
    try {
      for (let i = 0; i < opts.nodes; i += START_BATCH) {
        const batch = Array.from({ length: Math.min(START_BATCH, opts.nodes - i) }, (_, k) => startNode(opts, shared, i + k));
        nodes.push(...(await Promise.all(batch)));
      }
    } catch (err) {
      await Promise.all(nodes.map((n) => n.close()));
      throw err;
    }
    const fleet = new SimFleet(opts, pki, shared, nodes);
    await fleet.writeNodeList();
    fleet.startedIn = Math.round(performance.now() - began);
    fleet.churn.start();
    log.info('simulated fleet serving', { nodes: nodes.length, pods: opts.pods ?? 5, rate: opts.rate ?? 0, dir: opts.dir, startMs: fleet.startMs });
    return fleet;
  }

  /** How long start() took, in ms. */
  get startMs(): number {
    return this.startedIn;
  }

  get dir(): string {
    return this.opts.dir;
  }

  get nodesFile(): string {
    return join(this.opts.dir, NODES_FILE);
  }

  /** A node by its index (as started) or its name. */
  node(n: number | string): SimNode {
    const node = typeof n === 'number' ? this.nodes[n] : this.byName.get(n);
    if (node === undefined) throw new Error(`no simulated node ${JSON.stringify(n)} (${this.nodes.length} nodes)`);
    return node;
  }

  down(n: number | string): void {
    const node = this.node(n);
    this.churn.unflap(node);
    node.down();
  }

  async up(n: number | string): Promise<void> {
    const node = this.node(n);
    this.churn.unflap(node);
    await node.up();
  }

  flood(n: number | string, perSec: number): void {
    this.churn.flood(this.node(n), perSec);
  }

  flap(n: number | string, periodMs: number): void {
    this.churn.flap(this.node(n), periodMs);
  }

  /** `count` changes on the node now, up or down (a node cut off from the fleet still changes). */
  bump(n: number | string, count = 1): void {
    const node = this.node(n);
    for (let i = 0; i < count; i++) this.churn.bump(node);
  }

  setRate(perSec: number): void {
    this.churn.setRate(perSec);
  }

  /** A new node, serving, appended to nodes.yaml. */
  async addNode(): Promise<{ name: string; address: string }> {
    const node = await startNode(this.opts, this.shared, this.nextIndex++);
    this.nodes.push(node);
    this.byName.set(node.name, node);
    await this.writeNodeList();
    return { name: node.name, address: node.address };
  }

  stats(): SimFleetStats {
    const nodes = this.nodes.map((n) => n.stats());
    return {
      nodes,
      rate: this.churn.rate,
      changes: this.churn.changes,
      bootstraps: nodes.reduce((s, n) => s + n.bootstraps, 0),
      overruns: nodes.reduce((s, n) => s + n.overruns, 0),
    };
  }

  memory(): SimMemory {
    const m = process.memoryUsage();
    const cpu = process.cpuUsage();
    return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, fds: openFds(), cpuUser: cpu.user, cpuSystem: cpu.system };
  }

  async stop(): Promise<void> {
    this.churn.stop();
    await Promise.all(this.nodes.map((n) => n.close()));
  }

  /**
   * nodes.yaml as server/api/node-directory.ts reads it. Replaced whole (written beside it, then renamed): a reader
   * never sees half a list. Writes are serialised, so the last list written is the last one asked for.
   */
  private writeNodeList(): Promise<void> {
    const text = `nodes:\n${this.nodes.map((n) => `  - name: ${n.name}\n    address: ${n.address}\n`).join('')}`;
    const file = this.nodesFile;
    this.listWrite = this.listWrite.then(async () => {
      await writeFile(`${file}.tmp`, text);
      await rename(`${file}.tmp`, file);
    });
    return this.listWrite;
  }
}

function startNode(opts: SimFleetOptions, shared: SimShared, index: number): Promise<SimNode> {
  return SimNode.start({ name: `sim-${index}`, pods: opts.pods ?? 5, shared, ...(opts.basePort !== undefined ? { port: opts.basePort + index } : {}) });
}

/** The PKI in `dir`, made once: a simulator started again over the same folder serves the same certificates. */
async function loadOrMakePki(dir: string): Promise<SimPki> {
  const path = (name: string) => join(dir, name);
  const pair = async (name: string): Promise<KeyPairPem> => ({ certPem: await readFile(path(`${name}.crt`), 'utf8'), keyPem: await readFile(path(`${name}.key`), 'utf8') });
  if (await stat(path('fleet.key')).then(() => true, () => false)) {
    return { ca: await pair('ca'), server: await pair('server'), fleet: await pair('fleet') };
  }
  const ca = await generateCa({ commonName: 'cosi-pods simulated fleet CA' });
  const server = await issueServerCert(ca, { commonName: 'sim-node', sans: ['127.0.0.1'] });
  const fleet = await issueClientCert(ca, { commonName: 'cosi-fleet', organizations: ['os:reader', IMPERSONATOR_ROLE] });
  for (const [name, p] of [['ca', ca], ['server', server], ['fleet', fleet]] as const) {
    await writeFile(path(`${name}.crt`), p.certPem, { mode: 0o644 });
    await writeFile(path(`${name}.key`), p.keyPem, { mode: 0o600 });
  }
  return { ca, server, fleet };
}

function openFds(): number {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return -1;
  }
}
