// cosictl gen: a new PKI (gen pki), or a client certificate from an existing CA (gen cert).
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { issueClientCert } from '../../shared/pki.js';
import { defaultCosiConfigPath, loadCosiConfig, upsertContext } from '../cosiconfig.js';
import { generatePki } from '../gen-pki.js';

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
  cosiconfig: string | undefined;
}

const ROLES = ['os:admin', 'os:operator', 'os:reader'];

export async function runGen(o: GenOptions): Promise<number> {
  const [what, ...extra] = o.args;
  if (extra.length > 0 || (what !== 'pki' && what !== 'cert')) throw new Error(`usage: cosictl gen pki --out DIR | cosictl gen cert --ca-dir DIR --name NAME --roles ROLES (got "gen ${o.args.join(' ')}")`);
  return what === 'pki' ? genPki(o) : genCert(o);
}

async function genPki(o: GenOptions): Promise<number> {
  if (o.out === undefined) throw new Error('gen pki needs --out DIR (the folder to write ca.crt, server.crt, admin.crt, ... and cosiconfig into)');
  const files = await generatePki(o.out, { sans: o.sans, ...(o.endpoint !== undefined ? { endpoint: o.endpoint } : {}), force: o.force });
  process.stdout.write(`wrote the PKI to ${o.out}: ${Object.values(files).join(', ')}\n`);
  return 0;
}

/** `30d`, `12h`, `90m` -> days (fractions allowed). */
function ttlDays(ttl: string): number {
  const m = /^(\d+)(d|h|m)$/.exec(ttl);
  if (m === null) throw new Error(`invalid --ttl ${JSON.stringify(ttl)}: use for example 30d, 12h or 90m`);
  const n = Number(m[1]);
  const days = m[2] === 'd' ? n : m[2] === 'h' ? n / 24 : n / 1440;
  if (days <= 0 || days > 3650) throw new Error(`--ttl ${ttl} must be more than 0 and at most 10 years`);
  return days;
}

async function genCert(o: GenOptions): Promise<number> {
  if (o.caDir === undefined) throw new Error('gen cert needs --ca-dir DIR (the folder with ca.crt and ca.key)');
  if (o.name === undefined || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(o.name)) throw new Error('gen cert needs --name NAME (lower-case letters, digits and -): the certificate CN, file names and context name');
  const roles = o.roles.length > 0 ? o.roles : ['os:reader'];
  const unknown = roles.filter((r) => !ROLES.includes(r));
  if (unknown.length > 0) throw new Error(`unknown role ${unknown.join(', ')}: use ${ROLES.join(', ')}`);
  const days = ttlDays(o.ttl ?? '365d');
  const read = async (f: string) => {
    try {
      return await readFile(join(o.caDir ?? '', f), 'utf8');
    } catch (err) {
      throw new Error(`cannot read ${join(o.caDir ?? '', f)}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  };
  const ca = { certPem: await read('ca.crt'), keyPem: await read('ca.key') };
  const pair = await issueClientCert(ca, { commonName: o.name, organizations: roles, validDays: days });
  const outDir = o.out ?? o.caDir;
  await writeFile(join(outDir, `${o.name}.crt`), pair.certPem, { mode: 0o644 });
  await writeFile(join(outDir, `${o.name}.key`), pair.keyPem, { mode: 0o600 });
  const configPath = o.cosiconfig ?? defaultCosiConfigPath();
  let endpoints = o.endpoint !== undefined ? [o.endpoint] : ['127.0.0.1:50000'];
  if (o.endpoint === undefined) {
    // Reuse the endpoints of the config's current context when there is one.
    const existing = await loadCosiConfig(configPath).catch(() => undefined);
    const current = existing?.contexts.get(existing.currentContext);
    if (current !== undefined) endpoints = [...current.endpoints];
  }
  await upsertContext(configPath, { name: o.name, endpoints, nodes: [], caPem: ca.certPem, certPem: pair.certPem, keyPem: pair.keyPem }, { makeCurrent: false });
  process.stdout.write(`issued ${o.name} (${roles.join(', ')}, valid ${o.ttl ?? '365d'}) into ${outDir}; added context "${o.name}" to ${configPath} (use --context ${o.name})\n`);
  return 0;
}
