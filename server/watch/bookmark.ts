// Bookmarks: opaque to clients; to us, a position in one store instance's history.
import { CosiError } from '../../shared/errors.js';

const FORMAT_VERSION = 1;
const INSTANCE_BYTES = 8;
const MAX_ID_BYTES = 4096;

/**
 * A position: after revision `revision`, or, while a bootstrap at snapshot `revision` is under way,
 * after the bootstrap item with ID `afterId` (so a disconnect during bootstrap resumes too).
 */
export interface Position {
  readonly revision: number;
  readonly bootstrapAfterId?: string;
}

export function encodeBookmark(instance: string, pos: Position): Buffer {
  const id = pos.bootstrapAfterId === undefined ? undefined : Buffer.from(pos.bootstrapAfterId, 'utf8');
  const buf = Buffer.alloc(2 + INSTANCE_BYTES + 8 + (id?.length ?? 0));
  buf.writeUInt8(FORMAT_VERSION, 0);
  buf.writeUInt8(id === undefined ? 0 : 1, 1);
  Buffer.from(instance, 'hex').copy(buf, 2, 0, INSTANCE_BYTES);
  buf.writeBigUInt64BE(BigInt(pos.revision), 2 + INSTANCE_BYTES);
  id?.copy(buf, 2 + INSTANCE_BYTES + 8);
  return buf;
}

/** Decodes a bookmark of this instance; a malformed or foreign one is invalid-bookmark. */
export function decodeBookmark(instance: string, bytes: Uint8Array): Position {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const header = 2 + INSTANCE_BYTES + 8;
  if (buf.length < header || buf.length > header + MAX_ID_BYTES || buf.readUInt8(0) !== FORMAT_VERSION) {
    throw new CosiError('invalid-bookmark', 'invalid bookmark: not a bookmark this server issued; watch without it (with bootstrap) to start over');
  }
  const mode = buf.readUInt8(1);
  if (buf.subarray(2, 2 + INSTANCE_BYTES).toString('hex') !== instance) {
    throw new CosiError('too-old', 'bookmark is from another server instance (the server restarted); list again and watch from the new state');
  }
  const revision = Number(buf.readBigUInt64BE(2 + INSTANCE_BYTES));
  if (mode === 0 && buf.length === header) return { revision };
  if (mode === 1) return { revision, bootstrapAfterId: buf.subarray(header).toString('utf8') };
  throw new CosiError('invalid-bookmark', 'invalid bookmark: unknown format; watch without it (with bootstrap) to start over');
}
