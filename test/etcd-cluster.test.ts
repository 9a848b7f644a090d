// The etcd test harness itself (test/etcd/cluster.ts), through the etcd3 client over mutual TLS: the run's shared
// single-member etcd (test/etcd/global-setup.ts), and a three-member cluster of this file's own that keeps taking
// writes while one member is stopped, and takes the member back.
import { afterAll, describe, expect, inject, test } from 'vitest';
import { Etcd3, GRPCUnavailableError } from 'etcd3';
import { startEtcdCluster, type EtcdCluster, type EtcdTls } from './etcd/cluster.js';

const etcd = inject('etcd');

// The certificates name 127.0.0.1 and localhost; sending localhost as the TLS server name spares Node's warning
// about an IP address there (DEP0123).
const GRPC_OPTIONS = { 'grpc.ssl_target_name_override': 'localhost' };

const clients: Etcd3[] = [];
function client(hosts: string[], tls: EtcdTls, withCert = true): Etcd3 {
  const c = new Etcd3({
    hosts,
    credentials: withCert
      ? { rootCertificate: Buffer.from(tls.caPem), privateKey: Buffer.from(tls.keyPem), certChain: Buffer.from(tls.certPem) }
      : { rootCertificate: Buffer.from(tls.caPem) },
    grpcOptions: GRPC_OPTIONS,
  });
  clients.push(c);
  return c;
}
const deadline = (ms = 10_000) => ({ deadline: new Date(Date.now() + ms) });

let cluster: EtcdCluster | undefined;
afterAll(async () => {
  for (const c of clients) c.close();
  await cluster?.close();
});

describe.skipIf(etcd === null)('etcd test harness', () => {
  test('the shared etcd serves a client with a certificate of its CA and refuses one without', async () => {
    const { endpoints, tls } = etcd!;
    expect(endpoints).toHaveLength(1);
    expect(endpoints[0]).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const key = `harness-test/${process.pid}/${Date.now()}`;
    const good = client(endpoints, tls);
    await good.put(key).value('over mTLS').options(deadline());
    expect(await good.get(key).options(deadline()).string()).toBe('over mTLS');
    await good.delete().key(key).options(deadline());

    // The TLS handshake fails: the server requires a client certificate (--client-cert-auth).
    const anonymous = client(endpoints, tls, false);
    const refused = await anonymous.get(key).options(deadline(5_000)).string().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refused).toBeInstanceOf(GRPCUnavailableError);
    expect((refused as Error).message).toMatch(/bad certificate|certificate required/i);
  });

  test('a three-member cluster keeps taking writes with one member stopped, and takes it back', async () => {
    cluster = await startEtcdCluster({ size: 3 });
    const { endpoints, members } = cluster;
    expect(endpoints).toHaveLength(3);
    expect(new Set(endpoints).size).toBe(3);
    expect(members.map((m) => m.running)).toEqual([true, true, true]);
    const all = client(endpoints, cluster.client);
    await all.put('before').value('1').options(deadline());

    // Stop the leader: the most the cluster has to do (hand over leadership) for the rest to go on.
    const roles = await Promise.all(
      endpoints.map(async (e) => {
        const status = await client([e], cluster!.client).maintenance.status(deadline());
        return status.leader === status.header.member_id;
      }),
    );
    const stopped = roles.indexOf(true);
    expect(stopped).toBeGreaterThanOrEqual(0);
    const pidBefore = members[stopped]!.pid;
    await cluster.stop(stopped);
    expect(members[stopped]!.running).toBe(false);

    // The client's pool goes past the stopped endpoint; a client of that endpoint alone cannot connect.
    await all.put('during').value('2').options(deadline());
    const alone = client([endpoints[stopped]!], cluster.client);
    await expect(alone.get('during').options(deadline(5_000)).string()).rejects.toBeInstanceOf(GRPCUnavailableError);
    const survivors = endpoints.filter((_, i) => i !== stopped);
    expect(await client(survivors, cluster.client).get('during').options(deadline()).string()).toBe('2');

    // Back on the same data dir and ports: a linearizable read through it alone sees what was written meanwhile.
    await cluster.start(stopped);
    expect(members[stopped]!.running).toBe(true);
    expect(members[stopped]!.pid).not.toBe(pidBefore);
    const back = client([endpoints[stopped]!], cluster.client);
    expect(await back.get('during').options(deadline()).string()).toBe('2');
    expect(await back.get('before').options(deadline()).string()).toBe('1');

    await cluster.close();
    expect(members.map((m) => m.running)).toEqual([false, false, false]);
    await cluster.close(); // idempotent
  });
});
