// Command line of the kubelet SIMULATOR (used by `npm start`).
import { appendFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { CriPodRuntime } from './cri-runtime.js';
import { KubeletSimulator, type PodRuntime } from './kubelet.js';
import { SimulatedRuntime } from './sim-runtime.js';

export async function runSimulatorCli(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      node: { type: 'string' },
      'static-pod-url': { type: 'string' },
      listen: { type: 'string', default: '127.0.0.1:10250' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'client-ca': { type: 'string' },
      'step-ms': { type: 'string', default: '1000' },
      'http-check-ms': { type: 'string', default: '20000' },
      // Real runtime: run the pods on the containerd behind this CRI socket.
      'cri-endpoint': { type: 'string' },
      // Simulated runtime: serve a read-only CRI of the simulator's own on this socket path.
      'simulated-cri-socket': { type: 'string' },
      'pod-logs-dir': { type: 'string' },
      'restart-backoff-ms': { type: 'string', default: '10000' },
      'cgroup-parent': { type: 'string' },
      // The kubelet's own log (served by cosid as `logs kubelet`): every line also goes to this file.
      'log-file': { type: 'string' },
      // Serve, but poll the static pod URL only once the parent process says so over its IPC channel (npm start
      // says so when cosid serves it): no "cannot fetch" while cosid starts.
      'poll-when-told': { type: 'boolean', default: false },
    },
    strict: true,
  });
  const need = (name: string, v: string | undefined): string => {
    if (v === undefined) throw new Error(`--${name} is required`);
    return v;
  };
  const logFile = values['log-file'];
  const log = (line: string) => {
    const text = `${JSON.stringify({ ts: new Date().toISOString(), component: 'kubelet-simulator', msg: line })}\n`;
    process.stderr.write(text);
    if (logFile !== undefined) appendFileSync(logFile, text);
  };
  const podLogsDir = values['pod-logs-dir'];
  let runtime: PodRuntime | undefined;
  if (values['cri-endpoint'] !== undefined) {
    runtime = new CriPodRuntime({ endpoint: values['cri-endpoint'], podLogsDir: need('pod-logs-dir', podLogsDir), restartBackoffMs: Number(values['restart-backoff-ms']), log, ...(values['cgroup-parent'] !== undefined ? { cgroupParent: values['cgroup-parent'] } : {}) });
  } else if (values['simulated-cri-socket'] !== undefined) {
    runtime = await SimulatedRuntime.start({ socket: values['simulated-cri-socket'], podLogsDir: need('pod-logs-dir', podLogsDir) });
  }
  const sim = await KubeletSimulator.start({
    nodeName: need('node', values.node),
    staticPodURL: need('static-pod-url', values['static-pod-url']),
    listen: values.listen,
    tls: {
      certPem: await readFile(need('cert', values.cert), 'utf8'),
      keyPem: await readFile(need('key', values.key), 'utf8'),
      clientCaPem: await readFile(need('client-ca', values['client-ca']), 'utf8'),
    },
    stepMs: Number(values['step-ms']),
    httpCheckFrequencyMs: Number(values['http-check-ms']),
    log,
    holdPolling: values['poll-when-told'] === true,
    ...(runtime !== undefined ? { runtime } : {}),
  });
  // The sync timer is unref'd: hold the process open until a signal.
  const keepAlive = setInterval(() => {}, 1 << 30);
  let stopping = false;
  const stop = (why: string) => {
    // One stop, whatever comes after: a terminal's Ctrl-C reaches the whole process group, and a parent may
    // forward the same signal; the pods must be removed before the process ends.
    if (stopping) return;
    stopping = true;
    log(`kubelet-simulator: stopping (${why}): removing the pods`);
    clearInterval(keepAlive);
    void sim.stop().then(
      () => {
        log('kubelet-simulator: stopped');
        process.exit(0);
      },
      (err: unknown) => {
        log(`kubelet-simulator: stopping failed: ${err instanceof Error ? err.message : String(err)}`);
        process.exit(1);
      },
    );
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => stop(sig));
  if (process.send !== undefined) {
    // Started by npm start: it says when to poll, and its end (even a SIGKILL) closes the channel: stop then.
    process.on('message', (m: unknown) => {
      if (m === 'poll') sim.startPolling();
    });
    process.on('disconnect', () => stop('the parent process is gone'));
    process.send({ event: 'listening', url: sim.url });
  }
}
