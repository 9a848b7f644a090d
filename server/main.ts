#!/usr/bin/env node
// cosid: serves the COSI State API for this node's static pods over mutual TLS.
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger, parseLevel } from '../shared/log.js';
import { MachineConfigError, parseMachineConfig } from './config/machine-config.js';
import { reconcileStaticPods } from './controllers/static-pods.js';
import { Cosid } from './cosid.js';

const USAGE = `Usage: cosid --pki DIR --config MACHINE.yaml [--listen 127.0.0.1:50000] [--node NAME] [--log-level info]

  --pki DIR          folder with ca.crt (trusted client CA), server.crt and server.key
                     (create one with: cosictl gen pki --out DIR)
  --config FILE      Talos machine config (multi-document YAML); machine.pods become StaticPods
  --listen ADDR      host:port to serve on (default 127.0.0.1:50000)
  --node NAME        node name reported to clients (default: the host name)
  --log-level LEVEL  debug, info, warn or error (default info)`;

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        pki: { type: 'string' },
        config: { type: 'string' },
        listen: { type: 'string', default: '127.0.0.1:50000' },
        node: { type: 'string', default: hostname() },
        'log-level': { type: 'string', default: 'info' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (err) {
    process.stderr.write(`cosid: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    return 2;
  }
  if (args.help === true) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const level = parseLevel(args['log-level']);
  if (args.pki === undefined || args.config === undefined || level === undefined) {
    process.stderr.write(`cosid: ${level === undefined ? 'unknown --log-level' : '--pki and --config are required'}\n${USAGE}\n`);
    return 2;
  }
  const log = createLogger({ level });
  const read = async (file: string) => {
    try {
      return await readFile(file, 'utf8');
    } catch (err) {
      throw new Error(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}${file.startsWith(args.pki ?? '') ? ' (create the PKI with: cosictl gen pki --out ' + (args.pki ?? 'DIR') + ')' : ''}`);
    }
  };
  const tls = {
    caPem: await read(join(args.pki, 'ca.crt')),
    certPem: await read(join(args.pki, 'server.crt')),
    keyPem: await read(join(args.pki, 'server.key')),
  };
  const config = parseMachineConfig(await read(args.config), args.config);
  for (const w of config.warnings) log.warn(w);

  const cosid = await Cosid.start({ listen: args.listen, tls, nodeName: args.node ?? hostname(), log });
  reconcileStaticPods(cosid.store, config.pods, log);

  let signalled = false;
  const stop = (signal: string) => {
    if (signalled) {
      log.warn('second signal: exiting now', { signal });
      process.exit(1);
    }
    signalled = true;
    log.info('stopping: ending open streams', { signal });
    void cosid.stop().then(() => {
      log.info('stopped');
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return -1;
}

main().then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    const msg = err instanceof MachineConfigError || err instanceof Error ? err.message : String(err);
    process.stderr.write(`cosid: ${msg}\n`);
    process.exit(1);
  },
);
