// A protocol fuzzer for the State API and machine.MachineService (Containers, Logs): random and mutated protobuf
// bytes to every method through a raw grpc-js client (its own identity serializer), and structurally valid but wild
// requests from a property-based generator. Every answer must be a status the API documents; INTERNAL or UNKNOWN (or
// no answer) is a finding, and so is a Logs answer carrying the canary (text of a file outside the pod logs directory).
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { codecFor, LabelOp } from '../../shared/wire.js';

export interface FuzzTarget {
  endpoint: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface MachineFuzzOptions {
  /** Text of a file outside the pod logs directory: no Logs answer may ever carry it. */
  canary?: string;
  /** Container IDs the runtime knows, used as they are and mutated. */
  ids?: string[];
  /** Share of the calls that go to machine.MachineService (default 0.35). */
  share?: number;
}

export interface FuzzReport {
  calls: number;
  byCode: Record<string, number>;
  /** Codes per method (`State/Get`, `MachineService/Logs`, ...). */
  byMethod: Record<string, Record<string, number>>;
  /** Logs calls that answered with at least one message (each checked for the canary). */
  logsWithData: number;
  /** Calls answered with a status the API never documents (or not at all). */
  findings: { method: string; code: string; details: string; input: string }[];
}

const METHODS = [
  ['Get', 'GetRequest', false],
  ['List', 'ListRequest', true],
  ['Watch', 'WatchRequest', true],
  ['Create', 'CreateRequest', false],
  ['Update', 'UpdateRequest', false],
  ['Destroy', 'DestroyRequest', false],
  ['Teardown', 'TeardownRequest', false],
  ['TeardownAndDestroy', 'TeardownAndDestroyRequest', false],
] as const;

const DOCUMENTED = new Set<number>([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.OUT_OF_RANGE,
  grpc.status.UNIMPLEMENTED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.RESOURCE_EXHAUSTED,
  // The fuzzer itself cancels streams it has seen enough of.
  grpc.status.CANCELLED,
]);

/**
 * What machine.MachineService answers (CANCELLED and DEADLINE_EXCEEDED: the fuzzer ends follows itself;
 * RESOURCE_EXHAUSTED: too many Logs streams on one connection).
 */
const MACHINE_DOCUMENTED = new Set<number>([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.UNAVAILABLE,
  grpc.status.UNIMPLEMENTED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.CANCELLED,
  grpc.status.DEADLINE_EXCEEDED,
]);

/** mulberry32: a small, good-enough seeded PRNG (shared with the history test). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const kinds = [
  { namespace: 'k8s', type: 'StaticPods.kubernetes.talos.dev' },
  { namespace: 'k8s', type: 'StaticPodStatuses.kubernetes.talos.dev' },
  { namespace: 'meta', type: 'ResourceDefinitions.meta.cosi.dev' },
];

/** Structurally valid but wild requests: huge or odd strings, many terms, pathological regexps, odd numbers. */
const wildString = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.constantFrom('', 'k8s', 'meta', 'StaticPods.kubernetes.talos.dev', '\u0000', '\uFFFD', 'a'.repeat(5000), '../../etc/passwd'),
);
const regexp = fc.oneof(
  fc.string({ maxLength: 32 }),
  fc.constantFrom('(a+)+$', '^(a|a?)+$', '(?=x)', '\\1', '[', 'a{1000}{1000}', '(((((((((())))))))))', '.*'.repeat(500), 'x'.repeat(5000), '\\pL+', '(?i)STATIC'),
);
const term = fc.record({
  key: wildString,
  op: fc.integer({ min: -1, max: 12 }).map((n) => n as LabelOp),
  value: fc.array(wildString, { maxLength: 4 }),
  invert: fc.boolean(),
});
const labelQuery = fc.record({ terms: fc.array(term, { maxLength: 300 }) });
const kind = fc.oneof(fc.constantFrom(...kinds), fc.record({ namespace: wildString, type: wildString }));
const bookmark = fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constant(new Uint8Array([1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])));
const int32 = fc.oneof(fc.integer({ min: -2147483648, max: 2147483647 }), fc.constantFrom(0, 1, -1, 100_001, 2147483647));

const wildRequests: Record<string, fc.Arbitrary<Record<string, unknown>>> = {
  GetRequest: fc.record({ namespace: wildString, type: wildString, id: wildString }).chain((r) => kind.map((k) => ({ ...r, ...k }))),
  ListRequest: fc.tuple(kind, fc.array(labelQuery, { maxLength: 80 }), regexp).map(([k, lq, re]) => ({ ...k, options: { labelQuery: lq, idQuery: { regexp: re } } })),
  WatchRequest: fc
    .tuple(kind, fc.option(wildString), fc.array(labelQuery, { maxLength: 3 }), regexp, int32, fc.boolean(), fc.boolean(), fc.option(bookmark), fc.boolean(), int32)
    .map(([k, id, lq, re, tail, boot, agg, bm, bb, api]) => ({
      ...k,
      ...(id !== null ? { id } : {}),
      apiVersion: api,
      options: { bootstrapContents: boot, tailEvents: tail, labelQuery: lq, idQuery: { regexp: re }, aggregated: agg, bootstrapBookmark: bb, ...(bm !== null ? { startFromBookmark: bm } : {}) },
    })),
};

// IDs built from the pieces path tricks are made of, and known IDs with those pieces spliced in.
const idPiece = fc.constantFrom(
  '..', '.', '/', '//', '\\', ':', '::', '\u0000', '%2e', '%2e%2e', '%2f', '%00', '~', ' ', '\n', '\t', '*', '?',
  '\u2215', '\u2044', '\uFF0E', '\uFF0F', '\u202E', '\uFFFD', 'é', 'ａ', 'A', '-', '_',
  'default', 'kube-system', 'kubelet', 'etc', 'passwd', 'proc', 'self', 'fd', '0.log', 'var', 'log', 'pods',
  'a'.repeat(63), 'a'.repeat(64), '0123456789ab', 'f'.repeat(64), 'f'.repeat(65),
);
function wildId(known: readonly string[]): fc.Arbitrary<string> {
  const base = known.length > 0 ? fc.constantFrom(...known) : fc.constant('default/nginx:nginx');
  const spliced = fc.tuple(base, fc.array(fc.tuple(fc.nat(), idPiece, fc.nat(3)), { minLength: 1, maxLength: 4 })).map(([id, edits]) => {
    let out = id;
    for (const [at, piece, drop] of edits) {
      const i = at % (out.length + 1);
      out = out.slice(0, i) + piece + out.slice(i + drop);
    }
    return out;
  });
  return fc.oneof(
    { arbitrary: base, weight: 4 },
    { arbitrary: spliced, weight: 4 },
    fc.array(idPiece, { maxLength: 12 }).map((a) => a.join('')),
    fc.string(),
    fc.string({ unit: 'binary', maxLength: 64 }),
    fc.string({ unit: 'grapheme', maxLength: 32 }),
    fc.constantFrom(
      '', 'kubelet', '../../../../etc/passwd', '/etc/passwd', 'default/../../etc:passwd', 'default/x:../../etc/passwd',
      'default/x\u0000:y', 'default/%2e%2e:y', 'default/x:y:' + 'a'.repeat(64), 'a'.repeat(401), 'default/' + 'a.'.repeat(190) + 'a:c',
      'default/' + 'a'.repeat(64) + ':c', 'Default/X:Y', 'default/x:y:ZZ', 'default/x:y:', 'default/:y', '/x:y', 'default/x',
    ),
  );
}
const machineNamespace = fc.oneof(
  { arbitrary: fc.constant('k8s.io'), weight: 6 },
  { arbitrary: fc.constant('system'), weight: 2 },
  fc.constantFrom('', 'K8S.IO', 'k8s.io\u0000', 'cri', 'default', '..'),
  fc.string({ maxLength: 16 }),
);
const driver = fc.oneof(fc.constantFrom(0, 1), fc.integer({ min: -3, max: 5 }));
const tailLines = fc.oneof(fc.integer({ min: -2147483648, max: 2147483647 }), fc.constantFrom(0, -1, 1, 3, 1000, 2147483647, -2147483648));

function machineRequests(known: readonly string[]): Record<string, fc.Arbitrary<Record<string, unknown>>> {
  return {
    ContainersRequest: fc.record({ namespace: machineNamespace, driver }),
    LogsRequest: fc.record({ namespace: machineNamespace, id: wildId(known), driver, follow: fc.boolean(), tailLines }),
  };
}

function mutate(bytes: Uint8Array, rand: () => number): Buffer {
  const b = Buffer.from(bytes);
  const out = [...b];
  const n = 1 + Math.floor(rand() * 4);
  for (let i = 0; i < n; i++) {
    const r = rand();
    const at = Math.floor(rand() * (out.length + 1));
    if (r < 0.3 && out.length > 0) out[at % out.length] = Math.floor(rand() * 256);
    else if (r < 0.5) out.splice(at, 0, Math.floor(rand() * 256));
    else if (r < 0.7) out.splice(at, Math.floor(rand() * 8));
    else if (r < 0.85) out.splice(at, 0, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f); // an absurd length prefix
    else out.length = Math.floor(rand() * out.length);
  }
  return Buffer.from(out);
}

interface CallOptions {
  /** Cancel after this long (a healthy watch never ends by itself: seeing it answer is enough). */
  cancelAfterMs?: number;
  /** A deadline on the call. */
  deadlineMs?: number;
  onData?: (b: Buffer) => void;
}

/** Calls one method with raw bytes; resolves with the final status (streams are cancelled after a few messages). */
function call(client: grpc.Client, path: string, streaming: boolean, body: Buffer, opts: CallOptions = {}): Promise<grpc.StatusObject | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 10_000);
    const done = (st: grpc.StatusObject | undefined) => {
      clearTimeout(timer);
      resolve(st);
    };
    const callOpts: grpc.CallOptions = opts.deadlineMs !== undefined ? { deadline: Date.now() + opts.deadlineMs } : {};
    if (!streaming) {
      const c = client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, body, new grpc.Metadata(), callOpts, (_err, res) => {
        if (res !== undefined) opts.onData?.(res);
      });
      c.on('status', done);
      return;
    }
    const c = client.makeServerStreamRequest(path, (b: Buffer) => b, (b: Buffer) => b, body, new grpc.Metadata(), callOpts);
    let messages = 0;
    c.on('data', (b: Buffer) => {
      opts.onData?.(b);
      if (++messages >= 3) c.cancel();
    });
    c.on('error', () => {});
    c.on('status', done);
    setTimeout(() => c.cancel(), opts.cancelAfterMs ?? 150).unref();
  });
}

interface Planned {
  /** `State/Get`, `MachineService/Logs`, ... */
  method: string;
  path: string;
  streaming: boolean;
  body: Buffer;
  input: string;
  documented: ReadonlySet<number>;
  options: CallOptions;
}

export async function runFuzz(
  target: FuzzTarget,
  opts: { durationMs: number; seed: number; concurrency?: number; onProgress?: (r: FuzzReport) => void; machine?: MachineFuzzOptions; state?: boolean },
): Promise<FuzzReport> {
  const rand = prng(opts.seed);
  const client = new grpc.Client(target.endpoint, grpc.credentials.createSsl(Buffer.from(target.caPem), Buffer.from(target.keyPem), Buffer.from(target.certPem)), {
    'grpc.max_send_message_length': 4 << 20,
  });
  const report: FuzzReport = { calls: 0, byCode: {}, byMethod: {}, logsWithData: 0, findings: [] };
  const seeds = new Map<string, Uint8Array[]>();
  for (const [, type] of METHODS) {
    const codec = codecFor(`cosi.resource.${type}`);
    seeds.set(type, [codec.encode({ ...kinds[0], id: 'default-nginx' }), codec.encode({ ...kinds[1], options: {} })]);
  }
  const machine = opts.machine;
  const knownIds = machine?.ids ?? [];
  const machineGen = machineRequests(knownIds);
  const containersCodec = codecFor('machine.ContainersRequest');
  const logsCodec = codecFor('machine.LogsRequest');
  seeds.set('ContainersRequest', [containersCodec.encode({ namespace: 'k8s.io', driver: 1 }), containersCodec.encode({ namespace: 'system', driver: 0 })]);
  seeds.set('LogsRequest', [
    logsCodec.encode({ namespace: 'k8s.io', id: knownIds[0] ?? 'default/nginx:nginx', driver: 1, follow: false, tailLines: -1 }),
    logsCodec.encode({ namespace: 'system', id: 'kubelet', driver: 0, follow: true, tailLines: 5 }),
  ]);
  const canary = machine?.canary !== undefined ? Buffer.from(machine.canary) : undefined;
  const share = opts.state === false ? 1 : machine === undefined ? 0 : (machine.share ?? 0.35);
  let sample = 0;
  const describe = (value: unknown) => JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v)).slice(0, 300);

  /** Random bytes, a wild request from `gen`, or a mutated seed. */
  const bodyFor = (type: string, gen: fc.Arbitrary<Record<string, unknown>> | undefined): { body: Buffer; input: string } => {
    // The machine requests have few fields: more of them wild (the IDs are the attack surface), fewer random.
    const [randomShare, wildShare] = type.startsWith('machine.') ? [0.15, 0.75] : [0.25, 0.6];
    const r = rand();
    if (r < randomShare) {
      const body = Buffer.from(Array.from({ length: Math.floor(rand() * 200) }, () => Math.floor(rand() * 256)));
      return { body, input: `random ${body.toString('hex').slice(0, 80)}` };
    }
    if (r < wildShare && gen !== undefined) {
      const [value] = fc.sample(gen, { seed: opts.seed + sample++, numRuns: 1 });
      const body = Buffer.from(codecFor(type.includes('.') ? type : `cosi.resource.${type}`).encode(value ?? {}));
      return { body, input: `wild ${describe(value)}` };
    }
    const base = seeds.get(type.replace(/^machine\./, ''))?.[Math.floor(rand() * 2)] ?? new Uint8Array();
    const body = mutate(base, rand);
    return { body, input: `mutated ${body.toString('hex').slice(0, 80)}` };
  };

  /** A well-formed request as a client would send it, so every run reaches the deep paths too. */
  const replay = (): Planned => {
    const logs = { method: 'MachineService/Logs', path: '/machine.MachineService/Logs', streaming: true, documented: MACHINE_DOCUMENTED, options: { deadlineMs: 400, cancelAfterMs: 2000 } };
    const r = rand();
    if (r < 0.2) {
      const value = { namespace: 'k8s.io', driver: 1 };
      return { method: 'MachineService/Containers', path: '/machine.MachineService/Containers', streaming: false, body: Buffer.from(containersCodec.encode(value)), input: `replay ${describe(value)}`, documented: MACHINE_DOCUMENTED, options: {} };
    }
    const id = r < 0.3 || knownIds.length === 0 ? 'kubelet' : (knownIds[Math.floor(rand() * knownIds.length)] ?? 'kubelet');
    const value = { namespace: id === 'kubelet' ? 'system' : 'k8s.io', id, driver: id === 'kubelet' ? 0 : 1, follow: rand() < 0.3, tailLines: Math.floor(rand() * 12) - 2 };
    return { ...logs, body: Buffer.from(logsCodec.encode(value)), input: `replay ${describe(value)}` };
  };

  // Every well-formed request once first (however slow the machine, each run reaches every deep path), then at random.
  const firstReplays: Planned[] = [];
  if (share > 0) {
    const logs = { method: 'MachineService/Logs', path: '/machine.MachineService/Logs', streaming: true, documented: MACHINE_DOCUMENTED, options: { deadlineMs: 8000, cancelAfterMs: 9000 } };
    const containers = { namespace: 'k8s.io', driver: 1 };
    firstReplays.push({ method: 'MachineService/Containers', path: '/machine.MachineService/Containers', streaming: false, body: Buffer.from(containersCodec.encode(containers)), input: `replay ${describe(containers)}`, documented: MACHINE_DOCUMENTED, options: {} });
    // One form per container (`<ns>/<pod>:<container>`); the other forms come at random.
    for (const id of ['kubelet', ...knownIds.filter((k) => k.split(':').length === 2)]) {
      const value = { namespace: id === 'kubelet' ? 'system' : 'k8s.io', id, driver: id === 'kubelet' ? 0 : 1, follow: false, tailLines: 3 };
      firstReplays.push({ ...logs, body: Buffer.from(logsCodec.encode(value)), input: `replay ${describe(value)}` });
    }
  }

  const next = (): Planned => {
    if (rand() < share) {
      const first = firstReplays.shift();
      if (first !== undefined) return first;
      if (rand() < 0.2) return replay();
      const r = rand();
      if (r < 0.25) {
        const { body, input } = bodyFor('machine.ContainersRequest', machineGen['ContainersRequest']);
        return { method: 'MachineService/Containers', path: '/machine.MachineService/Containers', streaming: false, body, input, documented: MACHINE_DOCUMENTED, options: {} };
      }
      if (r < 0.97) {
        const { body, input } = bodyFor('machine.LogsRequest', machineGen['LogsRequest']);
        // Follows end by the deadline (or after 3 messages): DEADLINE_EXCEEDED and CANCELLED are expected.
        return { method: 'MachineService/Logs', path: '/machine.MachineService/Logs', streaming: true, body, input, documented: MACHINE_DOCUMENTED, options: { deadlineMs: 400, cancelAfterMs: 2000 } };
      }
      // Talos's other methods: grpc-js answers UNIMPLEMENTED for them.
      const other = ['Reboot', 'Version', 'Read', 'Kubeconfig'][Math.floor(rand() * 4)] ?? 'Reboot';
      const body = Buffer.from(Array.from({ length: Math.floor(rand() * 32) }, () => Math.floor(rand() * 256)));
      return { method: `MachineService/${other}`, path: `/machine.MachineService/${other}`, streaming: other === 'Read', body, input: `random ${body.toString('hex')}`, documented: MACHINE_DOCUMENTED, options: {} };
    }
    const [method, type, streaming] = METHODS[Math.floor(rand() * METHODS.length)] ?? METHODS[0];
    const { body, input } = bodyFor(type, wildRequests[type]);
    return { method: `State/${method}`, path: `/cosi.resource.State/${method}`, streaming, body, input, documented: DOCUMENTED, options: {} };
  };

  const deadline = Date.now() + opts.durationMs;
  let lastProgress = Date.now();
  const worker = async () => {
    while (Date.now() < deadline) {
      const p = next();
      let leaked = false;
      let gotData = false;
      const st = await call(client, p.path, p.streaming, p.body, {
        ...p.options,
        onData: (b) => {
          gotData = true;
          if (canary !== undefined && b.includes(canary)) leaked = true;
        },
      });
      report.calls++;
      const code = st === undefined ? 'NO_ANSWER' : (grpc.status[st.code] ?? String(st.code));
      report.byCode[code] = (report.byCode[code] ?? 0) + 1;
      const per = (report.byMethod[p.method] ??= {});
      per[code] = (per[code] ?? 0) + 1;
      if (gotData && p.method === 'MachineService/Logs') report.logsWithData++;
      if (st === undefined || !p.documented.has(st.code)) report.findings.push({ method: p.method, code, details: st?.details ?? 'no answer within 10 s', input: p.input });
      if (canary !== undefined && (leaked || (st?.details ?? '').includes(canary.toString()))) {
        report.findings.push({ method: p.method, code: 'CANARY', details: 'the answer carries the text of a file outside the pod logs directory', input: p.input });
      }
      if (opts.onProgress !== undefined && Date.now() - lastProgress > 5000) {
        lastProgress = Date.now();
        opts.onProgress(report);
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 4 }, worker));
  client.close();
  return report;
}
