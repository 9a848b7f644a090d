// The one error table (shared/errors.ts), both directions: every kind to its gRPC code and back, with cosid's
// `cosi-error-kind` metadata and without it (a foreign server), through a real grpc-js server and client; the kinds
// that share FAILED_PRECONDITION reach the client apart; and config errors are CosiErrors too.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toCosiError } from '../client/call.js';
import { connect, connectContext, CosiError, loadCosiConfig, selectContext, StatusCode, type ErrorKind } from '../client/index.js';
import { parseCosiConfig } from '../client/cosiconfig.js';
import { toStatus } from '../server/api/service.js';
import { defaultKindOf, ERROR_KIND_METADATA_KEY, ERROR_KINDS, kindOfStatus, statusCodeOf } from '../shared/errors.js';
import { startServer, type TestServer } from './harness.js';

// Written out so that the compiler fails this test when a kind is added without being listed here.
const ALL_KINDS: Record<ErrorKind, true> = {
  cancelled: true,
  unknown: true,
  'invalid-argument': true,
  'invalid-config': true,
  ambiguous: true,
  'deadline-exceeded': true,
  'not-found': true,
  'not-registered': true,
  'already-exists': true,
  'permission-denied': true,
  'owner-conflict': true,
  'resource-exhausted': true,
  'version-conflict': true,
  'phase-conflict': true,
  'pending-finalizers': true,
  'invalid-bookmark': true,
  'failed-precondition': true,
  aborted: true,
  'too-old': true,
  unimplemented: true,
  internal: true,
  unavailable: true,
  'data-loss': true,
  unauthenticated: true,
};
const KINDS = Object.keys(ALL_KINDS) as ErrorKind[];
const ERROR_CODES = Object.values(StatusCode).filter((c) => c !== StatusCode.OK);

// The codes as grpc-js numbers them: StatusCode is the same numbers without the grpc-js type.
const EXPECTED_CODE: Record<ErrorKind, grpc.status> = {
  cancelled: grpc.status.CANCELLED,
  unknown: grpc.status.UNKNOWN,
  'invalid-argument': grpc.status.INVALID_ARGUMENT,
  'invalid-config': grpc.status.INVALID_ARGUMENT,
  ambiguous: grpc.status.INVALID_ARGUMENT,
  'deadline-exceeded': grpc.status.DEADLINE_EXCEEDED,
  'not-found': grpc.status.NOT_FOUND,
  'not-registered': grpc.status.NOT_FOUND,
  'already-exists': grpc.status.ALREADY_EXISTS,
  'permission-denied': grpc.status.PERMISSION_DENIED,
  'owner-conflict': grpc.status.PERMISSION_DENIED,
  'resource-exhausted': grpc.status.RESOURCE_EXHAUSTED,
  'version-conflict': grpc.status.FAILED_PRECONDITION,
  'phase-conflict': grpc.status.FAILED_PRECONDITION,
  'pending-finalizers': grpc.status.FAILED_PRECONDITION,
  'invalid-bookmark': grpc.status.FAILED_PRECONDITION,
  'failed-precondition': grpc.status.FAILED_PRECONDITION,
  aborted: grpc.status.ABORTED,
  'too-old': grpc.status.OUT_OF_RANGE,
  unimplemented: grpc.status.UNIMPLEMENTED,
  internal: grpc.status.INTERNAL,
  unavailable: grpc.status.UNAVAILABLE,
  'data-loss': grpc.status.DATA_LOSS,
  unauthenticated: grpc.status.UNAUTHENTICATED,
};

describe('the table', () => {
  it('lists every kind exactly once', () => {
    expect([...ERROR_KINDS].sort()).toEqual([...KINDS].sort());
    expect(new Set(ERROR_KINDS).size).toBe(ERROR_KINDS.length);
  });

  it('gives each kind its gRPC code, as a plain number equal to grpc-js\'s', () => {
    for (const kind of KINDS) {
      expect(statusCodeOf(kind), kind).toBe(EXPECTED_CODE[kind]);
      expect(new CosiError(kind, 'x').code, kind).toBe(EXPECTED_CODE[kind]);
    }
    for (const [name, value] of Object.entries(StatusCode)) expect(grpc.status[name as keyof typeof grpc.status], name).toBe(value);
  });

  it('gives every error code a default kind that travels as that code: no code is lost on the way back', () => {
    for (const code of ERROR_CODES) expect(statusCodeOf(defaultKindOf(code)), `code ${code}`).toBe(code);
    expect(defaultKindOf(StatusCode.FAILED_PRECONDITION)).toBe('version-conflict');
    expect(defaultKindOf(StatusCode.NOT_FOUND)).toBe('not-found');
    expect(defaultKindOf(StatusCode.INVALID_ARGUMENT)).toBe('invalid-argument');
    expect(defaultKindOf(StatusCode.PERMISSION_DENIED)).toBe('permission-denied');
    expect(defaultKindOf(StatusCode.OK)).toBe('unknown');
    expect(defaultKindOf(99)).toBe('unknown');
  });

  it('round-trips kind -> code -> kind: exactly with the kind as metadata, to the code\'s default without it', () => {
    for (const kind of KINDS) {
      const code = statusCodeOf(kind);
      expect(kindOfStatus(code, kind), kind).toBe(kind);
      expect(kindOfStatus(code), kind).toBe(defaultKindOf(code));
      expect(kindOfStatus(code) === kind, kind).toBe(defaultKindOf(code) === kind);
    }
  });

  it('ignores metadata that names no kind, or a kind of another code', () => {
    expect(kindOfStatus(StatusCode.NOT_FOUND, 'invalid-bookmark')).toBe('not-found');
    expect(kindOfStatus(StatusCode.FAILED_PRECONDITION, 'frobnicated')).toBe('version-conflict');
    expect(kindOfStatus(StatusCode.FAILED_PRECONDITION, 42)).toBe('version-conflict');
    expect(kindOfStatus(StatusCode.FAILED_PRECONDITION, 'invalid-bookmark')).toBe('invalid-bookmark');
  });
});

// A grpc-js server that fails each call with the kind named in the request: through cosid's toStatus, or bare (code
// and message only) as a foreign server would.
const FAIL: grpc.MethodDefinition<Buffer, Buffer> = {
  path: '/test.Errors/Fail',
  requestStream: false,
  responseStream: false,
  requestSerialize: (b) => b,
  requestDeserialize: (b) => b,
  responseSerialize: (b) => b,
  responseDeserialize: (b) => b,
};
const FAIL_STREAM: grpc.MethodDefinition<Buffer, Buffer> = { ...FAIL, path: '/test.Errors/FailStream', responseStream: true };

let server: grpc.Server;
let channel: grpc.Client;
const endpoint = () => 'errors-test';

beforeAll(async () => {
  server = new grpc.Server();
  const failure = (b: Buffer): Partial<grpc.StatusObject> => {
    const { kind, foreign } = JSON.parse(b.toString()) as { kind: ErrorKind; foreign: boolean };
    const err = new CosiError(kind, `it is ${kind}`);
    return foreign ? { code: statusCodeOf(kind) as grpc.status, details: err.message } : toStatus(err);
  };
  server.addService(
    { Fail: FAIL, FailStream: FAIL_STREAM },
    {
      Fail: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => callback(failure(call.request)),
      FailStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        call.write(Buffer.from('ready'));
        call.emit('error', failure(call.request));
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  channel = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
});
afterAll(() => {
  channel.close();
  server.forceShutdown();
});

function unaryFailure(kind: ErrorKind, foreign: boolean): Promise<CosiError> {
  return new Promise((resolve) => {
    channel.makeUnaryRequest(FAIL.path, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(JSON.stringify({ kind, foreign })), (err) => resolve(toCosiError(err, endpoint())));
  });
}

async function streamFailure(kind: ErrorKind, foreign: boolean): Promise<CosiError> {
  const call = channel.makeServerStreamRequest(FAIL_STREAM.path, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(JSON.stringify({ kind, foreign })));
  try {
    for await (const _ of call as AsyncIterable<Buffer>) void _;
  } catch (err) {
    return toCosiError(err, endpoint());
  }
  throw new Error('the stream did not fail');
}

describe('over the wire', () => {
  it.each(KINDS)('%s arrives as itself from cosid (unary and stream), and as its code\'s default kind from a foreign server', async (kind) => {
    const code = statusCodeOf(kind);
    for (const failed of [await unaryFailure(kind, false), await streamFailure(kind, false)]) {
      expect(failed).toBeInstanceOf(CosiError);
      expect({ kind: failed.kind, code: failed.code, message: failed.message.startsWith(`it is ${kind}`) }).toEqual({ kind, code, message: true });
    }
    for (const failed of [await unaryFailure(kind, true), await streamFailure(kind, true)]) {
      expect({ kind: failed.kind, code: failed.code }).toEqual({ kind: defaultKindOf(code), code });
    }
  });

  it('sends an unexpected exception as internal, kind included', () => {
    const st = toStatus(new TypeError('boom'));
    expect(st.code).toBe(grpc.status.INTERNAL);
    expect(st.details).toBe('internal error: boom');
    expect(st.metadata?.get(ERROR_KIND_METADATA_KEY)).toEqual(['internal']);
  });
});

describe('a real cosid', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startServer();
  });
  afterAll(async () => {
    await srv.close();
  });

  it('reports a malformed bookmark as invalid-bookmark, not as a version conflict', async () => {
    const w = srv.client().watchIter('podstatus', { fromBookmark: new Uint8Array([1, 2, 3]), reconnect: false });
    await expect(w.next()).rejects.toMatchObject({ kind: 'invalid-bookmark', code: grpc.status.FAILED_PRECONDITION });
  });

  it('reports a bookmark of another server instance as too-old', async () => {
    const w = srv.client().watchIter('podstatus', { fromBookmark: new Uint8Array([1, 0, 9, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 1]), reconnect: false });
    await expect(w.next()).rejects.toMatchObject({ kind: 'too-old', code: grpc.status.OUT_OF_RANGE });
  });

  it('answers a missing resource with not-found, and an unknown type (found out by the client) with not-registered, both NOT_FOUND', async () => {
    const client = srv.client();
    await expect(client.get('podstatus', 'absent')).rejects.toMatchObject({ kind: 'not-found', code: grpc.status.NOT_FOUND });
    await expect(client.get('frobs', 'x')).rejects.toMatchObject({ kind: 'not-registered', code: grpc.status.NOT_FOUND });
  });
});

describe('every failure of an exported function is a CosiError', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cosi-errors-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('config errors are of kind invalid-config, with the message cosictl prints', async () => {
    const absent = join(dir, 'absent');
    const missing = await loadCosiConfig(absent).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(CosiError);
    expect(missing).toMatchObject({ kind: 'invalid-config', message: expect.stringContaining(`no client config at ${absent}`) });
    await expect(loadCosiConfig(dir)).rejects.toMatchObject({ kind: 'invalid-config', message: expect.stringContaining('is a folder') });
    expect(() => parseCosiConfig('contexts: 3', 'cfg')).toThrow(expect.objectContaining({ kind: 'invalid-config', message: expect.stringContaining('cfg: no "contexts" mapping') }));
    expect(() => selectContext({ currentContext: 'a', contexts: new Map() }, 'b')).toThrow(expect.objectContaining({ kind: 'invalid-config' }));
    const ctx = { name: 'empty', endpoints: [], nodes: [], caPem: '', certPem: '', keyPem: '' };
    expect(() => connectContext(ctx)).toThrow(expect.objectContaining({ kind: 'invalid-config', message: 'context "empty" has no endpoints' }));
  });

  it('bad connection settings and options are invalid-argument', async () => {
    const bad = () => connect({ endpoint: '127.0.0.1:1', caPem: 'not a pem', certPem: 'junk', keyPem: 'junk' });
    expect(bad).toThrow(CosiError);
    expect(bad).toThrow(expect.objectContaining({ kind: 'invalid-argument' }));
    const srv = await startServer();
    try {
      const client = srv.client();
      expect(() => connect({ endpoint: srv.endpoint, caPem: srv.pki.ca.certPem, certPem: srv.pki.admin.certPem, keyPem: srv.pki.admin.keyPem, defaultTimeoutMs: 0 })).toThrow(
        expect.objectContaining({ kind: 'invalid-argument', message: 'defaultTimeoutMs must be a positive number of milliseconds or Infinity, not 0' }),
      );
      expect(() => connect({ endpoint: srv.endpoint, caPem: srv.pki.ca.certPem, certPem: srv.pki.admin.certPem, keyPem: srv.pki.admin.keyPem, keepalive: { intervalMs: Infinity } })).toThrow(
        expect.objectContaining({ kind: 'invalid-argument', message: 'keepalive.intervalMs must be a finite number of milliseconds' }),
      );
      await expect(client.get('podstatus', 'x', { timeoutMs: -5 })).rejects.toMatchObject({ kind: 'invalid-argument' });
      await expect(client.list('podstatus', { timeoutMs: Number.NaN })).rejects.toMatchObject({ kind: 'invalid-argument' });
    } finally {
      await srv.close();
    }
  });
});
