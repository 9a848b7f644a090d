// Entry point of the kubelet SIMULATOR for `npm start` (compiled to dist/node-sim/kubelet/bin.js).
import { runSimulatorCli } from './cli.js';

runSimulatorCli(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`kubelet-simulator: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
