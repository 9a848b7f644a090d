// cosictl gen pki: a new CA, a server certificate and admin/reader client certificates with a cosiconfig.
import { generatePki } from '../gen-pki.js';

export interface GenOptions {
  args: string[];
  out: string | undefined;
  sans: string[];
  endpoint: string | undefined;
  force: boolean;
}

export async function runGenPki(o: GenOptions): Promise<number> {
  const [what, ...extra] = o.args;
  if (what !== 'pki' || extra.length > 0) throw new Error(`usage: cosictl gen pki --out DIR [--san HOST]... (got "gen ${o.args.join(' ')}")`);
  if (o.out === undefined) throw new Error('gen pki needs --out DIR (the folder to write ca.crt, server.crt, admin.crt, ... and cosiconfig into)');
  const files = await generatePki(o.out, { sans: o.sans, ...(o.endpoint !== undefined ? { endpoint: o.endpoint } : {}), force: o.force });
  process.stdout.write(`wrote the PKI to ${o.out}: ${Object.values(files).join(', ')}\n`);
  return 0;
}
