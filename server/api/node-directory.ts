// Which node a call's metadata `node` names, and where that node's cosid listens: this cosid itself, a node of the
// node list (--nodes-file: YAML `nodes: [{name, address}]`, reloaded when it changes; a broken file keeps the last
// good list), or a bare `host:port` or IP address dialed as given (an IP without a port: this cosid's own port, as
// every cosid of a cluster is normally started with the same flags).
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { basename, dirname } from 'node:path';
import YAML from 'yaml';
import { CosiError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';

/** A node another cosid serves: its name as callers give it, and its cosid's host:port. */
export interface NodeTarget {
  readonly name: string;
  readonly address: string;
}

/** Where a call goes: here, to another node, or nowhere (a name this endpoint does not know). */
export type Route = { readonly kind: 'local' } | { readonly kind: 'remote'; readonly target: NodeTarget } | { readonly kind: 'unknown'; readonly name: string };

export interface NodeDirectoryOptions {
  /** This cosid's node name (--node). */
  nodeName: string;
  /** This cosid's listen address as given (host:port), and the port it bound (known once it listens). */
  listen: string;
  port: () => number;
  /** The node list file (YAML); absent: only this node and bare addresses. */
  file?: string;
  log: Logger;
}

const LOCAL: Route = { kind: 'local' };
const MAX_NAME = 253;

/** Splits host:port and [v6]:port; undefined for anything else. */
export function splitHostPort(s: string): { host: string; port: number } | undefined {
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(s) ?? /^([A-Za-z0-9.-]+):(\d{1,5})$/.exec(s);
  const host = m?.[1];
  const port = Number(m?.[2]);
  if (host === undefined || !(port > 0 && port < 65536)) return undefined;
  if (s.startsWith('[') && isIP(host) !== 6) return undefined;
  return { host: host.toLowerCase(), port };
}

function joinHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A node list as its file says, checked: names unique, addresses host[:port]. Throws saying what is wrong. */
export function parseNodeList(text: string, file: string, defaultPort: number): NodeTarget[] {
  const doc: unknown = YAML.parse(text);
  if (doc === null || doc === undefined) return [];
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new Error(`${file}: expected a mapping with the key nodes`);
  const unknownKeys = Object.keys(doc).filter((k) => k !== 'nodes');
  if (unknownKeys.length > 0) throw new Error(`${file}: unknown key ${JSON.stringify(unknownKeys[0])}: the file holds only nodes: [{name, address}]`);
  const nodes = (doc as { nodes?: unknown }).nodes ?? [];
  if (!Array.isArray(nodes)) throw new Error(`${file}: nodes must be a list of {name, address}`);
  const seen = new Set<string>();
  return nodes.map((n: unknown, i): NodeTarget => {
    const where = `${file}: nodes[${i}]`;
    if (n === null || typeof n !== 'object' || Array.isArray(n)) throw new Error(`${where} must be a mapping {name, address}`);
    const extra = Object.keys(n).filter((k) => k !== 'name' && k !== 'address');
    if (extra.length > 0) throw new Error(`${where}: unknown key ${JSON.stringify(extra[0])} (a node has name and address)`);
    const { name, address } = n as { name?: unknown; address?: unknown };
    if (typeof name !== 'string' || name.trim() === '' || name.length > MAX_NAME || /[\s,]/.test(name)) throw new Error(`${where}: name must be a non-empty string without spaces or commas`);
    if (seen.has(name)) throw new Error(`${where}: the name ${JSON.stringify(name)} is listed twice`);
    seen.add(name);
    if (typeof address !== 'string') throw new Error(`${where} (${name}): address must be host:port or an IP address`);
    const resolved = addressOf(address, defaultPort);
    if (resolved === undefined) throw new Error(`${where} (${name}): address ${JSON.stringify(address)} is not host:port or an IP address`);
    return { name, address: resolved };
  });
}

/** host:port as given, or an IP address with the default port. */
function addressOf(s: string, defaultPort: number): string | undefined {
  const hp = splitHostPort(s);
  if (hp !== undefined) return joinHostPort(hp.host, hp.port);
  const bare = s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
  return isIP(bare) !== 0 ? joinHostPort(bare.toLowerCase(), defaultPort) : undefined;
}

export class NodeDirectory implements NodeRoutes {
  private byName = new Map<string, NodeTarget>();
  private byAddress = new Map<string, NodeTarget>();
  private lastText: string | undefined;
  private unwatch: () => void = () => {};
  private reloading: Promise<void> = Promise.resolve();
  private ownHosts: Set<string> | undefined;

  constructor(private readonly opts: NodeDirectoryOptions) {}

  /** The node list file, when there is one. */
  get file(): string | undefined {
    return this.opts.file;
  }

  /** The nodes of the list in force. */
  get nodes(): readonly NodeTarget[] {
    return [...this.byName.values()];
  }

  /** Reads the node list for the first time: a broken file at start is an error (there is no last good list). */
  async load(): Promise<void> {
    const file = this.opts.file;
    if (file === undefined) return;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new Error(`cannot read the node list ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    this.use(text, parseNodeList(text, file, this.opts.port()));
  }

  /** Reloads when the file changes (its folder is watched, as files are often replaced) and every `pollMs`. */
  watch(pollMs = 10_000): void {
    const file = this.opts.file;
    if (file === undefined) return;
    this.unwatch = watchFile(file, () => void this.reload(), this.opts.log, pollMs);
  }

  stop(): void {
    this.unwatch();
  }

  /** Re-reads the file; a list that cannot be read or is not valid is logged and the last good one stays. */
  reload(): Promise<void> {
    const file = this.opts.file;
    if (file === undefined) return Promise.resolve();
    this.reloading = this.reloading.then(async () => {
      try {
        const text = await readFile(file, 'utf8');
        if (text === this.lastText) return;
        this.use(text, parseNodeList(text, file, this.opts.port()));
        this.opts.log.info('node list loaded', { file, nodes: this.byName.size });
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        this.opts.log.error('node list refused; keeping the last good one', { file, nodes: this.byName.size, error: reason });
      }
    });
    return this.reloading;
  }

  private use(text: string, nodes: NodeTarget[]): void {
    this.lastText = text;
    this.byName = new Map(nodes.map((n) => [n.name, n]));
    this.byAddress = new Map(nodes.map((n) => [n.address, n]));
  }

  /** Where a call naming `node` goes. */
  route(node: string): Route {
    if (node === this.opts.nodeName) return LOCAL;
    const listed = this.byName.get(node);
    if (listed !== undefined) return this.isSelf(listed.address) ? LOCAL : { kind: 'remote', target: listed };
    const address = addressOf(node, this.opts.port());
    if (address === undefined) return { kind: 'unknown', name: node.slice(0, MAX_NAME) };
    if (this.isSelf(address)) return LOCAL;
    return { kind: 'remote', target: this.byAddress.get(address) ?? { name: address, address } };
  }

  /** Why a name is not known, for the caller: where names come from. */
  unknownHint(): string {
    const file = this.opts.file;
    return file === undefined
      ? 'this endpoint has no node list (--nodes-file); name a node by its host:port or IP address'
      : `it is not in the node list ${file}${this.byName.size > 0 ? ` (${[...this.byName.keys()].slice(0, 5).join(', ')}${this.byName.size > 5 ? ', ...' : ''})` : ''} and is not a host:port or an IP address`;
  }

  /** This cosid's own address: its port, and a host it listens on. */
  private isSelf(address: string): boolean {
    const hp = splitHostPort(address);
    if (hp === undefined || hp.port !== this.opts.port()) return false;
    return this.hosts().has(hp.host);
  }

  /** The hosts this cosid answers on: its listen host, or every local address when it listens on all of them. */
  private hosts(): Set<string> {
    if (this.ownHosts !== undefined) return this.ownHosts;
    const hp = splitHostPort(this.opts.listen);
    const listenHost = hp?.host ?? this.opts.listen.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
    const hosts = new Set<string>(['localhost']);
    if (listenHost === '' || listenHost === '0.0.0.0' || listenHost === '::') {
      for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) hosts.add(a.address.toLowerCase());
    } else {
      hosts.add(listenHost.toLowerCase());
    }
    if (hosts.has('127.0.0.1') || hosts.has('::1')) hosts.add('localhost');
    else hosts.delete('localhost');
    this.ownHosts = hosts;
    return hosts;
  }
}

/**
 * Calls `changed` when a file may have changed: its folder is watched (files are often replaced, not written in
 * place), events 100 ms apart are taken as one, and every `pollMs` in any case. Returns the stop function.
 */
export function watchFile(file: string, changed: () => void, log: Logger, pollMs = 10_000): () => void {
  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  try {
    watcher = watch(dirname(file), { persistent: false }, (_event, name) => {
      if (name !== null && name !== basename(file)) return;
      clearTimeout(debounce);
      debounce = setTimeout(changed, 100);
    });
    watcher.on('error', () => {});
  } catch (err) {
    log.warn('cannot watch the file; polling only', { file, error: err });
  }
  const poll = setInterval(changed, pollMs);
  poll.unref();
  return () => {
    clearInterval(poll);
    clearTimeout(debounce);
    watcher?.close();
  };
}

/** What a node router needs of a directory: where a name goes, and why a name is unknown. */
export interface NodeRoutes {
  route(node: string): Route;
  unknownHint(): string;
}

/** A CosiError for a node name this endpoint cannot route. */
export function unknownNode(name: string, hint: string): CosiError {
  return new CosiError('not-found', `node ${JSON.stringify(name)} is not known to this endpoint (${hint})`);
}
