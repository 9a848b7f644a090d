// `npm start`: runs cosid on the embedded default: a PKI generated into .state/ on first run,
// the example machine config, loopback only. Prints the cosictl command to try.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const state = process.env.COSI_STATE_DIR ?? join(root, '.state');
const pki = join(state, 'pki');
const config = join(root, 'examples', 'machine-config.yaml');
const listen = process.env.COSID_LISTEN ?? '127.0.0.1:50000';

if (!existsSync(join(pki, 'ca.key'))) {
  const { generatePki } = await import('../dist/client/gen-pki.js');
  await generatePki(pki, { endpoint: listen });
  process.stderr.write(`generated a new PKI in ${relative(process.cwd(), pki) || '.'}\n`);
}

const cosiconfig = relative(process.cwd(), join(pki, 'cosiconfig')) || join(pki, 'cosiconfig');
process.stderr.write(
  `\ncosid is starting on ${listen} with ${relative(process.cwd(), config)}. In another terminal, try:\n\n` +
    `  node dist/client/cli/main.js --cosiconfig ${cosiconfig} get staticpods\n\n` +
    `(or: npx cosictl --cosiconfig ${cosiconfig} get staticpods -w). Stop with Ctrl-C.\n\n`,
);

const child = spawn(process.execPath, [join(root, 'dist', 'server', 'main.js'), '--pki', pki, '--config', config, '--listen', listen, ...process.argv.slice(2)], {
  stdio: 'inherit',
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 0 : 1)));
