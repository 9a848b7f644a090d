// cosictl gen: a new PKI (gen pki), or a client certificate from an existing CA (gen cert).
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { issueClientCert } from '../../shared/pki.js';
import { defaultCosiConfigPath, loadCosiConfig, upsertContext, type CosiConfig } from '../cosiconfig.js';
import { generatePki } from '../gen-pki.js';
import { UsageError } from './usage.js';

export interface GenOptions {
  args: string[];
  out: string | undefined;
  sans: string[];
  endpoint: string | undefined;
  force: boolean;
  caDir: string | undefined;
  name: string | undefined;
  roles: string[];
  ttl: string | undefined;
  /** --cosiconfig as given: the file gen cert adds its context to (created when missing). */
  cosiconfig: string | undefined;
}

const ROLES = ['os:admin', 'os:operator', 'os:reader', 'os:impersonator'];
/** The role of cosid's own certificate for proxying calls to other nodes (cosid --impersonator-cert). */
const IMPERSONATOR = 'os:impersonator';
const DEFAULT_ENDPOINT = '127.0.0.1:50000';

export async function runGen(o: GenOptions): Promise<number> {
  const [what, ...extra] = o.args;
  if (what !== 'pki' && what !== 'cert') throw new UsageError('gen needs what to generate: gen pki or gen cert', 'gen');
  if (extra.length > 0) throw new UsageError(`gen ${what} takes no arguments; unexpected ${JSON.stringify(extra.join(' '))}`, `gen ${what}`);
  return what === 'pki' ? genPki(o) : genCert(o);
}

async function genPki(o: GenOptions): Promise<number> {
  if (o.out === undefined) throw new UsageError('gen pki needs --out DIR (the folder to write ca.crt, server.crt, admin.crt, ... and cosiconfig into)', 'gen pki');
  const files = await generatePki(o.out, { sans: o.sans, ...(o.endpoint !== undefined ? { endpoint: o.endpoint } : {}), force: o.force });
  process.stdout.write(`wrote the PKI to ${o.out}: ${Object.values(files).join(', ')}\n`);
  return 0;
}

/** `30d`, `12h`, `90m` -> days (fractions allowed). */
function ttlDays(ttl: string): number {
  const m = /^(\d+)(d|h|m)$/.exec(ttl);
  if (m === null) throw new UsageError(`invalid --ttl ${JSON.stringify(ttl)}: use for example 30d, 12h or 90m`, 'gen cert');
  const n = Number(m[1]);
  const days = m[2] === 'd' ? n : m[2] === 'h' ? n / 24 : n / 1440;
  if (days <= 0 || days > 3650) throw new UsageError(`--ttl ${ttl} must be more than 0 and at most 10 years`, 'gen cert');
  return days;
}

const exists = (path: string): Promise<boolean> => stat(path).then(
  () => true,
  (err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return false;
    throw new Error(`cannot read ${path}: ${err.code ?? err.message}`);
  },
);

/**
 * The client config gen cert adds its context to, as talosctl config new and kubectl config set-context users
 * expect: the file named with --cosiconfig (created when missing); else the config cosictl reads ($COSICONFIG, else
 * ~/.cosi/config) when it exists; else a new config of its own beside the certificate, never a config that would
 * silently become the default one while holding only this context.
 */
async function targetConfig(named: string | undefined, outDir: string, name: string): Promise<{ path: string; existed: boolean }> {
  if (named !== undefined) return { path: named, existed: await exists(named) };
  const usual = defaultCosiConfigPath();
  if (await exists(usual)) return { path: usual, existed: true };
  const own = join(outDir, `${name}.cosiconfig`);
  return { path: own, existed: await exists(own) };
}

/** The endpoints of a config's current context. */
function currentEndpoints(cfg: CosiConfig | undefined): readonly string[] | undefined {
  const endpoints = cfg?.contexts.get(cfg.currentContext)?.endpoints;
  return endpoints !== undefined && endpoints.length > 0 ? endpoints : undefined;
}

/** Writes cosid's impersonator certificate, and says how cosid takes it. */
async function writeImpersonator(pair: { certPem: string; keyPem: string }, outDir: string, name: string, ttl: string): Promise<number> {
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  const certFile = join(outDir, `${name}.crt`);
  const keyFile = join(outDir, `${name}.key`);
  await writeFile(certFile, pair.certPem, { mode: 0o644 });
  await writeFile(keyFile, pair.keyPem, { mode: 0o600 });
  process.stderr.write(
    `wrote ${resolve(certFile)} and ${resolve(keyFile)} (${IMPERSONATOR}, valid ${ttl}): for cosid, to proxy calls to other nodes; start it with --impersonator-cert ${certFile} --impersonator-key ${keyFile}, or name them impersonator.crt and impersonator.key in its --pki folder (no client context added)\n`,
  );
  return 0;
}

async function genCert(o: GenOptions): Promise<number> {
  if (o.caDir === undefined) throw new UsageError('gen cert needs --ca-dir DIR (the folder with ca.crt and ca.key)', 'gen cert');
  const caDir = o.caDir;
  if (o.name === undefined || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(o.name)) throw new UsageError('gen cert needs --name NAME (lower-case letters, digits and -): the certificate CN, file names and context name', 'gen cert');
  const name = o.name;
  const roles = o.roles.length > 0 ? o.roles : ['os:reader'];
  const unknown = roles.filter((r) => !ROLES.includes(r));
  if (unknown.length > 0) throw new UsageError(`unknown role ${unknown.join(', ')}: use ${ROLES.join(', ')}`, 'gen cert');
  const ttl = o.ttl ?? '365d';
  const days = ttlDays(ttl);
  const read = async (f: string) => {
    try {
      return await readFile(join(caDir, f), 'utf8');
    } catch (err) {
      throw new Error(`cannot read ${join(caDir, f)}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  };
  const ca = { certPem: await read('ca.crt'), keyPem: await read('ca.key') };
  const outDir = o.out ?? caDir;
  // A proxy's certificate grants nothing by itself: it gets no client context.
  const forCosid = roles.every((r) => r === IMPERSONATOR);
  if (forCosid) return writeImpersonator(await issueClientCert(ca, { commonName: name, organizations: roles, validDays: days }), outDir, name, ttl);
  const config = await targetConfig(o.cosiconfig, outDir, name);
  // A config that cannot be read is refused before anything is written.
  const existing = config.existed ? await loadCosiConfig(config.path) : undefined;
  // The endpoints: as given, else those of the config written to, else of the CA's own config (gen pki's).
  const endpoints =
    o.endpoint !== undefined
      ? [o.endpoint]
      : (currentEndpoints(existing) ?? currentEndpoints(await loadCosiConfig(join(caDir, 'cosiconfig')).catch(() => undefined)) ?? [DEFAULT_ENDPOINT]);

  const pair = await issueClientCert(ca, { commonName: name, organizations: roles, validDays: days });
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  const certFile = join(outDir, `${name}.crt`);
  const keyFile = join(outDir, `${name}.key`);
  await writeFile(certFile, pair.certPem, { mode: 0o644 });
  await writeFile(keyFile, pair.keyPem, { mode: 0o600 });
  process.stderr.write(`wrote ${resolve(certFile)} and ${resolve(keyFile)} (${roles.join(', ')}, valid ${ttl})\n`);
  // A new config has this context as its current one; an existing one keeps its current context.
  await upsertContext(config.path, { name, endpoints, nodes: [], caPem: ca.certPem, certPem: pair.certPem, keyPem: pair.keyPem }, { makeCurrent: false });
  // A new config has the context as its current one; cosictl reads the usual one without --cosiconfig.
  const use = [...(resolve(config.path) !== resolve(defaultCosiConfigPath()) ? [`--cosiconfig ${config.path}`] : []), ...(config.existed ? [`--context ${name}`] : [])].join(' ');
  process.stderr.write(
    `${config.existed ? `added context "${name}" to ${resolve(config.path)}` : `wrote a new client config ${resolve(config.path)} with the context "${name}"`} (endpoints ${endpoints.join(', ')}; use it with ${use})\n`,
  );
  return 0;
}
