// `npm start`: the whole loop on an embedded default, loopback only:
//   cosid (PKI generated into .state/ on first run, examples/machine-config.yaml, watched for edits)
//   + the kubelet SIMULATOR from node-sim/kubelet (a real kubelet cannot run here), which polls cosid's
//     manifest server and serves /pods/ over mTLS for cosid's status poller;
//   + a container runtime: a private real containerd when it can run (root, `containerd runc busybox-static umoci`
//     installed), where the simulator runs the pods for real through CRI; otherwise a simulated one.
//     COSI_RUNTIME=real|simulated forces a mode; COSI_CRI_ENDPOINT uses a containerd that is already running.
//
// Start-up order, so that a clean start logs no error: the simulator listens, then cosid serves, then the simulator
// polls cosid's manifest server. Each child runs in a process group of its own: a terminal's Ctrl-C (SIGINT to the
// whole foreground group) reaches this script alone, which passes it on once; the simulator then removes its pods,
// cosid ends open watches with its shutdown status, and last this script stops containerd. The children also stop
// when this script is gone (their IPC channel closes), even after a SIGKILL.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const state = process.env.COSI_STATE_DIR ?? join(root, '.state');
const pki = join(state, 'pki');
const kubeletPki = join(state, 'kubelet-pki');
const podLogsDir = join(state, 'pods');
const kubeletLog = join(state, 'kubelet.log');
const simulatedSocket = join(state, 'simulated-cri.sock');
const listen = process.env.COSID_LISTEN ?? '127.0.0.1:50000';
const manifestListen = process.env.COSID_MANIFEST_LISTEN ?? '127.0.0.1:50080';
const kubeletListen = process.env.KUBELET_SIM_LISTEN ?? '127.0.0.1:10250';
const node = process.env.COSI_NODE ?? hostname();
// Paths as the user types them from here; absolute when the relative form would climb out.
const shown = (p) => {
  const r = relative(process.cwd(), p);
  return r === '' ? '.' : r.startsWith('..') ? p : r;
};
const say = (text) => process.stderr.write(text);

// Signals first: a Ctrl-C while containerd starts must still stop it.
const children = new Set();
let stopSignal;
let containerd;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (stopSignal !== undefined) return;
    stopSignal = sig;
    say(`\nnpm start: ${sig}: stopping${children.size > 0 ? ' the pods and cosid' : ''}${containerd !== undefined ? ', then containerd' : ''}\n`);
    // Each child has a process group of its own: this is the one signal it gets.
    for (const c of children) c.kill(sig);
  });
}

if (!existsSync(join(pki, 'ca.key'))) {
  const { generatePki } = await import('../dist/client/gen-pki.js');
  await generatePki(pki, { endpoint: listen });
  say(`generated a new PKI in ${shown(pki)}\n`);
}
if (!existsSync(join(kubeletPki, 'ca.crt'))) {
  // The cluster side: a CA, the kubelet's serving certificate (name = node), and the client certificate
  // cosid presents to the kubelet (as Talos does: CN apiserver-kubelet-client, O system:masters).
  const { generateCa, issueServerCert, issueClientCert } = await import('../dist/shared/pki.js');
  const ca = await generateCa({ commonName: 'kubernetes' });
  const serving = await issueServerCert(ca, { commonName: node, sans: [node, '127.0.0.1'] });
  const client = await issueClientCert(ca, { commonName: 'apiserver-kubelet-client', organizations: ['system:masters'] });
  await mkdir(kubeletPki, { recursive: true, mode: 0o700 });
  for (const [name, pair] of Object.entries({ ca, kubelet: serving, client })) {
    await writeFile(join(kubeletPki, `${name}.crt`), pair.certPem);
    await writeFile(join(kubeletPki, `${name}.key`), pair.keyPem, { mode: 0o600 });
  }
  say(`generated the kubelet PKI in ${shown(kubeletPki)}\n`);
}

// The container runtime: real when it can be, and say which, and why not.
const { APT_INSTALL, criPrerequisites, startContainerd } = await import('../dist/node-sim/containerd.js');
const wanted = process.env.COSI_RUNTIME ?? 'auto';
if (!['auto', 'real', 'simulated'].includes(wanted)) {
  say(`npm start: unknown COSI_RUNTIME=${wanted}: use real or simulated (or leave it unset)\n`);
  process.exit(2);
}
const pre = criPrerequisites();
let criEndpoint = process.env.COSI_CRI_ENDPOINT;
let mode = 'real';
if (criEndpoint === undefined && (wanted === 'simulated' || (wanted === 'auto' && !pre.ok))) {
  mode = 'simulated';
} else if (criEndpoint === undefined) {
  if (!pre.ok) {
    say(`npm start: COSI_RUNTIME=real, but containerd cannot run here: ${pre.reason}\n`);
    process.exit(1);
  }
  if (stopSignal === undefined) {
    containerd = await startContainerd({ dir: await mkdtemp('/tmp/cosi-ctrd-') });
    criEndpoint = containerd.endpoint;
  }
}
await mkdir(podLogsDir, { recursive: true });
await writeFile(kubeletLog, '', { flag: 'a' });
const config =
  process.env.COSI_MACHINE_CONFIG ?? join(root, 'examples', mode === 'real' ? 'machine-config-containerd.yaml' : 'machine-config.yaml');
const runtimeArgs =
  mode === 'real'
    ? ['--cri-endpoint', criEndpoint, ...(containerd !== undefined ? ['--cgroup-parent', containerd.cgroupParent] : [])]
    : ['--simulated-cri-socket', simulatedSocket];
const cosidCri = mode === 'real' ? criEndpoint : `unix://${simulatedSocket}`;

/** A child in its own process group, with an IPC channel: `said(pred)` resolves with its first message that fits, or undefined once it exits. */
function start(args) {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], detached: true });
  children.add(child);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const said = (pred) =>
    new Promise((resolve) => {
      child.on('message', (m) => {
        if (pred(m)) resolve(m);
      });
      void exited.then(() => resolve(undefined));
    });
  return { child, exited, said };
}

const event = (name) => (m) => m !== null && typeof m === 'object' && m.event === name;
let sim;
let cosid;
if (stopSignal === undefined) {
  // 1. The simulator listens (it polls nothing yet), so cosid's first look at the kubelet finds it.
  sim = start([
    join(root, 'dist', 'node-sim', 'kubelet', 'bin.js'),
    '--node', node,
    '--static-pod-url', `http://${manifestListen}`,
    '--listen', kubeletListen,
    '--cert', join(kubeletPki, 'kubelet.crt'),
    '--key', join(kubeletPki, 'kubelet.key'),
    '--client-ca', join(kubeletPki, 'ca.crt'),
    // Simulated pods are Pending for one step and Running (not yet Ready) for the next: longer than cosid's poll
    // interval below, so `get staticpodstatus -w` shows each phase.
    '--step-ms', '4000',
    '--http-check-ms', '1000',
    '--pod-logs-dir', podLogsDir,
    '--log-file', kubeletLog,
    '--poll-when-told',
    ...runtimeArgs,
  ]);
}
if (sim !== undefined && (await sim.said(event('listening'))) !== undefined && stopSignal === undefined) {
  // 2. cosid serves.
  cosid = start([
    join(root, 'dist', 'server', 'main.js'),
    '--pki', pki,
    '--config', config,
    '--listen', listen,
    '--node', node,
    '--manifest-listen', manifestListen,
    '--kubelet-url', `https://${kubeletListen}/pods/`,
    '--kubelet-ca', join(kubeletPki, 'ca.crt'),
    '--kubelet-cert', join(kubeletPki, 'client.crt'),
    '--kubelet-key', join(kubeletPki, 'client.key'),
    '--kubelet-interval', '2s',
    '--cri-endpoint', cosidCri,
    '--pod-logs-dir', podLogsDir,
    '--kubelet-log', kubeletLog,
    ...process.argv.slice(2),
  ]);
  if ((await cosid.said(event('serving'))) !== undefined && stopSignal === undefined) {
    // 3. The simulator fetches the pods from cosid's manifest server.
    if (sim.child.connected) sim.child.send('poll');
    say(greeting(await endpointFlag(join(pki, 'cosiconfig'))));
  }
}

// From here: when one child ends (a signal, or a failure), the other is stopped too; the last one out stops containerd.
const running = [sim, cosid].filter((c) => c !== undefined);
for (const c of running) {
  void c.exited.then(({ code, signal }) => {
    children.delete(c.child);
    if (process.exitCode === undefined || process.exitCode === 0) process.exitCode = code ?? (signal !== null ? 0 : 1);
    if (stopSignal === undefined) {
      stopSignal = 'SIGTERM';
      for (const other of children) other.kill('SIGTERM');
    }
  });
}
await Promise.all(running.map((c) => c.exited));
if (containerd !== undefined) {
  await containerd.stop().then(
    () => say('npm start: containerd stopped; what it made is removed\n'),
    (err) => {
      say(`npm start: stopping containerd failed: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

/** What runs, and the exact commands to try on this host. */
function greeting(endpoint) {
  const cosiconfig = join(pki, 'cosiconfig');
  const cli = `node ${shown(join(root, 'dist', 'client', 'cli', 'main.js'))} --cosiconfig ${shown(cosiconfig)}${endpoint}`;
  const logCommands = podsOf(config).map((p) => `  ${cli} logs -k ${p.namespace}/${p.name}-${node}:${p.container} -f\n`);
  return (
    `\ncosid serves on ${listen} (node ${node}) with ${shown(config)}; the kubelet simulator on ${kubeletListen}.\n` +
    `${runtimeNote()}\n` +
    `In another terminal, try:\n\n` +
    `  ${cli} get staticpods\n` +
    `  ${cli} get staticpodstatus -w\n` +
    `  ${cli} containers -k\n` +
    (logCommands.length > 0 ? logCommands.join('') : `  ${cli} logs -k <ID from containers -k> -f\n`) +
    `  ${cli} logs kubelet\n\n` +
    `Edit ${shown(config)} (add, change or remove a pod) and watch it apply. Stop with Ctrl-C.\n\n`
  );
}

function runtimeNote() {
  if (mode === 'real') {
    return `REAL runtime: the pods run on containerd${containerd !== undefined ? ` (pid ${containerd.pid})` : ''} at ${criEndpoint}, their logs in ${shown(podLogsDir)}.`;
  }
  const head = `SIMULATED runtime${wanted === 'simulated' ? ' (COSI_RUNTIME=simulated)' : ''}: nothing runs; fake containers and logs in ${shown(podLogsDir)}.`;
  if (wanted === 'simulated' || pre.ok) return head;
  const why = [
    ...(pre.notRoot ? [`not running as root (uid ${process.getuid?.() ?? 'unknown'})`] : []),
    ...(pre.packages.length > 0 ? [`missing Debian packages: ${pre.packages.join(' ')}`] : []),
  ];
  const how = [
    ...(pre.packages.length > 0 ? [`sudo ${APT_INSTALL}`] : []),
    ...(pre.notRoot ? ['run as root: sudo npm start'] : []),
  ];
  return (
    `${head}\n` +
    `The real runtime (a private containerd) cannot run here: ${why.length > 0 ? why.join('; ') : pre.reason}.\n` +
    `To get it: ${how.length > 0 ? how.join(', then ') : APT_INSTALL}. COSI_RUNTIME=real npm start insists on it (and says what is missing).`
  );
}

/** `-e ADDR` when the cosiconfig (made on the first run) names another endpoint than this run's. */
async function endpointFlag(cosiconfig) {
  const { loadCosiConfig, selectContext } = await import('../dist/client/cosiconfig.js');
  const endpoints = await loadCosiConfig(cosiconfig).then((c) => selectContext(c).endpoints, () => []);
  return endpoints.length === 1 && endpoints[0] === listen ? '' : ` -e ${listen}`;
}

/** The static pods of a machine config: namespace, name and first container, for the printed `logs -k` commands. */
function podsOf(file) {
  try {
    const pods = [];
    for (const doc of YAML.parseAllDocuments(readFileSync(file, 'utf8'))) {
      const machine = doc.toJS()?.machine;
      for (const p of Array.isArray(machine?.pods) ? machine.pods : []) {
        const container = p?.spec?.containers?.[0]?.name;
        if (typeof p?.metadata?.name !== 'string' || typeof container !== 'string') continue;
        pods.push({ namespace: typeof p.metadata.namespace === 'string' ? p.metadata.namespace : 'default', name: p.metadata.name, container });
      }
    }
    return pods.slice(0, 3);
  } catch {
    return [];
  }
}
