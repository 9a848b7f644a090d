// A protocol fuzzer for the State API: random and mutated protobuf bytes to every method through a raw grpc-js
// client (its own identity serializer), and structurally valid but wild requests from a property-based generator.
// Every answer must be a status the API documents; INTERNAL or UNKNOWN (or no answer) is a finding.
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { codecFor, LabelOp } from '../../shared/wire.js';

export interface FuzzTarget {
  endpoint: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface FuzzReport {
  calls: number;
  byCode: Record<string, number>;
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

/** Calls one method with raw bytes; resolves with the final status (streams are cancelled after a few messages). */
function call(client: grpc.Client, method: string, streaming: boolean, body: Buffer): Promise<grpc.StatusObject | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 10_000);
    const done = (st: grpc.StatusObject | undefined) => {
      clearTimeout(timer);
      resolve(st);
    };
    const path = `/cosi.resource.State/${method}`;
    if (!streaming) {
      const c = client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, body, () => {});
      c.on('status', done);
      return;
    }
    const c = client.makeServerStreamRequest(path, (b: Buffer) => b, (b: Buffer) => b, body);
    let messages = 0;
    c.on('data', () => {
      if (++messages >= 3) c.cancel();
    });
    c.on('error', () => {});
    c.on('status', done);
    // A healthy watch never ends by itself: seeing it answer is enough.
    setTimeout(() => c.cancel(), 150).unref();
  });
}

export async function runFuzz(target: FuzzTarget, opts: { durationMs: number; seed: number; concurrency?: number; onProgress?: (r: FuzzReport) => void }): Promise<FuzzReport> {
  const rand = prng(opts.seed);
  const client = new grpc.Client(target.endpoint, grpc.credentials.createSsl(Buffer.from(target.caPem), Buffer.from(target.keyPem), Buffer.from(target.certPem)), {
    'grpc.max_send_message_length': 4 << 20,
  });
  const report: FuzzReport = { calls: 0, byCode: {}, findings: [] };
  const seeds = new Map<string, Uint8Array[]>();
  for (const [, type] of METHODS) {
    const codec = codecFor(`cosi.resource.${type}`);
    seeds.set(type, [codec.encode({ ...kinds[0], id: 'default-nginx' }), codec.encode({ ...kinds[1], options: {} })]);
  }
  let sample = 0;
  const next = (): { method: string; streaming: boolean; body: Buffer; input: string } => {
    const [method, type, streaming] = METHODS[Math.floor(rand() * METHODS.length)] ?? METHODS[0];
    const r = rand();
    if (r < 0.25) {
      const body = Buffer.from(Array.from({ length: Math.floor(rand() * 200) }, () => Math.floor(rand() * 256)));
      return { method, streaming, body, input: `random ${body.toString('hex').slice(0, 80)}` };
    }
    const gen = wildRequests[type];
    if (r < 0.6 && gen !== undefined) {
      const [value] = fc.sample(gen, { seed: opts.seed + sample++, numRuns: 1 });
      const body = Buffer.from(codecFor(`cosi.resource.${type}`).encode(value ?? {}));
      return { method, streaming, body, input: `wild ${JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v)).slice(0, 300)}` };
    }
    const base = seeds.get(type)?.[Math.floor(rand() * 2)] ?? new Uint8Array();
    const body = mutate(base, rand);
    return { method, streaming, body, input: `mutated ${body.toString('hex').slice(0, 80)}` };
  };
  const deadline = Date.now() + opts.durationMs;
  let lastProgress = Date.now();
  const worker = async () => {
    while (Date.now() < deadline) {
      const { method, streaming, body, input } = next();
      const st = await call(client, method, streaming, body);
      report.calls++;
      const code = st === undefined ? 'NO_ANSWER' : (grpc.status[st.code] ?? String(st.code));
      report.byCode[code] = (report.byCode[code] ?? 0) + 1;
      if (st === undefined || !DOCUMENTED.has(st.code)) report.findings.push({ method, code, details: st?.details ?? 'no answer within 10 s', input });
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
