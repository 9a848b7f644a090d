// A server stream of whole gRPC messages cosid encoded beforehand (Frames.message): copied into writes of up to
// `batchBytes` (grpc-js sends each write alone and only after the one before it has gone out: a write per small
// message costs far more than copying it; the few batch buffers of a stream are filled again once their write has
// gone out), with at most `maxQueuedBytes` written that have not gone out yet. Past that the stream reports full,
// and the writer waits for room: a slow client parks its List, as a slow watcher is, instead of making the server
// hold the whole response.
import type * as grpc from '@grpc/grpc-js';
import { FramedMessage } from '../grpc-internals.js';

export interface FramedStreamLimits {
  /** Bytes gathered into one write (a larger message goes alone). */
  readonly batchBytes: number;
  /** Bytes written and not gone out yet before the stream reports full. */
  readonly maxQueuedBytes: number;
}

/** Lists stream 64 KiB writes, 256 KiB ahead of their client at most. */
export const DEFAULT_FRAMED_STREAM_LIMITS: FramedStreamLimits = { batchBytes: 64 << 10, maxQueuedBytes: 256 << 10 };

/** What every framed stream of a server has queued and whether it waits: read by tests and stats. */
export class FramedStreamStats {
  /** Streams waiting for room now. */
  parked = 0;
  /** Bytes written to grpc-js and not gone out yet, all streams together. */
  queuedBytes = 0;
  /** The most bytes one stream has had queued. */
  maxQueuedBytes = 0;
  /** Bytes handed to grpc-js in all. */
  writtenBytes = 0;
}

export class FramedStream {
  /** The write being gathered: a buffer of batchBytes, its first `used` bytes filled. */
  private batch: Buffer | undefined;
  private used = 0;
  /** Batch buffers whose write has gone out: filled again rather than allocating one per write. */
  private readonly spare: Buffer[] = [];
  private queued = 0;
  private wake: (() => void) | undefined;
  private cancelled = false;

  constructor(
    private readonly call: grpc.ServerWritableStream<unknown, FramedMessage>,
    private readonly limits: FramedStreamLimits = DEFAULT_FRAMED_STREAM_LIMITS,
    private readonly stats: FramedStreamStats = new FramedStreamStats(),
  ) {
    // grpc-js calls no write back once its call is cancelled: what was queued is forgotten then.
    call.once('cancelled', () => {
      this.cancelled = true;
      this.stats.queuedBytes -= this.queued;
      this.queued = 0;
    });
  }

  /** Adds one whole message; false when the stream is full (then wait for room()). */
  add(message: Buffer): boolean {
    if (this.cancelled) return true;
    const { batchBytes } = this.limits;
    if (message.length >= batchBytes) {
      // Too large to gather: it goes alone, as it is.
      this.flush();
      this.send(message, undefined);
      return this.hasRoom();
    }
    if (this.batch !== undefined && this.used + message.length > this.batch.length) this.flush();
    this.batch ??= this.spare.pop() ?? Buffer.allocUnsafeSlow(batchBytes);
    message.copy(this.batch, this.used);
    this.used += message.length;
    return this.hasRoom();
  }

  /** Writes what is gathered. */
  flush(): void {
    const batch = this.batch;
    if (batch === undefined || this.used === 0 || this.cancelled) return;
    this.send(batch.subarray(0, this.used), batch);
    this.batch = undefined;
    this.used = 0;
  }

  /** Resolves once the stream has room again, or the call is cancelled or has failed. */
  room(): Promise<void> {
    if (this.hasRoom() || this.call.cancelled || this.call.destroyed) return Promise.resolve();
    this.stats.parked++;
    return new Promise<void>((resolve) => {
      const done = () => {
        this.wake = undefined;
        this.stats.parked--;
        this.call.off('drain', onDrain);
        this.call.off('cancelled', done);
        this.call.off('close', done);
        this.call.off('error', done);
        resolve();
      };
      const onDrain = () => {
        if (this.hasRoom()) done();
      };
      this.wake = done;
      this.call.on('drain', onDrain);
      this.call.once('cancelled', done);
      this.call.once('close', done);
      this.call.once('error', done);
    });
  }

  /** Bytes written to grpc-js that have not gone out yet. */
  get queuedBytes(): number {
    return this.queued;
  }

  /** Hands bytes to grpc-js; `batch`, the buffer they are in, is filled again once they have gone out. */
  private send(bytes: Buffer, batch: Buffer | undefined): void {
    const n = bytes.length;
    this.queued += n;
    this.stats.queuedBytes += n;
    this.stats.writtenBytes += n;
    this.stats.maxQueuedBytes = Math.max(this.stats.maxQueuedBytes, this.queued);
    this.call.write(FramedMessage.of(bytes), () => {
      if (this.cancelled) return;
      this.queued -= n;
      this.stats.queuedBytes -= n;
      if (batch !== undefined) this.spare.push(batch);
      if (this.wake !== undefined && this.hasRoom()) this.wake();
    });
  }

  private hasRoom(): boolean {
    return this.queued <= this.limits.maxQueuedBytes && !this.call.writableNeedDrain;
  }
}
