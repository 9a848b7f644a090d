// Scenario 6: the pipeline of one node (the compiled cosid with its machine config file). A change of the config
// reaches a watching client as a StaticPod event, two ways in the same run: a file edit (through the file watcher)
// and an ApplyConfiguration NO_REBOOT (issue 19: checked, applied, the file written atomically and fsynced). Then
// cosictl as a whole process, in turn with a bare node start (`node -e ''`) so that each figure has its peer of the
// same moment: get staticpods, --help, --version, and the first line of get staticpods -w (issue 22).
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { connect } from '../dist/client/index.js';
import { serializeCosiConfig } from '../dist/client/cosiconfig.js';
import { machineWire, ApplyMode } from '../dist/shared/wire.js';
import { freePort, sleep, summarize, timeProcess } from './common.mjs';

/** How many applies the apply -> event row is measured over (the same in --quick: the issue asks for 200). */
const APPLIES = 200;

/**
 * Milliseconds from starting `node ARGS` to its first bytes on stdout; the process is then ended (a watch does not
 * end by itself), and the figure is taken once it has exited.
 */
function firstOutputMs(args) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    let ms;
    child.stdout.once('data', () => {
      ms = performance.now() - t0;
      child.kill('SIGTERM');
    });
    child.on('error', reject);
    child.on('exit', () => (ms === undefined ? reject(new Error(`node ${args.join(' ')} printed nothing`)) : resolve(ms)));
  });
}

/**
 * One NO_REBOOT ApplyConfiguration, as a minimal grpc-js call (client.applyConfiguration is the client library's
 * job, issue 19's other half). Resolves with the call's duration in ms.
 */
function applyOnce(client, text) {
  const t0 = performance.now();
  const body = { data: Buffer.from(text), mode: ApplyMode.NO_REBOOT, dryRun: false, tryModeTimeout: null };
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      '/machine.MachineService/ApplyConfiguration',
      (v) => Buffer.from(machineWire.applyConfigurationRequest.encode(v)),
      (b) => machineWire.applyConfigurationResponse.decode(b),
      body,
      (err) => (err ? reject(err) : resolve(performance.now() - t0)),
    );
  });
}

export async function pipelineScenario({ pki, pem, cfg, progress, children }) {
  const nodeDir = await mkdtemp(join(tmpdir(), 'cosi-bench-node-'));
  try {
    const configPath = join(nodeDir, 'machine.yaml');
    const podConfig = (tag) => `version: v1alpha1\nmachine:\n  type: worker\n  pods:\n    - apiVersion: v1\n      kind: Pod\n      metadata: {name: nginx}\n      spec: {containers: [{name: nginx, image: "nginx:${tag}"}]}\n`;
    await writeFile(configPath, podConfig(0));
    const nodePort = await freePort();
    const nodeProc = spawn(process.execPath, ['dist/server/main.js', '--pki', pki.dir, '--config', configPath, '--listen', `127.0.0.1:${nodePort}`, '--log-level', 'warn'], { stdio: 'inherit' });
    children.push(nodeProc);
    const nodeClient = connect({ endpoint: `127.0.0.1:${nodePort}`, caPem: pem.caPem, certPem: pem.clientCertPem, keyPem: pem.clientKeyPem });
    for (let i = 0; ; i++) {
      try {
        await nodeClient.get('staticpods', 'default-nginx');
        break;
      } catch (err) {
        if (i > 100) throw err;
        await sleep(100);
      }
    }
    let waiting;
    const seen = (tag) =>
      new Promise((done) => {
        waiting = { tag, t0: performance.now(), done };
      });
    const sub = nodeClient.watch('staticpods', { bootstrap: true }).subscribe((e) => {
      if (e.type === 'updated' && waiting && JSON.stringify(e.resource?.spec).includes(`"nginx:${waiting.tag}"`)) {
        const w = waiting;
        waiting = undefined;
        w.done(performance.now() - w.t0);
      }
    });
    await sleep(300);

    // A file edit: the watcher's debounce and the reload; a pause after each so edits never coalesce.
    const configToEvent = [];
    let tag = 1;
    for (let i = 1; i <= cfg.pipelineRuns; i++, tag++) {
      const event = seen(tag);
      writeFile(configPath, podConfig(tag));
      configToEvent.push(await event);
      await sleep(150);
    }

    // ApplyConfiguration: the next one is sent once the event and the answer are both in.
    const raw = new grpc.Client(`127.0.0.1:${nodePort}`, grpc.credentials.createSsl(Buffer.from(pem.caPem), Buffer.from(pem.clientKeyPem), Buffer.from(pem.clientCertPem)));
    await applyOnce(raw, podConfig(tag - 1)); // connects (and changes nothing)
    const applyToEvent = [];
    const applyCall = [];
    for (let i = 0; i < APPLIES; i++, tag++) {
      const event = seen(tag);
      const [ms, callMs] = await Promise.all([event, applyOnce(raw, podConfig(tag))]);
      applyToEvent.push(ms);
      applyCall.push(callMs);
    }
    raw.close();
    sub.unsubscribe();
    nodeClient.close();

    const cosiconfig = join(nodeDir, 'cosiconfig');
    writeFileSync(cosiconfig, serializeCosiConfig({ currentContext: 'bench', contexts: new Map([['bench', { name: 'bench', endpoints: [`127.0.0.1:${nodePort}`], nodes: [], caPem: pem.caPem, certPem: pem.clientCertPem, keyPem: pem.clientKeyPem }]]) }));
    const cosictl = ['dist/client/cli/main.js', '--cosiconfig', cosiconfig];
    const cli = [];
    const bare = [];
    const help = [];
    const version = [];
    const watchFirst = [];
    const getFirst = [];
    for (let i = 0; i < cfg.cliRuns; i++) {
      cli.push(timeProcess([...cosictl, 'get', 'staticpods']));
      bare.push(timeProcess(['-e', '']));
      help.push(timeProcess(['dist/client/cli/main.js', '--help']));
      version.push(timeProcess(['dist/client/cli/main.js', '--version']));
      watchFirst.push(await firstOutputMs([...cosictl, 'get', 'staticpods', '-w']));
      getFirst.push(await firstOutputMs([...cosictl, 'get', 'staticpods']));
    }
    nodeProc.kill('SIGTERM');
    const result = {
      configToEvent: summarize(configToEvent),
      applyToEvent: summarize(applyToEvent),
      applyCall: summarize(applyCall),
      cosictlMedianMs: summarize(cli).p50,
      nodeStartupMedianMs: summarize(bare).p50,
      cosictlHelpMedianMs: summarize(help).p50,
      cosictlVersionMedianMs: summarize(version).p50,
      cosictlWatchFirstLineMedianMs: summarize(watchFirst).p50,
      cosictlGetFirstLineMedianMs: summarize(getFirst).p50,
      // The median of each round's cosictl / bare node: steadier than the ratio of the medians when the load moves.
      cosictlPerRoundRatio: summarize(cli.map((ms, i) => ms / bare[i])).p50,
    };
    const r = (s) => `p50 ${s.p50.toFixed(1)} ms p99 ${s.p99.toFixed(1)} ms`;
    progress(`  file edit -> event (${configToEvent.length}) ${r(result.configToEvent)}; apply-config -> event (${APPLIES}) ${r(result.applyToEvent)}, the call ${r(result.applyCall)}`);
    const ms = (v) => (cli.length ? v.toFixed(0) : '-');
    progress(`  cosictl get staticpods median ${ms(result.cosictlMedianMs)} ms (node itself ${ms(result.nodeStartupMedianMs)} ms; ratio per round ${cli.length ? result.cosictlPerRoundRatio.toFixed(2) : '-'}); --help ${ms(result.cosictlHelpMedianMs)} ms, --version ${ms(result.cosictlVersionMedianMs)} ms; first line of get -w ${ms(result.cosictlWatchFirstLineMedianMs)} ms, of get ${ms(result.cosictlGetFirstLineMedianMs)} ms`);
    return result;
  } finally {
    await rm(nodeDir, { recursive: true, force: true });
  }
}

/** The scenario's rows of the results table: [figure, cosid, etcd, ceiling, target]; cosictl's against bare node. */
export function pipelineRows(p) {
  const pair = (s) => `${s.p50.toFixed(1)} / ${s.p99.toFixed(1)}`;
  return [
    ['config change -> event p50 / p99 (ms)', pair(p.configToEvent), undefined, undefined, 'p99 <= 50'],
    [`apply-config -> event p50 / p99 (ms), ${p.applyToEvent.n} applies; the call itself ${pair(p.applyCall)}`, pair(p.applyToEvent), undefined, undefined, 'p99 < 100'],
    ["cosictl get staticpods, median (ms); ceiling: bare node -e ''", p.cosictlMedianMs, undefined, p.nodeStartupMedianMs, '<= 2.5 x bare node'],
    ["cosictl --help, median (ms); ceiling: bare node -e ''", p.cosictlHelpMedianMs, undefined, p.nodeStartupMedianMs, ''],
    ["cosictl --version, median (ms); ceiling: bare node -e ''", p.cosictlVersionMedianMs, undefined, p.nodeStartupMedianMs, ''],
    ['cosictl get staticpods -w, first line, median (ms); ceiling: get staticpods, first line', p.cosictlWatchFirstLineMedianMs, undefined, p.cosictlGetFirstLineMedianMs, 'about 1 x get'],
  ];
}
