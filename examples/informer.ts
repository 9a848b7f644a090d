// An informer, the shape of a controller: the statuses of every cosid the client config's context names, kept in a
// local cache, with a line for each change; it prints the cache once every one has listed, and stops on Ctrl-C.
//
//   npm run build && node dist/examples/informer.js [--cosiconfig FILE]
//
// Each endpoint of the context is one node of the informer, with its own connection.
import { parseArgs } from 'node:util';
import { connectContext, createInformer, defaultCosiConfigPath, loadCosiConfig, selectContext } from 'cosi-pods';

const { values } = parseArgs({ options: { cosiconfig: { type: 'string' } } });
const context = selectContext(await loadCosiConfig(values.cosiconfig ?? defaultCosiConfigPath()));
const targets = context.endpoints.map((endpoint) => ({ node: endpoint, client: connectContext(context, endpoint) }));

const informer = createInformer(targets, 'staticpodstatus', {
  handlers: {
    added: ({ node, resource }) => console.log(`${node}: added ${resource.metadata.id}`),
    updated: ({ node, resource, old }) =>
      console.log(`${node}: updated ${resource.metadata.id} ${old.metadata.version} -> ${resource.metadata.version}`),
    deleted: ({ node, resource }) => console.log(`${node}: deleted ${resource.metadata.id}`),
    error: ({ node, error, fatal }) => console.error(`${node}: ${error.message}${fatal ? ' (watch ended)' : ''}`),
  },
});
await informer.synced({ timeoutMs: 60_000 }); // every node's first list is in the cache
console.log(`synced: ${informer.list().map(({ node, resource }) => `${node}/${resource.metadata.id}`).join(', ')}`);

await new Promise((resolve) => process.once('SIGINT', resolve));
await informer.stop();
for (const { client } of targets) client.close();
console.log('stopped');
