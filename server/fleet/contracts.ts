// What the fleet's parts hand each other (docs/design/fleet.md §3-4): an owner's acquisition of a node, and the
// writes a node's follower asks the writer to commit under it.

/** A node this replica owns, as read in the acquisition's own transaction. */
export interface Acquired {
  readonly node: string;
  /** The owner key's create_revision, as a decimal string: every write for the node is fenced on it. */
  readonly token: string;
  /** The node's bookmark per mirrored type, as the last owner committed them with its data. */
  readonly bookmarks: ReadonlyMap<string, Uint8Array>;
  /** What the fleet holds of the node per mirrored type: node-local id -> mirrorDigest of the stored value. */
  readonly written: ReadonlyMap<string, ReadonlyMap<string, string>>;
  /** The node's FleetNode value as stored (cosi-resource/1 text), if any. */
  readonly fleetNode: string | undefined;
}

/** One write for a node: a put or a delete of one key, and the bookmark it brings the node's watch of a type to. */
export interface NodeOp {
  /** The whole etcd key. */
  readonly key: string;
  /** The value to put; null deletes the key. */
  readonly value: string | null;
  /** Once this op is committed, the node's watch of `type` resumes from `value`. */
  readonly bookmark?: { readonly type: string; readonly value: Uint8Array };
}

/** What became of a submitted batch: all committed in order, or refused because the node is no longer ours. */
export type SubmitResult = { readonly committed: number } | 'fenced';
