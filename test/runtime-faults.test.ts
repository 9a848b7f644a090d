// machine.MachineService when things go wrong: the container runtime's socket missing, a runtime that accepts and
// hangs up, speaks garbage or never answers, a real containerd that goes away and comes back; and the log files
// themselves: a 1 MiB line, binary bytes, truncation and a vanishing directory mid-follow, a follower that stops
// reading. Each is answered with a documented status and cosid keeps serving the State API meanwhile. And the
// service's own bounds: open Logs streams per connection, and the audit line of each call.
import * as grpc from '@grpc/grpc-js';
import { appendFile, mkdir, mkdtemp, open, rm, truncate, writeFile, type FileHandle } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connect, isCosiError, type CosiClient } from '../client/index.js';
import { reconcileStaticPods } from '../server/controllers/static-pods.js';
import { Cosid, type CosidOptions } from '../server/cosid.js';
import { createLogger, silentLogger } from '../shared/log.js';
import { issueClientCert } from '../shared/pki.js';
import { machineWire } from '../shared/wire.js';
import { eventually, makePki, pod, podStatus, STATUSES, TEST_OWNER, type TestPki } from './harness.js';

const cri = inject('cri');
const KiB = 1024;
const MiB = 1024 * KiB;

interface Node {
  cosid: Cosid;
  endpoint: string;
  client: CosiClient;
  close(): Promise<void>;
}

let pki: TestPki;
let dir: string;
const nodes: Node[] = [];

beforeAll(async () => {
  pki = await makePki();
  // Short: unix socket paths are limited to ~107 bytes.
  dir = await mkdtemp(join(tmpdir(), 'cosi-rtf-'));
});
afterAll(async () => {
  for (const n of nodes) await n.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  if (pki !== undefined) await rm(pki.dir, { recursive: true, force: true });
});

/** A cosid with the given runtime, a static pod and its status in its store (so there is something to Get). */
async function startCosid(runtime: { criEndpoint: string; podLogsDir: string; kubeletLog?: string }, opts: Partial<CosidOptions> = {}): Promise<Node> {
  const cosid = await Cosid.start({
    listen: '127.0.0.1:0',
    tls: { caPem: pki.ca.certPem, certPem: pki.server.certPem, keyPem: pki.server.keyPem },
    nodeName: 'faulty-node',
    shutdownGraceMs: 1000,
    runtime,
    ...opts,
  });
  await reconcileStaticPods(cosid.store, [{ id: 'default-nginx', pod: pod('nginx'), origin: 'test' }], silentLogger);
  await cosid.store.create({ ...STATUSES, id: 'default/nginx-faulty-node', spec: podStatus(true) }, TEST_OWNER);
  const endpoint = `127.0.0.1:${cosid.port}`;
  const client = connect({ endpoint, caPem: pki.ca.certPem, certPem: pki.admin.certPem, keyPem: pki.admin.keyPem });
  const node: Node = {
    cosid,
    endpoint,
    client,
    async close() {
      client.close();
      await cosid.stop();
    },
  };
  nodes.push(node);
  return node;
}

async function caught<T>(p: Promise<T>): Promise<unknown> {
  return p.then(
    (v) => new Error(`expected a failure, got ${JSON.stringify(v)}`),
    (e: unknown) => e,
  );
}

async function collect(it: AsyncIterable<Buffer>, until: (data: Buffer) => boolean = () => false): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of it) {
    chunks.push(c);
    if (until(Buffer.concat(chunks))) break;
  }
  return Buffer.concat(chunks);
}

/** The State API answers: the static pod and its status, by Get and by List. */
async function stateApiWorks(client: CosiClient): Promise<void> {
  expect((await client.get('staticpods', 'default-nginx')).metadata.id).toBe('default-nginx');
  expect((await client.get('staticpodstatus', 'default/nginx-faulty-node')).metadata.id).toBe('default/nginx-faulty-node');
  expect((await client.list('staticpods')).map((r) => r.metadata.id)).toEqual(['default-nginx']);
}

/** Counts what every FileHandle in this process reads (cosid runs in-process: its log reads included). */
async function countReads(): Promise<{ bytes: () => number; restore: () => void }> {
  const probe = await open(join(dir, '.probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { read: FileHandle['read'] };
  await probe.close();
  const original = proto.read;
  let bytes = 0;
  proto.read = async function (this: FileHandle, ...args: unknown[]) {
    const r = await (original as (...a: unknown[]) => Promise<{ bytesRead: number }>).apply(this, args);
    bytes += r.bytesRead;
    return r;
  } as FileHandle['read'];
  return { bytes: () => bytes, restore: () => void (proto.read = original) };
}

/** Resolves once `value()` has not changed for `quietMs` (bounded by `ms`). */
async function settled(value: () => number, quietMs = 1000, ms = 30_000): Promise<number> {
  const deadline = Date.now() + ms;
  let last = value();
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error(`still changing after ${ms} ms: ${value()}`);
    await new Promise((r) => setTimeout(r, 100));
    const v = value();
    if (v !== last) {
      last = v;
      since = Date.now();
    }
  }
  return last;
}

describe('the container runtime unavailable', () => {
  it('its socket missing: Containers and Logs are UNAVAILABLE naming the socket; the State API and the kubelet log keep working', async () => {
    const socket = join(dir, 'missing.sock');
    const kubeletLog = join(dir, 'kubelet-missing.log');
    await writeFile(kubeletLog, 'kubelet line 1\nkubelet line 2\n');
    const n = await startCosid({ criEndpoint: `unix://${socket}`, podLogsDir: join(dir, 'pods-missing'), kubeletLog });
    for (let round = 0; round < 3; round++) {
      const [containers, logs, followed] = await Promise.all([
        caught(n.client.containers()),
        caught(collect(n.client.logs('default/x-1:c'))),
        caught(collect(n.client.logs('default/x-1:c:0123abcd', { follow: true, tailLines: 10 }))),
        stateApiWorks(n.client),
      ]);
      for (const err of [containers, logs, followed]) {
        expect(isCosiError(err, 'unavailable'), String(err)).toBe(true);
        expect(String(err)).toContain(socket);
      }
    }
    // Answered by cosid itself, so no "is cosid running" hint.
    const err = await caught(n.client.containers());
    expect(String(err)).not.toContain('is cosid running');
    // What needs no runtime still works: refusing a bad ID (before the runtime is asked), the kubelet's log.
    const bad = [
      'default/../../etc:passwd', 'default/x:../../etc/passwd', '../default/x:y', 'default/x\u0000:y', 'default/%2e%2e:y', 'default/x:y/../z',
      'default/x\\y:c', 'default/\uFF0E\uFF0E:c', 'default/x\u2215y:c', 'Default/x:y', 'default/x:y:ZZ', 'default/.x:y', 'default/x.:y',
      `default/${'a'.repeat(64)}.b:c`, `${'a'.repeat(64)}/x:y`, `default/x:${'a'.repeat(64)}`, `default/x:y:${'f'.repeat(65)}`,
      `default/${'a.'.repeat(200)}a:c`, '', '/etc/passwd',
    ];
    for (const id of bad) {
      const e = await caught(collect(n.client.logs(id)));
      expect(isCosiError(e, 'invalid-argument'), `${JSON.stringify(id)}: ${String(e)}`).toBe(true);
    }
    expect((await collect(n.client.logs('kubelet', { tailLines: 1 }))).toString()).toBe('kubelet line 2\n');
    // Readers may call it (and get the same answer); a certificate without a role may not.
    const reader = connect({ endpoint: n.endpoint, caPem: pki.ca.certPem, certPem: pki.reader.certPem, keyPem: pki.reader.keyPem });
    const nobodyCert = await issueClientCert(pki.ca, { commonName: 'nobody', organizations: ['someone'] });
    const nobody = connect({ endpoint: n.endpoint, caPem: pki.ca.certPem, certPem: nobodyCert.certPem, keyPem: nobodyCert.keyPem });
    try {
      expect(isCosiError(await caught(reader.containers()), 'unavailable')).toBe(true);
      expect(isCosiError(await caught(nobody.containers()), 'permission-denied')).toBe(true);
      expect(isCosiError(await caught(collect(nobody.logs('kubelet'))), 'permission-denied')).toBe(true);
    } finally {
      reader.close();
      nobody.close();
    }
    await stateApiWorks(n.client);
  });

  it('a broken runtime (hangs up at once, speaks garbage, never answers): UNAVAILABLE or INTERNAL, never a crash; Gets served meanwhile', async () => {
    const sockets: Socket[] = [];
    const serve = async (name: string, onConnection: (s: Socket) => void): Promise<{ path: string; server: Server }> => {
      const path = join(dir, `${name}.sock`);
      const server = createServer((s) => {
        sockets.push(s);
        s.on('error', () => {});
        onConnection(s);
      });
      await new Promise<void>((r) => server.listen(path, () => r()));
      return { path, server };
    };
    const runtimes = [
      await serve('hangup', (s) => s.destroy()),
      await serve('garbage', (s) => s.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\u0000\u00ff garbage')),
      // Accepts and reads, says nothing: the CRI client's deadline (10 s) ends each call.
      await serve('silent', () => {}),
    ];
    try {
      const cosids = await Promise.all(runtimes.map((r) => startCosid({ criEndpoint: `unix://${r.path}`, podLogsDir: join(dir, 'pods-broken') })));
      const answers = cosids.map((n) => Promise.all([caught(n.client.containers()), caught(collect(n.client.logs('default/x-1:c')))]));
      // While the runtimes misbehave (the silent one for seconds), every cosid serves the State API.
      let gets = 0;
      let pending = true;
      const all = Promise.all(answers).finally(() => (pending = false));
      while (pending) {
        await Promise.all(cosids.map((n) => stateApiWorks(n.client)));
        gets++;
      }
      const results = await all;
      expect(gets).toBeGreaterThan(2);
      results.forEach((errs, i) => {
        for (const err of errs) {
          expect(isCosiError(err) && (err.kind === 'unavailable' || err.kind === 'internal'), `${runtimes[i]?.path}: ${String(err)}`).toBe(true);
          expect(String(err)).toContain(runtimes[i]?.path ?? '');
        }
      });
      for (const n of cosids) await stateApiWorks(n.client);
    } finally {
      for (const s of sockets) s.destroy();
      for (const r of runtimes) await new Promise<void>((resolve) => r.server.close(() => resolve()));
    }
  });
});

const describeCri = cri === null ? describe.skip : describe;

describeCri('a real containerd that goes away and comes back', () => {
  it('UNAVAILABLE naming the socket while it is gone, the State API served throughout, containers again once it is back', async () => {
    if (cri === null) return;
    // A unix-socket proxy in front of the shared containerd: "containerd goes away" without stopping it.
    const target = cri.endpoint.replace(/^unix:\/\//, '');
    const proxyPath = join(dir, 'ctrd-proxy.sock');
    const conns = new Set<Socket>();
    const proxy = createServer((c) => {
      const up = createConnection(target);
      conns.add(c).add(up);
      c.pipe(up);
      up.pipe(c);
      const drop = () => {
        c.destroy();
        up.destroy();
        conns.delete(c);
        conns.delete(up);
      };
      for (const s of [c, up]) {
        s.on('error', drop);
        s.on('close', drop);
      }
    });
    const listen = () => new Promise<void>((r) => proxy.listen(proxyPath, () => r()));
    await listen();
    const n = await startCosid({ criEndpoint: `unix://${proxyPath}`, podLogsDir: join(dir, 'pods-ctrd') });
    try {
      // Up: the runtime's list (whatever the other test files run there right now).
      expect(Array.isArray(await n.client.containers())).toBe(true);
      // Gone: the socket closed and removed, every connection cut.
      await new Promise<void>((r) => {
        proxy.close(() => r());
        for (const s of conns) s.destroy();
      });
      await rm(proxyPath, { force: true });
      for (let i = 0; i < 3; i++) {
        const [err] = await Promise.all([caught(n.client.containers()), stateApiWorks(n.client)]);
        expect(isCosiError(err, 'unavailable'), String(err)).toBe(true);
        expect(String(err)).toContain(proxyPath);
        const logsErr = await caught(collect(n.client.logs('default/x-1:c')));
        expect(isCosiError(logsErr, 'unavailable'), String(logsErr)).toBe(true);
      }
      // Back: the same cosid reconnects by itself.
      await listen();
      const listed = await eventually(() => n.client.containers(), 30_000);
      expect(Array.isArray(listed)).toBe(true);
      await stateApiWorks(n.client);
    } finally {
      proxy.close();
      for (const s of conns) s.destroy();
    }
  });
});

describe('hostile log files, through the service (the kubelet log: no runtime needed)', () => {
  let n: Node;
  let logDir: string;
  let kubeletLog: string;
  beforeAll(async () => {
    logDir = join(dir, 'kubelet');
    kubeletLog = join(logDir, 'kubelet.log');
    await mkdir(logDir, { recursive: true });
    await writeFile(kubeletLog, '');
    n = await startCosid({ criEndpoint: `unix://${join(dir, 'none.sock')}`, podLogsDir: join(dir, 'pods-hostile'), kubeletLog });
  });

  it('a 1 MiB line and binary lines: served in chunks of at most 64 KiB, byte-identical', async () => {
    const content = Buffer.concat([
      Buffer.from('before\n'),
      Buffer.alloc(MiB, 'x'),
      Buffer.from('\n'),
      Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
      Buffer.from([0x0a, 0x00, 0xff, 0xfe, 0xc3, 0x28, 0x0a]),
      Buffer.from('no final newline \u0000'),
    ]);
    await writeFile(kubeletLog, content);
    const chunks: Buffer[] = [];
    for await (const c of n.client.logs('kubelet')) chunks.push(c);
    expect(Buffer.concat(chunks).equals(content)).toBe(true);
    for (const c of chunks) expect(c.length).toBeLessThanOrEqual(64 * KiB);
    await stateApiWorks(n.client);
  });

  it('truncated while followed: the stream carries on from the new start', async () => {
    await writeFile(kubeletLog, Array.from({ length: 30 }, (_, i) => `old ${i}\n`).join(''));
    const abort = new AbortController();
    let text = '';
    let wake = () => {};
    const follower = (async () => {
      for await (const c of n.client.logs('kubelet', { follow: true, tailLines: -1, signal: abort.signal })) {
        text += c.toString('latin1');
        wake();
      }
    })();
    const until = (pred: () => boolean, what: string) =>
      eventually(async () => {
        if (!pred()) {
          await new Promise<void>((r) => {
            wake = r;
            setTimeout(r, 200);
          });
          if (!pred()) throw new Error(`not yet ${what}: ${JSON.stringify(text.slice(-200))}`);
        }
      }, 20_000);
    try {
      await until(() => text.includes('old 29\n'), 'the old lines');
      await truncate(kubeletLog, 0);
      await appendFile(kubeletLog, 'new 0\n');
      await until(() => text.endsWith('new 0\n'), 'the first new line');
      await appendFile(kubeletLog, 'new 1\nnew 2\n');
      await until(() => text.endsWith('new 2\n'), 'the new lines');
      expect(text).toBe(`${Array.from({ length: 30 }, (_, i) => `old ${i}\n`).join('')}new 0\nnew 1\nnew 2\n`);
    } finally {
      abort.abort();
      await follower;
    }
  });

  it('its directory removed mid-follow: the stream ends normally', async () => {
    await writeFile(kubeletLog, 'last words\n');
    const stream = n.client.logs('kubelet', { follow: true, tailLines: -1 });
    // Once the follower has its file open (it answered the first line), the directory goes.
    const first = await stream.next();
    expect(first.value?.toString()).toBe('last words\n');
    await rm(logDir, { recursive: true });
    const rest = collect({ [Symbol.asyncIterator]: () => stream });
    const ended = await Promise.race([rest, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the follow did not end')), 30_000).unref())]);
    expect(ended.length).toBe(0);
    // Gone for good: a new call is NOT_FOUND; cosid serves on.
    expect(isCosiError(await caught(collect(n.client.logs('kubelet'))), 'not-found')).toBe(true);
    await stateApiWorks(n.client);
    await mkdir(logDir, { recursive: true });
  });

  it('a kubelet log under a file, or a directory: NOT_FOUND and INVALID_ARGUMENT, not INTERNAL', async () => {
    const notDir = join(dir, 'plain-file');
    await writeFile(notDir, 'not a directory');
    const under = await startCosid({ criEndpoint: `unix://${join(dir, 'none.sock')}`, podLogsDir: join(dir, 'pods-hostile'), kubeletLog: join(notDir, 'kubelet.log') });
    const err = await caught(collect(under.client.logs('kubelet')));
    expect(isCosiError(err, 'not-found'), String(err)).toBe(true);
    const isDir = await startCosid({ criEndpoint: `unix://${join(dir, 'none.sock')}`, podLogsDir: join(dir, 'pods-hostile'), kubeletLog: dir });
    const err2 = await caught(collect(isDir.client.logs('kubelet')));
    expect(isCosiError(err2, 'invalid-argument'), String(err2)).toBe(true);
  });

  it('a follower that stops reading: cosid stops reading the file (bounded by the flow-control window and the write queue)', async () => {
    // 200 MiB (sparse), then lines: far more than any buffer on the way.
    const size = 200 * MiB;
    const fh = await open(kubeletLog, 'w');
    await fh.truncate(size);
    await fh.write('\nthe end\n', size);
    await fh.close();
    const reads = await countReads();
    const raw = new grpc.Client(n.endpoint, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(pki.admin.keyPem), Buffer.from(pki.admin.certPem)));
    const paused: { call: grpc.ClientReadableStream<Buffer>; received: () => number }[] = [];
    try {
      // A raw client with grpc-js's default window (64 KiB), and the library's client (8 MiB window): both stop after
      // the first message.
      const open1 = (c: grpc.Client) => {
        const req = { namespace: 'system', id: 'kubelet', driver: 0, follow: true, tailLines: -1 };
        const call = c.makeServerStreamRequest('/machine.MachineService/Logs', (v: typeof req) => Buffer.from(machineWire.logsRequest.encode(v)), (b: Buffer) => b, req);
        let received = 0;
        call.on('data', (b: Buffer) => {
          received += b.length;
          call.pause();
        });
        call.on('error', () => {});
        paused.push({ call, received: () => received });
      };
      open1(raw);
      await eventually(() => expect(paused[0]?.received()).toBeGreaterThan(0), 20_000);
      const rawBound = await settled(reads.bytes);
      const libraryGen = n.client.logs('kubelet', { follow: true, tailLines: -1 });
      const firstLib = await libraryGen.next();
      expect(firstLib.done).toBe(false);
      const bothBound = await settled(reads.bytes);
      process.stderr.write(`paused followers: cosid read ${(rawBound / MiB).toFixed(1)} MiB for a 64 KiB-window client, ${((bothBound - rawBound) / MiB).toFixed(1)} MiB more for an 8 MiB-window client, of a ${size / MiB} MiB file\n`);
      expect(rawBound).toBeLessThan(8 * MiB);
      expect(bothBound - rawBound).toBeLessThan(24 * MiB);
      // cosid serves on, and a paused stream delivers again once resumed.
      await stateApiWorks(n.client);
      const p0 = paused[0];
      if (p0 === undefined) throw new Error('no raw follower');
      p0.call.removeAllListeners('data');
      let more = 0;
      const flowing = new Promise<void>((resolve) => {
        p0.call.on('data', (b: Buffer) => {
          more += b.length;
          if (more > 16 * MiB) resolve();
        });
      });
      p0.call.resume();
      await flowing;
      // Cancelled: cosid stops reading at once (far from the end of the file).
      p0.call.cancel();
      await libraryGen.return(undefined);
      const final = await settled(reads.bytes);
      expect(final).toBeLessThan(size / 2);
    } finally {
      for (const p of paused) p.call.cancel();
      raw.close();
      reads.restore();
      await writeFile(kubeletLog, '');
    }
  });
});

describe('bounds of machine.MachineService (the kubelet log: no runtime needed)', () => {
  /** A raw follow of the kubelet log on `c`'s connection: its first message and its final status, as events. */
  const followKubelet = (c: grpc.Client) => {
    const req = { namespace: 'system', id: 'kubelet', driver: 0, follow: true, tailLines: 1 };
    const call = c.makeServerStreamRequest('/machine.MachineService/Logs', (v: typeof req) => Buffer.from(machineWire.logsRequest.encode(v)), (b: Buffer) => b, req);
    call.on('error', () => {});
    const firstData = new Promise<void>((resolve) => call.once('data', () => resolve()));
    const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
    /** 'streaming' once it delivers, or the status it ended with first. */
    const outcome = Promise.race([firstData.then(() => 'streaming' as const), status]);
    return { call, firstData, status, outcome };
  };
  /** A connection of its own: grpc-js otherwise shares one between clients of the same target and options. */
  const newConnection = (endpoint: string) =>
    new grpc.Client(endpoint, grpc.credentials.createSsl(Buffer.from(pki.ca.certPem), Buffer.from(pki.admin.keyPem), Buffer.from(pki.admin.certPem)), { 'grpc.use_local_subchannel_pool': 1 });

  it('the 65th concurrent Logs stream on one connection is RESOURCE_EXHAUSTED; another connection is not; a cancelled stream gives its slot back', async () => {
    const kubeletLog = join(dir, 'kubelet-limit.log');
    await writeFile(kubeletLog, 'kubelet line 1\nkubelet line 2\n');
    const n = await startCosid({ criEndpoint: `unix://${join(dir, 'none.sock')}`, podLogsDir: join(dir, 'pods-limit'), kubeletLog });
    const conn = newConnection(n.endpoint);
    const other = newConnection(n.endpoint);
    const followers: ReturnType<typeof followKubelet>[] = [];
    try {
      for (let i = 0; i < 64; i++) followers.push(followKubelet(conn));
      // Every one of them counted: each has streamed its first line.
      await Promise.all(followers.map((f) => f.firstData));
      const refused = followKubelet(conn);
      followers.push(refused);
      const st = await refused.status;
      expect(grpc.status[st.code]).toBe('RESOURCE_EXHAUSTED');
      expect(st.details).toBe('too many log streams on this connection (limit 64); close some or open another connection');
      // The limit is per connection: another one streams.
      const elsewhere = followKubelet(other);
      followers.push(elsewhere);
      expect(await elsewhere.outcome).toBe('streaming');
      // One cancelled: once cosid has seen the cancellation, a new stream on the same connection gets its slot.
      const first = followers[0];
      if (first === undefined) throw new Error('no follower');
      first.call.cancel();
      expect(grpc.status[(await first.status).code]).toBe('CANCELLED');
      const again = await eventually(async () => {
        const f = followKubelet(conn);
        followers.push(f);
        const outcome = await f.outcome;
        if (outcome !== 'streaming') throw new Error(`not yet given back: ${grpc.status[outcome.code]} ${outcome.details}`);
        return f;
      }, 20_000);
      expect(again).toBeDefined();
      // ... and only that one: the connection is full again.
      const full = followKubelet(conn);
      followers.push(full);
      expect(grpc.status[(await full.status).code]).toBe('RESOURCE_EXHAUSTED');
      await stateApiWorks(n.client);
    } finally {
      for (const f of followers) f.call.cancel();
      conn.close();
      other.close();
    }
  });

  it('--audit: one line per Containers and Logs call (peer, roles, method, namespace and id, outcome, duration)', async () => {
    const kubeletLog = join(dir, 'kubelet-audit.log');
    await writeFile(kubeletLog, 'kubelet line 1\nkubelet line 2\n');
    const lines: string[] = [];
    const n = await startCosid({ criEndpoint: `unix://${join(dir, 'none.sock')}`, podLogsDir: join(dir, 'pods-audit'), kubeletLog }, { audit: true, log: createLogger({ write: (l) => lines.push(l) }) });
    const audit = () => lines.filter((l) => l.includes('"msg":"audit"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect((await collect(n.client.logs('kubelet', { tailLines: 1 }))).toString()).toBe('kubelet line 2\n');
    expect(isCosiError(await caught(collect(n.client.logs('default/x-1:c'))), 'unavailable')).toBe(true);
    expect(isCosiError(await caught(n.client.containers()), 'unavailable')).toBe(true);
    const admin = { peer: expect.stringContaining('O=os:admin'), roles: ['os:admin'], durationMs: expect.any(Number) };
    // Recorded before the answer goes out: there when the client has it.
    expect(audit()).toEqual(
      expect.arrayContaining([
        { ...admin, ts: expect.any(String), level: 'info', msg: 'audit', method: 'Logs', namespace: 'system', id: 'kubelet', outcome: 'OK' },
        { ...admin, ts: expect.any(String), level: 'info', msg: 'audit', method: 'Logs', namespace: 'k8s.io', id: 'default/x-1:c', outcome: 'UNAVAILABLE' },
        { ...admin, ts: expect.any(String), level: 'info', msg: 'audit', method: 'Containers', namespace: 'k8s.io', outcome: 'UNAVAILABLE' },
      ]),
    );
    // A follow the client cancels: CANCELLED, once cosid has seen it go.
    const follower = n.client.logs('kubelet', { follow: true, tailLines: 1 });
    expect((await follower.next()).done).toBe(false);
    await follower.return(undefined);
    await eventually(() => expect(audit().filter((a) => a['method'] === 'Logs' && a['outcome'] === 'CANCELLED')).toHaveLength(1), 20_000);
    expect(audit().filter((a) => a['method'] === 'Logs')).toHaveLength(3);
  });
});

describe('a graceful stop', () => {
  it('ends an open follow at once with UNAVAILABLE "shutting down" (it does not wait out the grace period)', async () => {
    const kubeletLog = join(dir, 'kubelet-stop.log');
    await writeFile(kubeletLog, 'before the stop\n');
    // A grace period far longer than the test's patience: the stop must not need it.
    const n = await startCosid({ criEndpoint: `unix://${join(dir, 'none-stop.sock')}`, podLogsDir: join(dir, 'pods-stop'), kubeletLog }, { shutdownGraceMs: 60_000 });
    const follower = n.client.logs('kubelet', { follow: true, tailLines: -1 });
    expect((await follower.next()).value?.toString()).toBe('before the stop\n');
    const ended = follower.next().then(
      () => new Error('the follow ended without an error'),
      (err: unknown) => err,
    );
    await n.cosid.stop();
    const err = await ended;
    expect(isCosiError(err, 'unavailable'), String(err)).toBe(true);
    expect(String(err)).toContain('cosid is shutting down');
  });
});
