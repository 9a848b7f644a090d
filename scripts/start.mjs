// `npm start`: the whole loop on an embedded default, loopback only:
//   cosid (PKI generated into .state/ on first run, examples/machine-config.yaml, watched for edits)
//   + the kubelet SIMULATOR from test/kubelet-sim (a real kubelet cannot run here), which polls cosid's
//     manifest server and serves /pods/ over mTLS for cosid's status poller.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const state = process.env.COSI_STATE_DIR ?? join(root, '.state');
const pki = join(state, 'pki');
const kubeletPki = join(state, 'kubelet-pki');
const config = process.env.COSI_MACHINE_CONFIG ?? join(root, 'examples', 'machine-config.yaml');
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

const cosiconfig = rel(join(pki, 'cosiconfig'));
process.stderr.write(
  `\ncosid is starting on ${listen} (node ${node}) with ${rel(config)}, and a kubelet simulator on ${kubeletListen}.\n` +
    `In another terminal, try:\n\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} get staticpods\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} get staticpodstatus -w\n\n` +
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
]);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    for (const c of children) c.kill(sig);
  });
}
