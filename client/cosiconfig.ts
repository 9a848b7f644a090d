// The client config file (cosiconfig), shaped like a talosconfig: contexts with endpoints and base64 PEM credentials.
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import YAML from 'yaml';

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
}

export class CosiConfigError extends Error {
  override readonly name = 'CosiConfigError';
}

export function defaultCosiConfigPath(): string {
  const env = process.env['COSICONFIG'];
  return env !== undefined && env !== '' ? env : join(homedir(), '.cosi', 'config');
}

function pemField(source: string, ctx: string, field: string, value: unknown, marker: string): string {
  if (typeof value !== 'string' || value === '') throw new CosiConfigError(`${source}: context "${ctx}" has no ${field}`);
  const pem = Buffer.from(value, 'base64').toString('utf8');
  if (!pem.includes(`-----BEGIN ${marker}`)) throw new CosiConfigError(`${source}: context "${ctx}": ${field} is not a base64-encoded PEM ${marker.toLowerCase()}`);
  return pem;
}

function stringList(source: string, ctx: string, field: string, value: unknown): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || !value.every((v): v is string => typeof v === 'string')) {
    throw new CosiConfigError(`${source}: context "${ctx}": ${field} must be a list of strings`);
  }
  return value;
}

export function parseCosiConfig(text: string, source: string): CosiConfig {
  let doc: unknown;
  try {
    doc = YAML.parse(text, { maxAliasCount: 10 });
  } catch (err) {
    throw new CosiConfigError(`${source}: not valid YAML: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new CosiConfigError(`${source}: expected a mapping with "context" and "contexts"`);
  const raw = doc as Record<string, unknown>;
  const contextsRaw = raw['contexts'];
  if (contextsRaw === null || typeof contextsRaw !== 'object' || Array.isArray(contextsRaw)) {
    throw new CosiConfigError(`${source}: no "contexts"; create a config with: cosictl gen pki --out DIR`);
  }
  const contexts = new Map<string, CosiContext>();
  for (const [name, value] of Object.entries(contextsRaw as Record<string, unknown>)) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new CosiConfigError(`${source}: context "${name}" must be a mapping`);
    const c = value as Record<string, unknown>;
    contexts.set(name, {
      name,
      endpoints: stringList(source, name, 'endpoints', c['endpoints']),
      nodes: stringList(source, name, 'nodes', c['nodes']),
      caPem: pemField(source, name, 'ca', c['ca'], 'CERTIFICATE'),
      certPem: pemField(source, name, 'crt', c['crt'], 'CERTIFICATE'),
      keyPem: pemField(source, name, 'key', c['key'], 'PRIVATE KEY'),
    });
  }
  const current = raw['context'];
  const currentContext = typeof current === 'string' ? current : (contexts.keys().next().value ?? '');
  return { currentContext, contexts };
}

export async function loadCosiConfig(path: string): Promise<CosiConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new CosiConfigError(`no client config at ${path}: create one with "cosictl gen pki --out DIR" and pass --cosiconfig DIR/cosiconfig (or set COSICONFIG)`);
    }
    throw new CosiConfigError(`cannot read ${path}: ${code ?? String(err)}`);
  }
  return parseCosiConfig(text, path);
}

export function selectContext(cfg: CosiConfig, name?: string): CosiContext {
  const wanted = name ?? cfg.currentContext;
  const ctx = cfg.contexts.get(wanted);
  if (ctx === undefined) {
    throw new CosiConfigError(`context "${wanted}" is not in the client config; known contexts: ${[...cfg.contexts.keys()].join(', ') || 'none'}`);
  }
  return ctx;
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

export function serializeCosiConfig(cfg: CosiConfig): string {
  const contexts: Record<string, unknown> = {};
  for (const [name, c] of cfg.contexts) {
    contexts[name] = { endpoints: [...c.endpoints], nodes: [...c.nodes], ca: b64(c.caPem), crt: b64(c.certPem), key: b64(c.keyPem) };
  }
  return YAML.stringify({ context: cfg.currentContext, contexts });
}

/** Adds or replaces a context in a config file (created when missing, mode 0600). */
export async function upsertContext(path: string, ctx: CosiContext, opts: { makeCurrent: boolean }): Promise<void> {
  let cfg: CosiConfig = { currentContext: ctx.name, contexts: new Map() };
  try {
    cfg = await loadCosiConfig(path);
  } catch (err) {
    if (!(err instanceof CosiConfigError && err.message.startsWith('no client config'))) throw err;
  }
  const contexts = new Map(cfg.contexts);
  contexts.set(ctx.name, ctx);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, serializeCosiConfig({ currentContext: opts.makeCurrent ? ctx.name : cfg.currentContext, contexts }), { mode: 0o600 });
  await chmod(path, 0o600);
}
