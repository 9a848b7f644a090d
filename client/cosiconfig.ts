// The client config file (cosiconfig), shaped like a talosconfig: named contexts, each with endpoints,
// optional nodes and base64-encoded PEM credentials (ca, crt, key).
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { chmod, mkdir, open, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import YAML from 'yaml';
import { CosiError, isCosiError } from '../shared/errors.js';

export interface CosiContext {
  readonly name: string;
  readonly endpoints: readonly string[];
  readonly nodes: readonly string[];
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
}

export interface CosiConfig {
  readonly currentContext: string;
  readonly contexts: ReadonlyMap<string, CosiContext>;
  /** Where the config was read from, for error messages. */
  readonly source?: string;
}

/** A config that cannot be read or used: a CosiError of kind `invalid-config` whose message says where and why. */
function configError(message: string, cause?: unknown): CosiError {
  return new CosiError('invalid-config', message, cause !== undefined ? { cause } : undefined);
}

const CREATE_HINT = 'create one with "cosictl gen pki --out DIR" and pass --cosiconfig DIR/cosiconfig (or set COSICONFIG)';

/** `$COSICONFIG` when set, else ~/.cosi/config. */
export function defaultCosiConfigPath(): string {
  const env = process.env['COSICONFIG'];
  return env !== undefined && env !== '' ? env : join(homedir(), '.cosi', 'config');
}

const errText = (err: unknown): string => (err instanceof Error ? (err.message.split('\n')[0] ?? err.message) : String(err));

function stringList(where: string, field: string, value: unknown): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw configError(`${where}: ${field} must be a list of HOST or HOST:PORT strings`);
  return value.map((v, i) => {
    if (typeof v !== 'string' || v.trim() === '') throw configError(`${where}: ${field}[${i}] must be a HOST or HOST:PORT string (got ${JSON.stringify(v)})`);
    return v.trim();
  });
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;

/** Decodes a base64 field strictly: Buffer.from(…, 'base64') silently skips bad characters, which would hide a damaged file. */
function base64Field(where: string, field: string, value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim() === '') throw configError(`${where} has no ${field} (the base64 of ${what})`);
  if (value.trimStart().startsWith('-----BEGIN')) {
    throw configError(`${where}: ${field} is a raw PEM; it must be base64-encoded (for example: base64 -w0 FILE)`);
  }
  const compact = value.replace(/\s+/g, '');
  if (compact.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(compact)) throw configError(`${where}: ${field} is not valid base64`);
  return Buffer.from(compact, 'base64').toString('utf8');
}

function certificates(where: string, field: string, pem: string): X509Certificate[] {
  const blocks = [...pem.matchAll(PEM_BLOCK)].filter((m) => m[1] === 'CERTIFICATE');
  if (blocks.length === 0) throw configError(`${where}: ${field} does not hold a PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return blocks.map((m, i) => {
    try {
      return new X509Certificate(m[0]);
    } catch (err) {
      throw configError(`${where}: ${field} certificate ${i + 1} is damaged: ${errText(err)}`);
    }
  });
}

function privateKey(where: string, field: string, pem: string): KeyObject {
  if (![...pem.matchAll(PEM_BLOCK)].some((m) => m[1]?.endsWith('PRIVATE KEY'))) {
    throw configError(`${where}: ${field} does not hold a PEM private key (-----BEGIN PRIVATE KEY-----)`);
  }
  try {
    return createPrivateKey(pem);
  } catch (err) {
    throw configError(`${where}: ${field} is not a usable private key: ${errText(err)}`);
  }
}

/** Checks a context as it will be used: endpoints to dial, a CA bundle, and a client certificate that matches its key. */
function checkContext(source: string, ctx: CosiContext): void {
  const where = `${source}: context ${JSON.stringify(ctx.name)}`;
  if (ctx.name === '') throw configError(`${source}: a context has an empty name`);
  if (ctx.endpoints.length === 0) throw configError(`${where} has no endpoints; add "endpoints: [HOST:PORT]" to it`);
  certificates(where, 'ca', ctx.caPem);
  const [leaf] = certificates(where, 'crt', ctx.certPem);
  const key = privateKey(where, 'key', ctx.keyPem);
  if (leaf !== undefined && !leaf.checkPrivateKey(key)) throw configError(`${where}: crt and key do not belong together (the key is for another certificate)`);
}

function parseContext(source: string, name: string, value: unknown): CosiContext {
  const where = `${source}: context ${JSON.stringify(name)}`;
  if (!(value instanceof Map)) throw configError(`${where} must be a mapping with endpoints, ca, crt and key`);
  const field = (k: string): unknown => value.get(k);
  const ctx: CosiContext = {
    name,
    endpoints: stringList(where, 'endpoints', field('endpoints')),
    nodes: stringList(where, 'nodes', field('nodes')),
    caPem: base64Field(where, 'ca', field('ca'), 'the CA certificate PEM'),
    certPem: base64Field(where, 'crt', field('crt'), 'the client certificate PEM'),
    keyPem: base64Field(where, 'key', field('key'), 'the client private key PEM'),
  };
  checkContext(source, ctx);
  return ctx;
}

/** Parses and checks a cosiconfig; `source` (usually the file name) starts every error message. */
export function parseCosiConfig(text: string, source: string): CosiConfig {
  let doc: unknown;
  try {
    // Maps as Map: context names come from the file, and must not land on an object prototype.
    doc = YAML.parse(text, { mapAsMap: true, maxAliasCount: 10 });
  } catch (err) {
    throw configError(`${source}: not valid YAML: ${errText(err)}`);
  }
  if (doc === null || doc === undefined) throw configError(`${source}: the file is empty; ${CREATE_HINT}`);
  if (!(doc instanceof Map)) throw configError(`${source}: expected a mapping with "context" and "contexts", not a ${Array.isArray(doc) ? 'list' : typeof doc}`);
  const contextsRaw: unknown = doc.get('contexts');
  if (!(contextsRaw instanceof Map)) {
    throw configError(`${source}: no "contexts" mapping (name -> endpoints, ca, crt, key); ${CREATE_HINT}`);
  }
  const contexts = new Map<string, CosiContext>();
  for (const [name, value] of contextsRaw) {
    if (typeof name !== 'string' || name === '') throw configError(`${source}: context names must be non-empty strings (got ${JSON.stringify(name)})`);
    contexts.set(name, parseContext(source, name, value));
  }
  const current: unknown = doc.get('context');
  if (current !== undefined && current !== null && typeof current !== 'string') throw configError(`${source}: "context" must be the name of a context`);
  // Like talosctl, a missing current context falls back to the only (here: first) one; an unknown one fails in selectContext.
  const currentContext = typeof current === 'string' && current !== '' ? current : (contexts.keys().next().value ?? '');
  return { currentContext, contexts, source };
}

export async function loadCosiConfig(path: string): Promise<CosiConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw configError(`no client config at ${path}: ${CREATE_HINT}`);
    if (code === 'EISDIR') throw configError(`${path} is a folder: pass the config file, for example ${join(path, 'cosiconfig')}`);
    throw configError(`cannot read ${path}: ${code ?? errText(err)}`);
  }
  return parseCosiConfig(text, path);
}

/** The named context, else the current one. */
export function selectContext(cfg: CosiConfig, name?: string): CosiContext {
  const wanted = name ?? cfg.currentContext;
  const ctx = cfg.contexts.get(wanted);
  if (ctx === undefined) {
    const known = [...cfg.contexts.keys()];
    const file = cfg.source !== undefined ? ` in ${cfg.source}` : '';
    throw configError(
      known.length === 0
        ? `no contexts${file}; ${CREATE_HINT}`
        : `context ${JSON.stringify(wanted)} is not${file}; known contexts: ${known.join(', ')} (choose one with --context NAME)`,
    );
  }
  return ctx;
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

export function serializeCosiConfig(cfg: CosiConfig): string {
  const contexts = new Map<string, Map<string, unknown>>();
  for (const [name, c] of cfg.contexts) {
    const entry = new Map<string, unknown>([['endpoints', [...c.endpoints]]]);
    if (c.nodes.length > 0) entry.set('nodes', [...c.nodes]);
    entry.set('ca', b64(c.caPem));
    entry.set('crt', b64(c.certPem));
    entry.set('key', b64(c.keyPem));
    contexts.set(name, entry);
  }
  // lineWidth 0: never fold, so each base64 value stays one line as in a talosconfig.
  return YAML.stringify(new Map<string, unknown>([['context', cfg.currentContext], ['contexts', contexts]]), { lineWidth: 0 });
}

/** Adds or replaces a context in a config file, which is created when missing; the file ends up mode 0600. */
export async function upsertContext(path: string, ctx: CosiContext, opts: { makeCurrent: boolean }): Promise<void> {
  let existing: CosiConfig | undefined;
  try {
    existing = parseCosiConfig(await readFile(path, 'utf8'), path);
  } catch (err) {
    if (isCosiError(err)) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw configError(`cannot read ${path}: ${code ?? errText(err)}`);
  }
  const contexts = new Map(existing?.contexts ?? []);
  contexts.set(ctx.name, { name: ctx.name, endpoints: [...ctx.endpoints], nodes: [...ctx.nodes], caPem: ctx.caPem, certPem: ctx.certPem, keyPem: ctx.keyPem });
  const currentContext = !opts.makeCurrent && existing !== undefined && existing.currentContext !== '' ? existing.currentContext : ctx.name;
  const text = serializeCosiConfig({ currentContext, contexts });
  // Never write a file that would not load back.
  parseCosiConfig(text, path);
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // The file holds private keys: narrow an existing file before writing into it (open's mode applies only on create).
  await chmod(path, 0o600).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  const fh = await open(path, 'w', 0o600);
  try {
    await fh.writeFile(text, 'utf8');
  } finally {
    await fh.close();
  }
}
