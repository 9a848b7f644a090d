// Watch event forms and compression, on the wire: a raw HTTP/2 gRPC client (no gRPC library between the test and
// the bytes) sees the full form by default, the lean form when it asks with `cosi-event-form: lean`, and messages
// compressed with gzip once for all watchers when it accepts gzip. The client library asks for lean events and
// rebuilds what its callers use.
import { connect as http2Connect, type ClientHttp2Session } from 'node:http2';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EVENT_FORM_METADATA_KEY, EventType, wire, type WireWatchResponse } from '../shared/wire.js';
import { podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

/** One gRPC message as it came: its compressed flag and its payload (uncompressed when it was gzipped). */
interface RawMessage {
  compressed: boolean;
  frame: Buffer;
  response: WireWatchResponse;
}

/** A Watch over raw HTTP/2: collects messages as they come; `until(n)` resolves once n have arrived. */
function rawWatch(session: ClientHttp2Session, headers: Record<string, string>, bootstrap: boolean) {
  const request = Buffer.from(wire.watchRequest.encode({ namespace: STATUSES.namespace, type: STATUSES.type, apiVersion: 1, options: { bootstrapContents: bootstrap, tailEvents: 0, labelQuery: [], aggregated: false, bootstrapBookmark: false } }));
  const framedRequest = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), request]);
  framedRequest.writeUInt32BE(request.length, 1);
  const stream = session.request({ ':method': 'POST', ':path': '/cosi.resource.State/Watch', 'content-type': 'application/grpc', te: 'trailers', ...headers });
  stream.end(framedRequest);
  const messages: RawMessage[] = [];
  let responseHeaders: Record<string, unknown> = {};
  let pending = Buffer.alloc(0);
  let waiter: { n: number; resolve: () => void } | undefined;
  stream.on('response', (h) => (responseHeaders = h));
  stream.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
      const length = pending.readUInt32BE(1);
      const compressed = pending.readUInt8(0) === 1;
      const frame = pending.subarray(0, 5 + length);
      const payload = compressed ? gunzipSync(frame.subarray(5)) : frame.subarray(5);
      messages.push({ compressed, frame: Buffer.from(frame), response: wire.watchResponse.decode(payload) });
      pending = pending.subarray(5 + length);
    }
    if (waiter !== undefined && messages.length >= waiter.n) waiter.resolve();
  });
  return {
    messages,
    headers: () => responseHeaders,
    until: (n: number) => new Promise<void>((resolve) => (messages.length >= n ? resolve() : (waiter = { n, resolve }))),
    close: () => stream.close(),
  };
}

describe('watch event forms and gzip on the wire', () => {
  let srv: TestServer;
  let session: ClientHttp2Session;
  beforeAll(async () => {
    srv = await startServer();
    session = http2Connect(`https://${srv.endpoint}`, {
      ca: srv.pki.ca.certPem,
      cert: srv.pki.admin.certPem,
      key: srv.pki.admin.keyPem,
      servername: 'localhost',
    });
    await srv.cosid.store.create({ ...STATUSES, id: 'default/forms', spec: podStatus(true, { filler: 'x'.repeat(2048) }) }, TEST_OWNER);
  });
  afterAll(async () => {
    session.close();
    await srv.close();
  });

  it('gives a generic client the full form, a lean asker the lean form, and gzip to those who accept it, compressed once', async () => {
    const generic = rawWatch(session, {}, true);
    const lean = rawWatch(session, { [EVENT_FORM_METADATA_KEY]: 'lean', 'grpc-accept-encoding': 'gzip' }, true);
    const lean2 = rawWatch(session, { [EVENT_FORM_METADATA_KEY]: 'lean', 'grpc-accept-encoding': 'identity,gzip' }, true);
    const fullGzip = rawWatch(session, { 'grpc-accept-encoding': 'gzip' }, true);
    // ready, CREATED, BOOTSTRAPPED.
    for (const w of [generic, lean, lean2, fullGzip]) await w.until(3);
    expect(generic.headers()['grpc-encoding']).toBe('identity');
    expect(lean.headers()['grpc-encoding']).toBe('gzip');
    await srv.cosid.store.update({ ...STATUSES, id: 'default/forms', spec: podStatus(false, { filler: 'x'.repeat(2048) }) }, TEST_OWNER);
    for (const w of [generic, lean, lean2, fullGzip]) await w.until(4);

    const updatedOf = (w: ReturnType<typeof rawWatch>) => {
      const m = w.messages[3] as RawMessage;
      const [e] = m.response.event;
      expect(m.response.event).toHaveLength(1);
      expect(e?.eventType).toBe(EventType.UPDATED);
      return { m, e: e as NonNullable<typeof e> };
    };
    // Full, as the reference: both spec forms, and the old resource.
    const g = updatedOf(generic);
    expect(g.m.compressed).toBe(false);
    expect(g.e.old?.metadata?.version).toBe('1');
    expect(g.e.resource?.spec?.protoSpec?.length).toBeGreaterThan(0);
    expect(g.e.resource?.spec?.yamlSpec).toContain('filler:');
    // Lean: the YAML spec only, no old resource, and gzipped.
    const l = updatedOf(lean);
    expect(l.m.compressed).toBe(true);
    expect(l.e.old ?? undefined).toBeUndefined();
    expect(l.e.resource?.spec?.protoSpec?.length ?? 0).toBe(0);
    expect(l.e.resource?.spec?.yamlSpec).toBe(g.e.resource?.spec?.yamlSpec);
    expect(l.e.resource?.metadata).toEqual(g.e.resource?.metadata);
    // Compressed once, shared: two lean gzip watchers got the very same bytes.
    expect(updatedOf(lean2).m.frame.equals(l.m.frame)).toBe(true);
    // Full and gzipped: the full event's bytes, compressed.
    const fg = updatedOf(fullGzip);
    expect(fg.m.compressed).toBe(true);
    expect(fg.m.frame.length).toBeLessThan(g.m.frame.length / 2);
    expect(wire.watchResponse.encode(fg.m.response)).toEqual(wire.watchResponse.encode(g.m.response));
    // A bootstrap event is this watcher's own message: never compressed (that would be per watcher).
    expect(lean.messages[1]?.compressed).toBe(false);
    for (const w of [generic, lean, lean2, fullGzip]) w.close();
  });

  it('refuses an unknown event form with INVALID_ARGUMENT', async () => {
    const stream = session.request({ ':method': 'POST', ':path': '/cosi.resource.State/Watch', 'content-type': 'application/grpc', te: 'trailers', [EVENT_FORM_METADATA_KEY]: 'tiny' });
    const request = Buffer.from(wire.watchRequest.encode({ namespace: STATUSES.namespace, type: STATUSES.type, apiVersion: 1 }));
    const framedRequest = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), request]);
    framedRequest.writeUInt32BE(request.length, 1);
    stream.end(framedRequest);
    const trailers = await new Promise<Record<string, unknown>>((resolve) => stream.on('trailers', resolve).on('response', (h) => h['grpc-status'] !== undefined && resolve(h)));
    stream.resume();
    expect(trailers['grpc-status']).toBe('3');
    expect(decodeURIComponent(String(trailers['grpc-message']))).toBe('cosi-event-form must be "lean" or "full", not "tiny"');
  });

  it('writes yaml_spec as talosctl-like clients have always read it: block style, insertion order, no folding, quoted where a YAML 1.1 or 1.2 parser would read a non-string', async () => {
    const client = srv.client();
    const id = 'default/yaml-text';
    const spec = {
      phase: 'Running',
      startTime: '2026-11-25T04:00:00Z',
      conditions: [{ type: 'Ready', status: 'True', lastProbeTime: null }],
      answers: ['yes', 'no', 'on', 'off', 'true', 'null', '~', ''],
      numbers: ['0o17', '0x1f', '017', '1e3', '.inf', '1:20', '10.5.0.2', 42, 1.5, false],
      image: 'registry.k8s.io/pause:3.10@sha256:0123',
      odd: ["it's", 'a: b', '#x', '- x', '*a', '&a', '!x', '%x', '@x', '{a}', '[a]', 'multi\nline'],
      long: 'word '.repeat(40).trim(),
      empty: { list: [], map: {} },
      'key with space': { 'yes': 1 },
    };
    await srv.cosid.store.create({ ...STATUSES, id, spec }, TEST_OWNER);
    const expected = [
      'phase: Running',
      "startTime: '2026-11-25T04:00:00Z'",
      'conditions:',
      '  - type: Ready',
      "    status: 'True'",
      '    lastProbeTime: null',
      'answers:',
      "  - 'yes'",
      "  - 'no'",
      "  - 'on'",
      "  - 'off'",
      "  - 'true'",
      "  - 'null'",
      "  - '~'",
      "  - ''",
      'numbers:',
      "  - '0o17'",
      "  - '0x1f'",
      "  - '017'",
      "  - '1e3'",
      "  - '.inf'",
      "  - '1:20'",
      '  - 10.5.0.2',
      '  - 42',
      '  - 1.5',
      '  - false',
      'image: registry.k8s.io/pause:3.10@sha256:0123',
      'odd:',
      "  - it's",
      "  - 'a: b'",
      "  - '#x'",
      "  - '- x'",
      "  - '*a'",
      "  - '&a'",
      "  - '!x'",
      "  - '%x'",
      "  - '@x'",
      "  - '{a}'",
      "  - '[a]'",
      '  - |-',
      '    multi',
      '    line',
      `long: ${'word '.repeat(40).trim()}`,
      'empty:',
      '  list: []',
      '  map: {}',
      'key with space:',
      "  'yes': 1",
      '',
    ].join('\n');
    const full = await client.get('podstatus', id);
    expect(full.yamlSpec).toBe(expected);
    const leanWatch = client.watchIter('podstatus', { bootstrap: true, idRegexp: '^default/yaml-text$' });
    expect((await leanWatch.next()).value?.resource?.yamlSpec).toBe(expected);
    await leanWatch.close();
  });

  it('the client library asks for lean events and fills in the old resource from its view', async () => {
    const client = srv.client();
    const id = 'default/library';
    await srv.cosid.store.create({ ...STATUSES, id, spec: podStatus(true) }, TEST_OWNER);
    const leanWatch = client.watchIter('podstatus', { bootstrap: true, idRegexp: '^default/library$' });
    const fullWatch = client.watchIter('podstatus', { bootstrap: true, idRegexp: '^default/library$', eventForm: 'full' });
    for (const w of [leanWatch, fullWatch]) {
      expect((await w.next()).value?.type).toBe('created');
      expect((await w.next()).value?.type).toBe('bootstrapped');
    }
    await srv.cosid.store.update({ ...STATUSES, id, spec: podStatus(false) }, TEST_OWNER);
    const leanEvent = (await leanWatch.next()).value;
    const fullEvent = (await fullWatch.next()).value;
    expect(leanEvent?.type).toBe('updated');
    expect(leanEvent?.old?.metadata.version).toBe(1);
    expect(leanEvent?.old?.yamlSpec).toBe(fullEvent?.old?.yamlSpec);
    expect(leanEvent?.resource?.yamlSpec).toBe(fullEvent?.resource?.yamlSpec);
    expect(leanEvent?.resource?.spec).toEqual(fullEvent?.resource?.spec);
    expect(leanEvent?.resource?.protoSpec.length).toBe(0);
    expect(fullEvent?.resource?.protoSpec.length).toBeGreaterThan(0);
    await leanWatch.close();
    await fullWatch.close();
  });
});
