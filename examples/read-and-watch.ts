// Reads and watches static pods with the client library: a list, a get, then a watch that prints every change
// until Ctrl-C.
//
//   npm run build && node dist/examples/read-and-watch.js [--cosiconfig FILE]
//
// The client config is found as cosictl finds it: --cosiconfig, else $COSICONFIG, else ~/.cosi/config (`npm start`
// writes one to .state/pki/cosiconfig).
import { parseArgs } from 'node:util';
import { connectContext, defaultCosiConfigPath, loadCosiConfig, selectContext } from 'cosi-pods';

const { values } = parseArgs({ options: { cosiconfig: { type: 'string' } } });
const context = selectContext(await loadCosiConfig(values.cosiconfig ?? defaultCosiConfigPath()));
await using client = connectContext(context); // closed when this module's scope ends

// One answer each: every StaticPod, then the first of them by its ID.
const pods = await client.list('staticpods');
console.log(`static pods: ${pods.map((pod) => pod.metadata.id).join(', ')}`);
const first = pods[0];
if (first !== undefined) {
  const pod = await client.get('staticpods', first.metadata.id);
  console.log(`${pod.metadata.id} is at version ${pod.metadata.version}`);
}

// A watch is an async iterable: the current statuses (bootstrap), then every change. It reconnects and resumes on
// its own; the gRPC stream is paused while the loop body runs. Aborting its signal ends the loop.
const stop = new AbortController();
process.once('SIGINT', () => stop.abort());
for await (const event of client.watchIter('staticpodstatus', { bootstrap: true, signal: stop.signal })) {
  console.log(event.type, event.resource?.metadata.id ?? '');
}
console.log('watch ended');
