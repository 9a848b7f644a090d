// What both services do with a call's request and its stream: a body that does not decode becomes INVALID_ARGUMENT
// in the handler (not grpc-js's INTERNAL "Error deserializing request"), and a server stream waits for room.
import type * as grpc from '@grpc/grpc-js';
import { CosiError } from '../../shared/errors.js';

/** A request body that did not decode. */
export class MalformedRequest {
  constructor(readonly reason: string) {}
}

/** A request deserializer that answers MalformedRequest instead of throwing. */
export function tolerant<T>(decode: (b: Buffer) => T): (b: Buffer) => T | MalformedRequest {
  return (b) => {
    try {
      return decode(b);
    } catch (err) {
      return new MalformedRequest(err instanceof Error ? err.message : String(err));
    }
  };
}

export function requestOf<T>(call: { request: T | MalformedRequest }): T {
  if (call.request instanceof MalformedRequest) throw new CosiError('invalid-argument', `malformed request: ${call.request.reason}`);
  return call.request;
}

/** Resolves when the stream has room again, or the call is cancelled, or `signal` aborts. */
export function drained(call: grpc.ServerWritableStream<unknown, unknown>, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.off('drain', done);
      call.off('cancelled', done);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    call.once('drain', done);
    call.once('cancelled', done);
    signal?.addEventListener('abort', done);
  });
}
