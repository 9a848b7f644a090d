// Hand-framed protobuf for the hot paths: a resource is encoded once, an event once per shape,
// and responses are concatenations of those bytes (no re-encoding per watcher). The watch layer builds its events
// from these and the API layer above it frames Get and List answers with them, so they live here, below both.
import { toWireMetadata, type Resource } from '../../shared/resource.js';
import { EventType, wire } from '../../shared/wire.js';
import type { Registry } from '../resources/registry.js';
import { toYaml } from './yaml-spec.js';

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

function lengthDelimited(tag: number, bytes: Uint8Array): Buffer[] {
  return [Buffer.of(tag), varint(bytes.length), Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)];
}

// Tags: (field number << 3) | wire type; 2 = length-delimited, 0 = varint.
const TAG = { field1: 0x0a, eventType: 0x10, old: 0x1a, error: 0x22, bookmark: 0x2a } as const;

// Where the YAML text comes from, for the callers that only need that (the bench, tests).
export { toYaml };

/**
 * How a watch's events are encoded. `full` is the reference's: each resource with its spec as protobuf and as YAML,
 * an UPDATED event with the old resource too. `lean` (asked for with request metadata `cosi-event-form: lean`) is
 * what a client that keeps its own view needs: the YAML spec only, and no old resource.
 */
export type EventForm = 'full' | 'lean';

/** time.Time{} as a google.protobuf.Timestamp: year 1, not 1970. */
const GO_ZERO_TIME = { seconds: -62_135_596_800, nanos: 0 };
const placeholders = new Map<string, Buffer>();

/** Where the Resource bytes start in a message: after the 5-byte gRPC prefix, field 1's tag and its length (a varint). */
function resourceOffset(message: Buffer): number {
  let i = 6;
  while (((message[i] ?? 0) & 0x80) !== 0) i++;
  return i + 1;
}

export class Frames {
  /**
   * One buffer per resource version: its GetResponse/ListResponse as a whole gRPC message (5-byte prefix included),
   * which Get and List send as they are; the Resource bytes (for watch events) are a view into it.
   */
  private readonly messages = new WeakMap<Resource, Buffer>();
  // The lean Resource bytes (YAML spec only), for lean watchers.
  private readonly leans = new WeakMap<Resource, Buffer>();
  private encodings = 0;

  constructor(private readonly registry: Registry) {}

  /** Resource versions encoded in the full form so far (tests: a read that finds its bytes encodes nothing). */
  get encoded(): number {
    return this.encodings;
  }

  /** Whether the resource's full encoding is kept: reading it costs no encoding. */
  has(r: Resource): boolean {
    return this.messages.has(r);
  }

  /** cosi.resource.Resource bytes, encoded once for the (immutable) resource. */
  resource(r: Resource): Buffer {
    const message = this.message(r);
    return message.subarray(resourceOffset(message));
  }

  /** cosi.resource.Resource bytes with the YAML spec only (no proto_spec), encoded once. */
  leanResource(r: Resource): Buffer {
    let bytes = this.leans.get(r);
    if (bytes === undefined) {
      const full = this.messages.get(r);
      bytes = Buffer.from(wire.resource.encode({ metadata: toWireMetadata(r.metadata), spec: { protoSpec: new Uint8Array(), yamlSpec: this.yamlSpec(r, full?.subarray(resourceOffset(full))) } }));
      this.leans.set(r, bytes);
    }
    return bytes;
  }

  /** Drops the cached encoding of a resource version that is no longer current (events carry their own copy). */
  forget(r: Resource): void {
    this.messages.delete(r);
    this.leans.delete(r);
  }

  /** A GetResponse or ListResponse (both are { resource = 1 }), without the gRPC message prefix. */
  single(r: Resource): Buffer {
    return this.message(r).subarray(5);
  }

  /**
   * The GetResponse/ListResponse of the resource as a whole gRPC message (uncompressed): encoded once, when the
   * resource was committed or first read, and sent as it is by every Get and List.
   */
  message(r: Resource): Buffer {
    let message = this.messages.get(r);
    if (message === undefined) {
      const def = this.registry.lookup(r.metadata.type);
      const response = wire.getResponse.encode({
        resource: {
          metadata: toWireMetadata(r.metadata),
          spec: { protoSpec: def?.encodeProto?.(r.spec) ?? new Uint8Array(), yamlSpec: this.yamlSpec(r, this.leans.get(r)) },
        },
      });
      // Its own memory, exactly sized: kept for as long as the version is current (a pooled slice would pin 8 KiB).
      message = Buffer.allocUnsafeSlow(5 + response.length);
      message.writeUInt8(0, 0); // not compressed
      message.writeUInt32BE(response.length, 1);
      message.set(response, 5);
      this.messages.set(r, message);
      this.encodings++;
    }
    return message;
  }

  /** The resource's yaml_spec: read back from its other encoding when there is one (decoding is far cheaper than YAML). */
  private yamlSpec(r: Resource, other: Buffer | undefined): string {
    const known = other === undefined ? undefined : wire.resource.decode(other).spec?.yamlSpec;
    return known ?? toYaml(r.spec);
  }

  /**
   * cosi.resource.Event bytes; a lean event has the lean resource and never the old one. `resource` may be bytes
   * already encoded (a placeholder).
   */
  event(type: EventType, resource: Resource | Buffer | undefined, old: Resource | undefined, bookmark: Uint8Array | undefined, error?: string, form: EventForm = 'full'): Buffer {
    const parts: Buffer[] = [];
    if (Buffer.isBuffer(resource)) parts.push(...lengthDelimited(TAG.field1, resource));
    else if (resource !== undefined) parts.push(...lengthDelimited(TAG.field1, form === 'lean' ? this.leanResource(resource) : this.resource(resource)));
    if (type !== EventType.CREATED) parts.push(Buffer.of(TAG.eventType), varint(type));
    if (old !== undefined && form === 'full') parts.push(...lengthDelimited(TAG.old, this.resource(old)));
    if (error !== undefined) parts.push(...lengthDelimited(TAG.error, Buffer.from(error, 'utf8')));
    if (bookmark !== undefined) parts.push(...lengthDelimited(TAG.bookmark, bookmark));
    return Buffer.concat(parts);
  }

  /**
   * The resource the reference runtime puts in events that are about no resource (BOOTSTRAPPED, NOOP: id empty) and in
   * the first event of a watch of a resource that does not exist (DESTROYED: its id): a tombstone with the kind set,
   * version "undefined", Go's zero time (0001-01-01, so Go code reads time.Time{} back) and an empty spec. Go clients
   * that read such an event's resource get this rather than nil, as they do from Talos.
   */
  static placeholder(namespace: string, type: string, id = ''): Buffer {
    const key = `${namespace}\n${type}\n${id}`;
    let bytes = placeholders.get(key);
    if (bytes === undefined) {
      bytes = Buffer.from(
        wire.resource.encode({
          metadata: { namespace, type, id, version: 'undefined', owner: '', phase: 'running', created: GO_ZERO_TIME, updated: GO_ZERO_TIME, finalizers: [], labels: {}, annotations: {} },
          spec: { protoSpec: new Uint8Array(), yamlSpec: '' },
        }),
      );
      // Kinds are few; ids of missing resources are not: only the id-less ones stay.
      if (id === '') placeholders.set(key, bytes);
    }
    return bytes;
  }

  /** A WatchResponse carrying the given encoded events (none: the "ready" marker). */
  static watchResponse(events: readonly Buffer[]): Buffer {
    const parts: Buffer[] = [];
    for (const e of events) parts.push(...lengthDelimited(TAG.field1, e));
    return Buffer.concat(parts);
  }
}
