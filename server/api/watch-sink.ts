// A watch's server stream as the hub sees it: the session hands it encoded WatchResponses; this frames them as gRPC
// messages (compressed for clients that accept gzip), writes them with grpc-js write()/'drain' and a budget in
// bytes, and counts them in the metrics.
import type * as grpc from '@grpc/grpc-js';
import { gzipSync } from 'node:zlib';
import { FramedMessage } from '../grpc-internals.js';
import type { WatchMetrics } from '../metrics.js';
import type { EventForm } from '../watch/frames.js';
import type { WatchMessage, WatchSink } from '../watch/session.js';

/** Messages smaller than this go uncompressed even to gzip watchers: gzip's own header would eat the gain. */
const GZIP_MIN_BYTES = 256;

/**
 * The gRPC messages of the WatchResponses many watchers send (a single-event response, a shared catch-up batch):
 * framed once, and for gzip watchers compressed once, for all of them, for as long as the response is in use. One
 * only this watcher sends is framed for it and never compressed (compressing per watcher would cost more than the
 * bytes it saves).
 */
export class WatchFraming {
  private readonly plain = new WeakMap<Buffer, FramedMessage>();
  private readonly gzipped = new WeakMap<Buffer, FramedMessage>();

  frame(message: WatchMessage, gzip: boolean): FramedMessage {
    const { payload } = message;
    if (!message.shared) return FramedMessage.frame(payload, false);
    const compress = gzip && payload.length >= GZIP_MIN_BYTES;
    const cache = compress ? this.gzipped : this.plain;
    let framed = cache.get(payload);
    if (framed === undefined) {
      framed = compress ? FramedMessage.frame(gzipSync(payload), true) : FramedMessage.frame(payload, false);
      cache.set(payload, framed);
    }
    return framed;
  }
}

export interface WatchSinkOptions {
  readonly framing: WatchFraming;
  /** The client accepts gzip (the call's response header says grpc-encoding: gzip). */
  readonly gzip: boolean;
  /** The watch's event form, as metrics name it (with "+gzip" when compressed). */
  readonly form: EventForm;
  readonly metrics: Pick<WatchMetrics, 'sent'> | undefined;
  /** Bytes the stream may have queued before it reports full. */
  readonly maxBufferedBytes: number;
  readonly end: WatchSink['end'];
}

/**
 * grpc-js reports a full stream after 16 queued messages whatever their size: 16 aggregated batches (or 16 large
 * resources) would sit in memory per watcher. The sink also reports full once `maxBufferedBytes` are queued and
 * reopens when the queue is back under it, so a slow watcher holds at most about that many bytes.
 */
export function grpcWatchSink(call: grpc.ServerWritableStream<unknown, FramedMessage>, opts: WatchSinkOptions): WatchSink {
  const { framing, gzip, metrics, maxBufferedBytes } = opts;
  const formLabel = gzip ? `${opts.form}+gzip` : opts.form;
  let queuedBytes = 0;
  let waitingForBytes: (() => void) | undefined;
  return {
    write(message) {
      const framed = framing.frame(message, gzip);
      const bytes = framed.length;
      metrics?.sent(formLabel, message.events, bytes);
      queuedBytes += bytes;
      const roomForMore = call.write(framed, () => {
        queuedBytes -= bytes;
        const resume = waitingForBytes;
        if (resume !== undefined && queuedBytes <= maxBufferedBytes) {
          waitingForBytes = undefined;
          resume();
        }
      });
      return roomForMore && queuedBytes <= maxBufferedBytes;
    },
    onDrain(callback) {
      // 'drain' comes once grpc-js's message queue is empty (so no bytes are queued either).
      if (call.writableNeedDrain) call.once('drain', callback);
      else waitingForBytes = callback;
    },
    buffered: () => call.writableLength,
    bufferedBytes: () => queuedBytes,
    end: opts.end,
  };
}
