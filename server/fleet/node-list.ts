// The fleet's node list. Replicas must agree on the set of nodes, or rendezvous hashing leaves some node with no
// owner, so the list of record is one etcd key, `<P>nodelist` = {"sha256","nodes":[{name,address}],"by","at"}; the
// file (--nodes-file, cosid's format) is the input of whoever edits it (docs/design/fleet.md §1):
// - at start, a missing key is created from the file; a key that differs wins, with a warning, unless the file was
//   changed after that key was published (an edit made while no replica ran);
// - when the file changes, it is published with a compare on the key's mod_revision (the last local edit wins);
// - every replica watches the key, and current() is what assignment and routing use.
// It is also the fleet's directory for node routing: a listed name is a remote node, anything else unknown.
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFile, stat } from 'node:fs/promises';
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { Logger } from '../../shared/log.js';
import { parseNodeList, watchFile, type NodeRoutes, type NodeTarget, type Route } from '../api/node-directory.js';
import { checkNodeName, type FleetKeys } from './keys.js';

interface Published {
  readonly sha256: string;
  readonly nodes: readonly NodeTarget[];
  readonly by: string;
  readonly at: number;
}

export interface NodeListOptions {
  client: Etcd3;
  keys: FleetKeys;
  file: string;
  replica: string;
  /** The port of an address given without one. */
  defaultPort: number;
  log: Logger;
  /** How often the file is read again in any case (default 10 s). */
  pollMs?: number;
}

function digest(nodes: readonly NodeTarget[]): string {
  return createHash('sha256').update(JSON.stringify(nodes.map((n) => [n.name, n.address]))).digest('hex');
}

/** Emits 'changed' when the list of record changes. */
export class NodeList extends EventEmitter implements NodeRoutes {
  private byName = new Map<string, NodeTarget>();
  private published: Published | undefined;
  private modRevision = '0';
  private watcher: Watcher | undefined;
  private unwatchFile: () => void = () => {};
  private lastFileText: string | undefined;
  private publishing: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(private readonly opts: NodeListOptions) {
    super();
  }

  /** Reads the file (a broken file at start is an error) and the list of record, publishing the file if there is none. */
  static async start(opts: NodeListOptions): Promise<NodeList> {
    const list = new NodeList(opts);
    const text = await readFile(opts.file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new Error(`cannot read the node list ${opts.file}: ${err.code ?? String(err)}`);
    });
    const nodes = list.parse(text);
    list.lastFileText = text;
    const key = opts.keys.nodeList;
    const created = await opts.client
      .if(key, 'Create', '==', 0)
      .then(opts.client.put(key).value(list.recordOf(nodes)))
      .else(opts.client.get(key))
      .commit();
    if (created.succeeded) {
      opts.log.info('published the node list', { nodes: nodes.length });
    }
    const current = await opts.client.get(key).exec();
    const kv = current.kvs[0];
    if (kv !== undefined) list.take(kv);
    if (!created.succeeded && list.published !== undefined && list.published.sha256 !== digest(nodes)) {
      // Edited since the list in force was published (while no replica ran, say): it is the newer word.
      if ((await stat(opts.file)).mtimeMs > list.published.at) {
        await list.publish(nodes);
      } else {
        opts.log.warn('the nodes file differs from the fleet\'s, which is newer; using the fleet\'s (edit the file to publish it)', {
          file: opts.file,
          publishedBy: list.published.by,
          publishedAt: new Date(list.published.at).toISOString(),
          nodes: list.published.nodes.length,
        });
      }
    }
    list.watcher = await opts.client.watch().key(key).startRevision(String(Number(current.header.revision) + 1)).create();
    list.watcher.on('put', (kv) => list.take(kv));
    list.watcher.on('error', (err) => opts.log.debug('node list watch error; it reconnects', { error: err instanceof Error ? err.message : String(err) }));
    list.unwatchFile = watchFile(opts.file, () => void list.fileChanged(), opts.log, opts.pollMs ?? 10_000);
    return list;
  }

  /** The nodes of record. */
  current(): ReadonlyMap<string, NodeTarget> {
    return this.byName;
  }

  route(node: string): Route {
    const target = this.byName.get(node);
    return target === undefined ? { kind: 'unknown', name: node.slice(0, 253) } : { kind: 'remote', target };
  }

  unknownHint(): string {
    const names = [...this.byName.keys()];
    return `it is not in the fleet's node list (${names.length} nodes${names.length > 0 ? `: ${names.slice(0, 5).join(', ')}${names.length > 5 ? ', ...' : ''}` : ''})`;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unwatchFile();
    await this.publishing;
    await this.watcher?.cancel().catch(() => undefined);
  }

  private parse(text: string): NodeTarget[] {
    const nodes = parseNodeList(text, this.opts.file, this.opts.defaultPort);
    for (const n of nodes) checkNodeName(n.name);
    return nodes;
  }

  private recordOf(nodes: readonly NodeTarget[]): string {
    const v: Published = { sha256: digest(nodes), nodes: nodes.map((n) => ({ name: n.name, address: n.address })), by: this.opts.replica, at: Date.now() };
    return JSON.stringify(v);
  }

  private take(kv: IKeyValue): void {
    let v: Published;
    try {
      v = JSON.parse(kv.value.toString('utf8')) as Published;
      if (!Array.isArray(v.nodes)) throw new Error('no nodes');
    } catch (err) {
      this.opts.log.error('the fleet\'s node list does not decode; keeping the last one', { error: err instanceof Error ? err.message : String(err) });
      return;
    }
    if (Number(kv.mod_revision) <= Number(this.modRevision)) return;
    this.modRevision = kv.mod_revision;
    const changed = this.published?.sha256 !== v.sha256;
    this.published = v;
    if (!changed) return;
    this.byName = new Map(v.nodes.map((n) => [n.name, { name: n.name, address: n.address }]));
    this.opts.log.info('node list in force', { nodes: this.byName.size, by: v.by });
    this.emit('changed');
  }

  /** The file changed: publish it, unless it is broken (the last good list stays) or says what is in force. */
  private fileChanged(): Promise<void> {
    this.publishing = this.publishing.then(async () => {
      if (this.closed) return;
      let text: string;
      let nodes: NodeTarget[];
      try {
        text = await readFile(this.opts.file, 'utf8');
        if (text === this.lastFileText) return;
        nodes = this.parse(text);
      } catch (err) {
        this.opts.log.error('nodes file refused; keeping the fleet\'s list', { file: this.opts.file, error: err instanceof Error ? err.message : String(err) });
        return;
      }
      this.lastFileText = text;
      await this.publish(nodes);
    });
    return this.publishing;
  }

  private async publish(nodes: NodeTarget[]): Promise<void> {
    const key = this.opts.keys.nodeList;
    for (let attempt = 0; attempt < 10 && !this.closed; attempt++) {
      if (this.published?.sha256 === digest(nodes)) return;
      try {
        const res = await this.opts.client.if(key, 'Mod', '==', this.modRevision).then(this.opts.client.put(key).value(this.recordOf(nodes))).else(this.opts.client.get(key)).commit();
        if (res.succeeded) {
          this.opts.log.info('published the node list', { nodes: nodes.length });
          return;
        }
        // Someone published meanwhile: take theirs, then ours goes on top (the last local edit wins).
        const kv = res.responses[0]?.response_range?.kvs[0];
        if (kv !== undefined) this.take(kv);
      } catch (err) {
        this.opts.log.warn('cannot publish the node list yet', { error: err instanceof Error ? err.message : String(err) });
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
  }
}
