// The node's containers, from its container runtime, and the last lines of each running container's log (Talos's
// machine API, as `cosictl containers -k` and `cosictl logs -k` use it).
//
//   npm run build && node dist/examples/containers-and-logs.js [--cosiconfig FILE] [--tail 5]
import { parseArgs } from 'node:util';
import { connectContext, defaultCosiConfigPath, loadCosiConfig, selectContext } from 'cosi-pods';

const { values } = parseArgs({ options: { cosiconfig: { type: 'string' }, tail: { type: 'string', default: '5' } } });
const context = selectContext(await loadCosiConfig(values.cosiconfig ?? defaultCosiConfigPath()));
await using client = connectContext(context);

// Sandboxes (id = podId) and their containers, exited ones too.
const containers = await client.containers();
for (const c of containers) console.log(`${c.id} ${c.status} pid=${c.pid} restarts=${c.restartCount}`);

for (const c of containers.filter((c) => c.id !== c.podId && c.status === 'CONTAINER_RUNNING')) {
  console.log(`--- ${c.id}`);
  // Whole lines in the CRI format, as stored; with `follow: true` it would go on until its signal or a break.
  for await (const chunk of client.logs(c.id, { tailLines: Number(values.tail) })) process.stdout.write(chunk);
}
