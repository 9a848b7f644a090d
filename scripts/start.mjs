// `npm start`: the whole loop on an embedded default, loopback only:
//   cosid (PKI generated into .state/ on first run, examples/machine-config.yaml, watched for edits)
//   + the kubelet SIMULATOR from test/kubelet-sim (a real kubelet cannot run here), which polls cosid's
//     manifest server and serves /pods/ over mTLS for cosid's status poller;
//   + a container runtime: a private real containerd when it can run (root, `containerd runc busybox-static umoci`
//     installed), where the simulator runs the pods for real through CRI; otherwise a simulated one.
//     COSI_RUNTIME=real|simulated forces a mode; COSI_CRI_ENDPOINT uses a containerd that is already running.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const state = process.env.COSI_STATE_DIR ?? join(root, '.state');
const pki = join(state, 'pki');
const kubeletPki = join(state, 'kubelet-pki');
const podLogsDir = join(state, 'pods');
const kubeletLog = join(state, 'kubelet.log');
const listen = process.env.COSID_LISTEN ?? '127.0.0.1:50000';
const manifestListen = process.env.COSID_MANIFEST_LISTEN ?? '127.0.0.1:50080';
const kubeletListen = process.env.KUBELET_SIM_LISTEN ?? '127.0.0.1:10250';
const node = process.env.COSI_NODE ?? hostname();
const rel = (p) => relative(process.cwd(), p) || '.';

if (!existsSync(join(pki, 'ca.key'))) {
  const { generatePki } = await import('../dist/client/gen-pki.js');
  await generatePki(pki, { endpoint: listen });
  process.stderr.write(`generated a new PKI in ${rel(pki)}\n`);
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
  process.stderr.write(`generated the kubelet PKI in ${rel(kubeletPki)}\n`);
}

// The container runtime: real when it can be, and say which, and why not.
const { criPrerequisites, startContainerd } = await import('../dist/test/cri/containerd.js');
const wanted = process.env.COSI_RUNTIME ?? 'auto';
const pre = criPrerequisites();
let containerd;
let criEndpoint = process.env.COSI_CRI_ENDPOINT;
let mode = 'real';
if (criEndpoint === undefined && (wanted === 'simulated' || (wanted === 'auto' && !pre.ok))) {
  mode = 'simulated';
} else if (criEndpoint === undefined) {
  if (!pre.ok) {
    process.stderr.write(`npm start: COSI_RUNTIME=real, but containerd cannot run here: ${pre.reason}\n`);
    process.exit(1);
  }
  containerd = await startContainerd({ dir: await mkdtemp('/tmp/cosi-ctrd-') });
  criEndpoint = containerd.endpoint;
}
await mkdir(podLogsDir, { recursive: true });
await writeFile(kubeletLog, '', { flag: 'a' });
const config =
  process.env.COSI_MACHINE_CONFIG ?? join(root, 'examples', mode === 'real' ? 'machine-config-containerd.yaml' : 'machine-config.yaml');
const runtimeNote =
  mode === 'real'
    ? `REAL runtime: the pods run on containerd${containerd !== undefined ? ` (pid ${containerd.pid})` : ''} at ${criEndpoint}, their logs in ${rel(podLogsDir)}`
    : `SIMULATED runtime (${wanted === 'simulated' ? 'COSI_RUNTIME=simulated' : `no real one: ${pre.reason}`}): nothing runs; fake containers and logs in ${rel(podLogsDir)}`;
const runtimeArgs =
  mode === 'real'
    ? ['--cri-endpoint', criEndpoint, ...(containerd !== undefined ? ['--cgroup-parent', containerd.cgroupParent] : [])]
    : ['--simulated-cri-socket', join(state, 'simulated-cri.sock')];
const cosidCri = mode === 'real' ? criEndpoint : `unix://${join(state, 'simulated-cri.sock')}`;

const cosiconfig = rel(join(pki, 'cosiconfig'));
process.stderr.write(
  `\ncosid is starting on ${listen} (node ${node}) with ${rel(config)}, and a kubelet simulator on ${kubeletListen}.\n` +
    `${runtimeNote}.\n` +
    `In another terminal, try:\n\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} get staticpods\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} get staticpodstatus -w\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} containers -k\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} logs -k <ID from containers -k> -f\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} logs kubelet\n\n` +
    `Edit ${rel(config)} (add, change or remove a pod) and watch it apply. Stop with Ctrl-C.\n\n`,
);

const children = [];
let stopping = false;
const run = (args) => {
  const child = spawn(process.execPath, args, { stdio: 'inherit' });
  children.push(child);
  child.on('exit', (code, signal) => {
    // One process ended on its own: stop the other too (once), and report the first failure.
    if (!stopping) {
      stopping = true;
      for (const c of children) if (c !== child) c.kill('SIGTERM');
    }
    if (process.exitCode === undefined || process.exitCode === 0) process.exitCode = code ?? (signal ? 0 : 1);
    // The last one out stops the runtime (the simulator has removed its pods by then).
    if (children.every((c) => c.exitCode !== null || c.signalCode !== null)) void containerd?.stop();
  });
  return child;
};
run([
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
  '--kubelet-interval', '5s',
  '--cri-endpoint', cosidCri,
  '--pod-logs-dir', podLogsDir,
  '--kubelet-log', kubeletLog,
  ...process.argv.slice(2),
]);
run([
  join(root, 'dist', 'test', 'kubelet-sim', 'bin.js'),
  '--node', node,
  '--static-pod-url', `http://${manifestListen}`,
  '--listen', kubeletListen,
  '--cert', join(kubeletPki, 'kubelet.crt'),
  '--key', join(kubeletPki, 'kubelet.key'),
  '--client-ca', join(kubeletPki, 'ca.crt'),
  '--step-ms', '1500',
  '--http-check-ms', '1000',
  '--pod-logs-dir', podLogsDir,
  '--log-file', kubeletLog,
  ...runtimeArgs,
]);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    for (const c of children) c.kill(sig);
  });
}
