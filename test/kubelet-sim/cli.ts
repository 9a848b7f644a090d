// Command line of the kubelet SIMULATOR (used by `npm start`).
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { KubeletSimulator } from './kubelet.js';

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
    },
    strict: true,
  });
  const need = (name: string, v: string | undefined): string => {
    if (v === undefined) throw new Error(`--${name} is required`);
    return v;
  };
  const log = (line: string) => process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), component: 'kubelet-simulator', msg: line })}\n`);
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
  });
  // The sync timer is unref'd: hold the process open until a signal.
  const keepAlive = setInterval(() => {}, 1 << 30);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      clearInterval(keepAlive);
      void sim.stop().then(() => process.exit(0));
    });
  }
}
