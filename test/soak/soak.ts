// The soak for the watch guarantees (issue 20): a whole node on loopback, for minutes, under faults chosen by a
// seeded random source, with every watcher's history checked as it arrives.
//
//   real etcd (3 members, mutual TLS)  <-  cosid (a child process, --store etcd)  <-  watchers (client library
//   watchIter, bootstrap and not, each through a TCP proxy that can be cut)
//   real containerd  <-  kubelet simulator (a child process, real pods through CRI)  <->  cosid (manifests, status)
//   a writer: machine config edits (a pod comes and goes) and direct store writes (EtcdStore, same prefix)
//
// Faults, one at a time, from a seeded shuffled bag (every kind once per round, so a short run meets them all):
// cosid SIGTERM and SIGKILL restarts, an etcd member killed and started again, the kubelet simulator stopped
// (SIGSTOP) for a while, a watcher's connection cut, a watcher's connection stalled (its proxy stops reading), a
// watcher's consumer that stops pulling for a while.
// At the end every process is up again and the writer stops: each watcher's view must equal a fresh List.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { freePort } from '../ports.js';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, isCosiError, type CosiClient, type WatchStream } from '../../client/index.js';
import { generatePki } from '../../client/gen-pki.js';
import { startContainerd, BUSYBOX_REF, type ContainerdHandle } from '../../node-sim/containerd.js';
import { K8S_NAMESPACE, STATIC_POD_STATUS_TYPE } from '../../server/resources/k8s.js';
import { EtcdStore } from '../../server/store/etcd.js';
import { generateCa, issueClientCert, issueServerCert } from '../../shared/pki.js';
import { startEtcdCluster, type EtcdCluster } from '../etcd/cluster.js';
import { prng } from '../fuzz/fuzzer.js';
import { StallableProxy } from '../proxy.js';
import { HistoryChecker, type Violation, type ViewEntry } from './checker.js';

export const FAULT_KINDS = ['cosid-sigterm', 'cosid-sigkill', 'etcd-member-kill', 'kubelet-stall', 'client-cut', 'network-stall', 'watcher-stall'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface SoakOptions {
  seed: number;
  /** How long faults and churn go on (set-up and the final check come on top). */
  durationMs: number;
  /** Watchers (default 8): half with bootstrap, most on pod statuses, some on static pods. */
  watchers?: number;
  /** Mean time between two faults (default 3 s). */
  faultEveryMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  progressEveryMs?: number;
  /**
   * Go on past `durationMs` until every fault kind has happened at least once (for the short run in npm test, on a
   * machine too loaded for a full round in time); bounded: at most three times `durationMs` in all.
   */
  everyKind?: boolean;
  /** Appends the children's output (cosid at warn level, the kubelet simulator) to this file (default: dropped). */
  childLog?: string;
  /** Ends the churn early (Ctrl-C): the run still cleans up and reports. */
  signal?: AbortSignal;
}

export interface SoakReport {
  seed: number;
  durationMs: number;
  aborted: boolean;
  faults: Record<FaultKind, number>;
  totalFaults: number;
  events: number;
  resyncs: number;
  watchers: number;
  writes: number;
  writeErrors: number;
  configEdits: number;
  violations: number;
  firstViolations: (Violation & { seed: number })[];
  perWatcher: { name: string; type: string; bootstrap: boolean; events: number; resyncs: number; violations: number }[];
}

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
/** dist/ when this runs compiled, the source tree under vitest: the children always run compiled. */
const DIST = ROOT.endsWith('/dist') ? ROOT : join(ROOT, 'dist');
const NODE = 'soak-node';
const WRITER_OWNER = 'soak.Writer';
const WRITER_IDS = 16;
const STOP_GRACE_MS = 10_000;
const CONVERGE_MS = 90_000;

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The machine config: two pods always, a third (blinker) when `blinker` says so, its label changed by `rev`. */
function machineConfig(blinker: boolean, rev: number): string {
  const pod = (name: string, command: string, labels: Record<string, string> = {}) => [
    `    - apiVersion: v1`,
    `      kind: Pod`,
    `      metadata:`,
    `        name: ${name}`,
    ...(Object.keys(labels).length > 0 ? [`        labels:`, ...Object.entries(labels).map(([k, v]) => `          ${k}: "${v}"`)] : []),
    `      spec:`,
    `        terminationGracePeriodSeconds: 2`,
    `        containers:`,
    `          - name: ${name}`,
    `            image: ${BUSYBOX_REF}`,
    `            command: ["/bin/sh", "-c", ${JSON.stringify(command)}]`,
  ];
  const loop = "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 1; done";
  return [
    'version: v1alpha1',
    'machine:',
    '  type: worker',
    '  pods:',
    ...pod('ticker', loop),
    ...pod('sleeper', "trap 'exit 0' TERM; while true; do sleep 1; done", { rev: String(rev) }),
    ...(blinker ? pod('blinker', loop) : []),
    '',
  ].join('\n');
}

/** A child node process with an IPC channel (it stops itself when the channel closes, even after our SIGKILL). */
class Child {
  readonly exited: Promise<void>;
  private constructor(readonly proc: ChildProcess) {
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
  }

  static spawn(script: string, args: string[], onOutput: (chunk: Buffer) => void): Child {
    // A process group of its own: a terminal's Ctrl-C reaches the soak alone, which stops the children in order.
    const proc = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], detached: true });
    proc.stdout?.on('data', onOutput);
    proc.stderr?.on('data', onOutput);
    return new Child(proc);
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** The first IPC message with `event === name`; rejects when the process exits first or after `ms`. */
  said(name: string, ms: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`no "${name}" within ${ms} ms`)), ms);
      const onMessage = (m: unknown) => {
        if (m !== null && typeof m === 'object' && 'event' in m && m.event === name) finish(undefined, m as Record<string, unknown>);
      };
      const onExit = () => finish(new Error(`exited (${String(this.proc.exitCode ?? this.proc.signalCode)}) before "${name}"`));
      const finish = (err: Error | undefined, m?: Record<string, unknown>) => {
        clearTimeout(timer);
        this.proc.off('message', onMessage);
        this.proc.off('exit', onExit);
        if (err !== undefined) reject(err);
        else resolve(m ?? {});
      };
      this.proc.on('message', onMessage);
      this.proc.once('exit', onExit);
    });
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.running) return;
    this.proc.kill('SIGCONT');
    this.proc.kill(signal);
    const escalate = setTimeout(() => this.proc.kill('SIGKILL'), STOP_GRACE_MS);
    await this.exited;
    clearTimeout(escalate);
  }
}

interface Watcher {
  name: string;
  type: string;
  bootstrap: boolean;
  proxy: StallableProxy;
  client: CosiClient;
  checker: HistoryChecker;
  stream: WatchStream | undefined;
  done: Promise<void>;
  stalledUntil: number;
  ending: boolean;
}

/** A shuffled bag of every fault kind, refilled when empty: random order, every kind once per round. */
function faultBag(rand: () => number): () => FaultKind {
  let bag: FaultKind[] = [];
  return () => {
    if (bag.length === 0) {
      bag = [...FAULT_KINDS];
      for (let i = bag.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        const t = bag[i] as FaultKind;
        bag[i] = bag[j] as FaultKind;
        bag[j] = t;
      }
    }
    const k = bag.pop();
    if (k === undefined) throw new Error('empty fault bag');
    return k;
  };
}

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const say = opts.log ?? (() => undefined);
  const rand = prng(opts.seed);
  const between = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const cleanups: { what: string; run: () => Promise<void> }[] = [];
  const faults = Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>;
  const watchers: Watcher[] = [];
  const stats = { writes: 0, writeErrors: 0, configEdits: 0 };
  const harnessProblems: string[] = [];
  let aborted = false;
  const started = Date.now();

  // Short: containerd's unix socket lives in it.
  const dir = await mkdtemp('/tmp/cosi-soak-');
  cleanups.push({ what: 'the soak directory', run: () => rm(dir, { recursive: true, force: true }) });
  try {
    // PKI: cosid's (clients) and the kubelet's (cosid <-> kubelet simulator).
    const pkiDir = join(dir, 'pki');
    await generatePki(pkiDir, { endpoint: '127.0.0.1:0' });
    const caPem = await readFile(join(pkiDir, 'ca.crt'), 'utf8');
    const admin = { certPem: await readFile(join(pkiDir, 'admin.crt'), 'utf8'), keyPem: await readFile(join(pkiDir, 'admin.key'), 'utf8') };
    const kubeletPki = join(dir, 'kubelet-pki');
    await mkdir(kubeletPki, { mode: 0o700 });
    const kca = await generateCa({ commonName: 'kubernetes' });
    const serving = await issueServerCert(kca, { commonName: NODE, sans: [NODE, '127.0.0.1'] });
    const kclient = await issueClientCert(kca, { commonName: 'apiserver-kubelet-client', organizations: ['system:masters'] });
    for (const [name, pair] of Object.entries({ ca: kca, kubelet: serving, client: kclient })) {
      await writeFile(join(kubeletPki, `${name}.crt`), pair.certPem);
      await writeFile(join(kubeletPki, `${name}.key`), pair.keyPem, { mode: 0o600 });
    }
    const podLogsDir = join(dir, 'pods');
    await mkdir(podLogsDir);
    const configPath = join(dir, 'machine.yaml');
    let blinker = false;
    let configRev = 0;
    await writeFile(configPath, machineConfig(blinker, configRev));

    say('starting etcd (3 members) and containerd');
    const etcdPromise = startEtcdCluster({ size: 3 });
    const ctrdPromise = startContainerd({ dir: join(dir, 'ctrd') });
    const [etcdResult, ctrdResult] = await Promise.allSettled([etcdPromise, ctrdPromise]);
    if (ctrdResult.status === 'fulfilled') cleanups.push({ what: 'containerd', run: () => ctrdResult.value.stop() });
    if (etcdResult.status === 'fulfilled') cleanups.push({ what: 'etcd', run: () => etcdResult.value.close() });
    if (etcdResult.status === 'rejected') throw etcdResult.reason;
    if (ctrdResult.status === 'rejected') throw ctrdResult.reason;
    const etcd: EtcdCluster = etcdResult.value;
    const containerd: ContainerdHandle = ctrdResult.value;
    const prefix = `/soak-${opts.seed}/`;

    const [cosidPort, manifestPort, kubeletPort] = [await freePort(), await freePort(), await freePort()];
    const output: Buffer[] = [];
    const childLog = opts.childLog;
    if (childLog !== undefined) await writeFile(childLog, '');
    const keep = (chunk: Buffer) => {
      // The children's last output, for a report of what went wrong (bounded).
      output.push(chunk);
      if (output.length > 400) output.shift();
      if (childLog !== undefined) appendFileSync(childLog, chunk);
    };

    // The kubelet simulator: real pods on containerd through CRI; polls cosid's manifest server.
    const kubeletArgs = [
      '--node', NODE,
      '--static-pod-url', `http://127.0.0.1:${manifestPort}`,
      '--listen', `127.0.0.1:${kubeletPort}`,
      '--cert', join(kubeletPki, 'kubelet.crt'),
      '--key', join(kubeletPki, 'kubelet.key'),
      '--client-ca', join(kubeletPki, 'ca.crt'),
      '--cri-endpoint', containerd.endpoint,
      '--cgroup-parent', containerd.cgroupParent,
      '--pod-logs-dir', podLogsDir,
      '--restart-backoff-ms', '1000',
      '--http-check-ms', '1000',
    ];
    const kubelet = Child.spawn(join(DIST, 'node-sim', 'kubelet', 'bin.js'), kubeletArgs, keep);
    // Stopped before containerd (cleanups run in reverse): the simulator removes its pods.
    cleanups.push({ what: 'the kubelet simulator', run: () => kubelet.stop('SIGTERM') });
    await kubelet.said('listening', 30_000);

    const cosidArgs = [
      '--pki', pkiDir,
      '--config', configPath,
      '--listen', `127.0.0.1:${cosidPort}`,
      '--node', NODE,
      '--manifest-listen', `127.0.0.1:${manifestPort}`,
      '--kubelet-url', `https://127.0.0.1:${kubeletPort}/pods/`,
      '--kubelet-ca', join(kubeletPki, 'ca.crt'),
      '--kubelet-cert', join(kubeletPki, 'client.crt'),
      '--kubelet-key', join(kubeletPki, 'client.key'),
      '--kubelet-interval', '500ms',
      '--cri-endpoint', containerd.endpoint,
      '--pod-logs-dir', podLogsDir,
      '--store', 'etcd',
      '--etcd-endpoints', etcd.endpoints.join(','),
      '--etcd-ca', etcd.client.caFile,
      '--etcd-cert', etcd.client.certFile,
      '--etcd-key', etcd.client.keyFile,
      '--etcd-prefix', prefix,
      '--log-level', 'warn',
    ];
    let cosid: Child | undefined;
    const startCosid = async (): Promise<void> => {
      // cosid refuses to start while etcd has no quorum or a member is slow: try again, bounded.
      for (let attempt = 1; ; attempt++) {
        const c = Child.spawn(join(DIST, 'server', 'main.js'), cosidArgs, keep);
        cosid = c;
        try {
          await c.said('serving', 60_000);
          return;
        } catch (err) {
          await c.stop('SIGKILL');
          if (attempt >= 5) throw new Error(`cosid did not start (${attempt} attempts): ${message(err)}\n${Buffer.concat(output).toString('utf8').slice(-3000)}`);
          await sleep(500);
        }
      }
    };
    await startCosid();
    cleanups.push({ what: 'cosid', run: async () => cosid?.stop('SIGTERM') });

    // The writer's store: the same etcd and prefix as cosid, another process's writes (as the history test's).
    const store = await EtcdStore.connect({ endpoints: etcd.endpoints, tls: { caPem: etcd.client.caPem, certPem: etcd.client.certPem, keyPem: etcd.client.keyPem }, prefix });
    cleanups.push({ what: 'the writer store', run: () => store.close() });

    // Watchers: each through its own proxy to cosid's port, each event checked as the consumer takes it.
    const count = opts.watchers ?? 8;
    for (let i = 0; i < count; i++) {
      const type = i % 4 === 3 ? 'staticpods' : 'podstatus';
      const bootstrap = i % 2 === 0;
      const proxy = await StallableProxy.start(() => ({ host: '127.0.0.1', port: cosidPort }));
      const client = connect({ endpoint: proxy.endpoint, caPem, certPem: admin.certPem, keyPem: admin.keyPem });
      const name = `w${i}-${type}${bootstrap ? '-bootstrap' : ''}`;
      const w: Watcher = { name, type, bootstrap, proxy, client, checker: new HistoryChecker(name, bootstrap), stream: undefined, done: Promise.resolve(), stalledUntil: 0, ending: false };
      const stream = client.watchIter(type, { bootstrap, aggregated: i % 3 !== 1, reconnect: { initialDelayMs: 50, maxDelayMs: 1000 } });
      w.stream = stream;
      w.done = (async () => {
        try {
          for await (const e of stream) {
            w.checker.observe(e);
            const wait = w.stalledUntil - Date.now();
            // A stalled consumer: it stops pulling; the library and the server hold back (bounded) meanwhile.
            if (wait > 0) await sleep(wait);
          }
          if (!w.ending) w.checker.violations.push({ watcher: name, index: w.checker.events, rule: 'a watch never ends by itself', detail: 'the stream ended', event: '(end)', atMs: Date.now() - started });
        } catch (err) {
          if (!w.ending) w.checker.violations.push({ watcher: name, index: w.checker.events, rule: 'a watch never fails (it reconnects)', detail: message(err), event: '(error)', atMs: Date.now() - started });
        }
      })();
      watchers.push(w);
      cleanups.push({
        what: `watcher ${name}`,
        run: async () => {
          w.ending = true;
          w.stalledUntil = 0;
          proxy.resume();
          await stream.close();
          await w.done;
          client.close();
          await proxy.close();
        },
      });
    }
    // Every bootstrapped watcher streams before the churn starts.
    {
      const deadline = Date.now() + 60_000;
      while (watchers.some((w) => w.bootstrap && w.checker.bootstrapped === 0) && Date.now() < deadline) await sleep(50);
      const late = watchers.filter((w) => w.bootstrap && w.checker.bootstrapped === 0).map((w) => w.name);
      if (late.length > 0) throw new Error(`watchers never bootstrapped: ${late.join(', ')}`);
    }
    say(`running: seed ${opts.seed}, ${count} watchers, ${Math.round(opts.durationMs / 1000)} s of faults and churn`);

    const churnEnd = Date.now() + opts.durationMs;
    const hardEnd = churnEnd + 2 * opts.durationMs;
    const running = () => {
      if (opts.signal?.aborted === true) return false;
      const now = Date.now();
      if (now < churnEnd) return true;
      return opts.everyKind === true && now < hardEnd && FAULT_KINDS.some((k) => faults[k] === 0);
    };
    const background = new Set<Promise<void>>();
    const track = (p: Promise<void>) => {
      const q = p.catch((err: unknown) => void harnessProblems.push(message(err))).finally(() => background.delete(q));
      background.add(q);
    };

    // The writer: direct store writes on ids soak-0..15, and now and then a machine config edit.
    const exists = new Map<string, boolean>();
    const writer = (async () => {
      let nextEdit = Date.now() + between(3000, 8000);
      let step = 0;
      while (running()) {
        step++;
        const id = `soak-${between(0, WRITER_IDS - 1)}`;
        const pointer = { namespace: K8S_NAMESPACE, type: STATIC_POD_STATUS_TYPE, id };
        const spec = { phase: rand() < 0.5 ? 'Pending' : 'Running', step };
        const drop = rand() < 0.2;
        try {
          if (exists.get(id) === true) {
            if (drop) await store.destroy(pointer, WRITER_OWNER);
            else await store.update({ ...pointer, spec, labels: { writer: 'soak' } }, WRITER_OWNER);
            exists.set(id, !drop);
          } else {
            await store.create({ ...pointer, spec, labels: { writer: 'soak' } }, WRITER_OWNER);
            exists.set(id, true);
          }
          stats.writes++;
        } catch (err) {
          stats.writeErrors++;
          // An etcd member or quorum gone: the outcome may be unknown; learn the truth at the next write.
          if (isCosiError(err, 'already-exists')) exists.set(id, true);
          else if (isCosiError(err, 'not-found')) exists.set(id, false);
          else exists.delete(id);
        }
        if (Date.now() >= nextEdit) {
          nextEdit = Date.now() + between(4000, 12000);
          if (rand() < 0.5) blinker = !blinker;
          else configRev++;
          await writeFile(configPath, machineConfig(blinker, configRev));
          stats.configEdits++;
        }
        await sleep(between(20, 120), opts.signal);
      }
    })();

    // Faults: one at a time from the bag; some last a while in the background (an etcd member down, a stall).
    const nextFault = faultBag(rand);
    let etcdFault: Promise<void> = Promise.resolve();
    const faultLoop = (async () => {
      const every = opts.faultEveryMs ?? 3000;
      while (running()) {
        await sleep(between(Math.floor(every / 2), Math.floor((every * 3) / 2)), opts.signal);
        if (!running()) break;
        const kind = nextFault();
        const target = between(0, 1000);
        const holdMs = between(500, 4000);
        switch (kind) {
          case 'cosid-sigterm':
          case 'cosid-sigkill': {
            await cosid?.stop(kind === 'cosid-sigterm' ? 'SIGTERM' : 'SIGKILL');
            await startCosid();
            break;
          }
          case 'etcd-member-kill': {
            // One member down at a time: the cluster keeps its quorum (cosid and the writer fail over).
            await etcdFault.catch(() => undefined);
            const i = target % 3;
            etcdFault = (async () => {
              await etcd.kill(i);
              await sleep(holdMs);
              await etcd.start(i);
            })();
            track(etcdFault);
            break;
          }
          case 'kubelet-stall': {
            kubelet.proc.kill('SIGSTOP');
            track(sleep(holdMs).then(() => void kubelet.proc.kill('SIGCONT')));
            break;
          }
          case 'client-cut': {
            watchers[target % watchers.length]?.proxy.cut();
            break;
          }
          case 'network-stall': {
            // The proxy stops reading from cosid: TCP and HTTP/2 flow control push back on the server.
            const w = watchers[target % watchers.length];
            if (w !== undefined) {
              w.proxy.stall();
              track(sleep(holdMs).then(() => w.proxy.resume()));
            }
            break;
          }
          case 'watcher-stall': {
            const w = watchers[target % watchers.length];
            if (w !== undefined) w.stalledUntil = Date.now() + holdMs * 2;
            break;
          }
        }
        faults[kind]++;
      }
    })();

    const progress = setInterval(() => {
      const events = watchers.reduce((n, w) => n + w.checker.events, 0);
      const violations = watchers.reduce((n, w) => n + w.checker.violations.length, 0);
      const total = Object.values(faults).reduce((a, b) => a + b, 0);
      const kinds = FAULT_KINDS.map((k) => `${k} ${faults[k]}`).join(', ');
      say(`${Math.round((Date.now() - started) / 1000)} s: ${events} events checked, ${stats.writes} writes, ${total} faults (${kinds}), violations ${violations}`);
    }, opts.progressEveryMs ?? 10_000);
    cleanups.push({ what: 'the progress timer', run: async () => clearInterval(progress) });

    await Promise.all([writer, faultLoop]);
    aborted = opts.signal?.aborted === true;
    await Promise.all([...background]);
    clearInterval(progress);

    if (!aborted) {
      // Everything up again, nothing stalled: the views must converge to a fresh List.
      say('churn over: every process up, checking that every view converges to a fresh List');
      kubelet.proc.kill('SIGCONT');
      for (let i = 0; i < 3; i++) if (etcd.members[i]?.running !== true) await etcd.start(i);
      if (cosid?.running !== true) await startCosid();
      for (const w of watchers) {
        w.stalledUntil = 0;
        w.proxy.resume();
      }
      const direct = connect({ endpoint: `127.0.0.1:${cosidPort}`, caPem, certPem: admin.certPem, keyPem: admin.keyPem });
      try {
        const deadline = Date.now() + CONVERGE_MS;
        let pending = [...watchers];
        const lastDiffs = new Map<Watcher, string[]>();
        while (pending.length > 0) {
          const lists = new Map<string, Map<string, ViewEntry>>();
          for (const type of new Set(pending.map((w) => w.type))) {
            const items = await direct.list(type).catch(() => undefined);
            if (items !== undefined) lists.set(type, new Map(items.map((x) => [x.metadata.id, { version: x.metadata.version, spec: x.yamlSpec }])));
          }
          pending = pending.filter((w) => {
            const list = lists.get(w.type);
            if (list === undefined) return true;
            const diffs = w.checker.differences(list);
            lastDiffs.set(w, diffs);
            return diffs.length > 0;
          });
          if (pending.length === 0 || Date.now() > deadline) break;
          await sleep(300);
        }
        for (const w of pending) w.checker.divergence(lastDiffs.get(w) ?? ['no List could be read']);
      } finally {
        direct.close();
      }
      for (const w of watchers) {
        if (w.bootstrap && w.checker.bootstrapped !== 1) w.checker.divergence([`${w.checker.bootstrapped} BOOTSTRAPPED events`]);
      }
    }
  } finally {
    const errors: string[] = [];
    for (const c of cleanups.reverse()) {
      try {
        await c.run();
      } catch (err) {
        errors.push(`${c.what}: ${message(err)}`);
      }
    }
    if (errors.length > 0) say(`cleanup problems: ${errors.join('; ')}`);
  }

  const all = watchers.flatMap((w) => w.checker.violations).sort((a, b) => a.atMs - b.atMs);
  for (const p of harnessProblems) say(`harness: ${p}`);
  return {
    seed: opts.seed,
    durationMs: Date.now() - started,
    aborted,
    faults,
    totalFaults: Object.values(faults).reduce((a, b) => a + b, 0),
    events: watchers.reduce((n, w) => n + w.checker.events, 0),
    resyncs: watchers.reduce((n, w) => n + w.checker.resyncs, 0),
    watchers: watchers.length,
    writes: stats.writes,
    writeErrors: stats.writeErrors,
    configEdits: stats.configEdits,
    violations: all.length,
    firstViolations: all.slice(0, 10).map((v) => ({ seed: opts.seed, ...v })),
    perWatcher: watchers.map((w) => ({ name: w.name, type: w.type, bootstrap: w.bootstrap, events: w.checker.events, resyncs: w.checker.resyncs, violations: w.checker.violations.length })),
  };
}

/** The summary table, as printed and as bench/RESULTS.md shows it. */
export function summaryTable(r: SoakReport): string {
  const rows: [string, string][] = [
    ['seed', String(r.seed)],
    ['duration', `${(r.durationMs / 60_000).toFixed(1)} min${r.aborted ? ' (interrupted)' : ''}`],
    ...FAULT_KINDS.map((k): [string, string] => [`faults: ${k}`, String(r.faults[k])]),
    ['faults: total', String(r.totalFaults)],
    ['watchers', String(r.watchers)],
    ['events checked', String(r.events)],
    ['resync events (library re-list)', String(r.resyncs)],
    ['store writes (writer)', `${r.writes} (+${r.writeErrors} failed during faults)`],
    ['machine config edits', String(r.configEdits)],
    ['violations', String(r.violations)],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return ['| what | count |', '|---|---:|', ...rows.map(([k, v]) => `| ${k.padEnd(w)} | ${v} |`)].join('\n');
}
