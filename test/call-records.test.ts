// Every call is recorded once (server/api/service.ts callRecorder: the metrics and, with `audit`, one log line),
// including a List the client cancels half-way through its answer.
import * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '../shared/log.js';
import { wire } from '../shared/wire.js';
import { eventually, podStatus, startServer, STATUSES, TEST_OWNER, type TestServer } from './harness.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

describe('call records', () => {
  it('records a List cancelled while its answer is being sent as CANCELLED, in the audit log and the metrics', async () => {
    const lines: string[] = [];
    const srv: TestServer = await startServer({ audit: true, log: createLogger({ write: (l) => lines.push(l) }) });
    cleanups.push(() => srv.close());
    // Far more than the stream's flow-control window: the List waits for a reader that never reads.
    const padding = 'x'.repeat(16 << 10);
    for (let i = 0; i < 200; i++) await srv.cosid.store.create({ ...STATUSES, id: `big/${String(i).padStart(3, '0')}`, spec: { ...(podStatus(true) as object), padding } }, TEST_OWNER);

    const client = new grpc.Client(srv.endpoint, grpc.credentials.createSsl(Buffer.from(srv.pki.ca.certPem), Buffer.from(srv.pki.admin.keyPem), Buffer.from(srv.pki.admin.certPem)));
    cleanups.push(() => client.close());
    const req = wire.listRequest.encode({ namespace: STATUSES.namespace, type: STATUSES.type, options: { labelQuery: [] } });
    const call = client.makeServerStreamRequest('/cosi.resource.State/List', (b: Buffer) => b, (b: Buffer) => b, Buffer.from(req));
    let received = 0;
    call.on('error', () => undefined);
    await new Promise<void>((resolve) =>
      call.on('data', () => {
        received++;
        call.pause();
        resolve();
      }),
    );
    call.cancel();

    const lists = () => lines.filter((l) => l.includes('"msg":"audit"')).map((l) => JSON.parse(l) as Record<string, unknown>).filter((a) => a['method'] === 'List');
    await eventually(() => expect(lists().map((a) => a['outcome'])).toEqual(['CANCELLED']));
    expect(received).toBeLessThan(200);
    const text = await srv.cosid.metrics.registry.metrics();
    expect(text).toMatch(/cosi_grpc_call_duration_seconds_count\{service="cosi\.resource\.State",method="List",code="CANCELLED"\} 1\n/);
  });
});
