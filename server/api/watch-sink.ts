// A watch's server stream as the hub sees it: grpc-js write()/'drain', plus a budget in bytes.
import type * as grpc from '@grpc/grpc-js';
import type { WatchSink } from '../watch/session.js';

/**
 * grpc-js reports a full stream after 16 queued messages whatever their size: 16 aggregated batches (or 16 large
 * resources) would sit in memory per watcher. The sink also reports full once `maxBufferedBytes` are queued and
 * reopens when the queue is back under it, so a slow watcher holds at most about that many bytes.
 */
export function grpcWatchSink(call: grpc.ServerWritableStream<unknown, Buffer>, maxBufferedBytes: number, end: WatchSink['end']): WatchSink {
  let queuedBytes = 0;
  let waitingForBytes: (() => void) | undefined;
  return {
    write(message) {
      queuedBytes += message.length;
      const roomForMore = call.write(message, () => {
        queuedBytes -= message.length;
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
    end,
  };
}
