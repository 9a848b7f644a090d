// A node's stored watch bookmark, `<P>bm/<node>/<type>` = `{"w":"<token>","b":"<base64>"}`: the bookmark bytes the
// node's watch of that type resumes from, and the fence token of the owner that wrote them (for debugging and the
// fence test). Written by the writer in the same transaction as the data it covers; read back at acquisition.
// docs/design/fleet.md §2.

export interface StoredBookmark {
  readonly token: string;
  readonly bookmark: Uint8Array;
}

export function encodeBookmarkValue(token: string, bookmark: Uint8Array): string {
  return JSON.stringify({ w: token, b: Buffer.from(bookmark.buffer, bookmark.byteOffset, bookmark.byteLength).toString('base64') });
}

/** The stored bookmark, or undefined for a value that is not one (it is then ignored: the node lists again). */
export function decodeBookmarkValue(value: string | Uint8Array): StoredBookmark | undefined {
  const text = typeof value === 'string' ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('utf8');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const { w, b } = parsed as { w?: unknown; b?: unknown };
  if (typeof w !== 'string' || typeof b !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(b)) return undefined;
  return { token: w, bookmark: new Uint8Array(Buffer.from(b, 'base64')) };
}
