// The one closed set of error kinds, and their one mapping to and from gRPC status codes.
//
// A kind travels as its gRPC code. Several kinds share a code (FAILED_PRECONDITION is a version conflict, a phase
// conflict or an invalid bookmark), so cosid also sends the kind itself as the trailing metadata `cosi-error-kind`;
// a client reads it back when it is present and agrees with the code, and otherwise (a foreign server, a proxy that
// answered for the server, grpc-js's own client-side errors) takes the code's default kind from the same table.

/**
 * The gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html) as the plain numbers that
 * travel on the wire; the same values as grpc-js's `status` enum.
 */
export const StatusCode = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;
/** A gRPC status code, as a number (see the StatusCode constants). */
export type StatusCode = (typeof StatusCode)[keyof typeof StatusCode];

/**
 * What went wrong, one closed set. Each kind travels as one gRPC code (CosiError.code; the table below). Most are
 * the server's answers; a few are the client's own: `invalid-config` (a cosiconfig that cannot be used),
 * `not-registered` and `ambiguous` (a type name that names no type, or several), `cancelled` and
 * `deadline-exceeded` (the caller's AbortSignal or timeoutMs, or the client closed).
 */
export type ErrorKind =
  | 'cancelled'
  | 'unknown'
  | 'invalid-argument'
  | 'invalid-config'
  | 'ambiguous'
  | 'deadline-exceeded'
  | 'not-found'
  | 'not-registered'
  | 'already-exists'
  | 'permission-denied'
  | 'owner-conflict'
  | 'resource-exhausted'
  | 'version-conflict'
  | 'phase-conflict'
  | 'pending-finalizers'
  | 'invalid-bookmark'
  | 'failed-precondition'
  | 'aborted'
  | 'too-old'
  | 'unimplemented'
  | 'internal'
  | 'unavailable'
  | 'data-loss'
  | 'unauthenticated';

/** Every error status code: all but OK. */
type ErrorCode = Exclude<StatusCode, 0>;

/**
 * THE table, both directions. For each error code, the kinds that travel as it; the first is the code's default
 * kind: what an error with that code becomes when it carries no (or no fitting) `cosi-error-kind`. Each kind is
 * listed exactly once. The other kinds either never cross the wire (invalid-config, ambiguous, not-registered are
 * the client's own) or cross it with `cosi-error-kind` from cosid.
 */
const KINDS_BY_CODE = {
  [StatusCode.CANCELLED]: ['cancelled'],
  [StatusCode.UNKNOWN]: ['unknown'],
  [StatusCode.INVALID_ARGUMENT]: ['invalid-argument', 'invalid-config', 'ambiguous'],
  [StatusCode.DEADLINE_EXCEEDED]: ['deadline-exceeded'],
  [StatusCode.NOT_FOUND]: ['not-found', 'not-registered'],
  [StatusCode.ALREADY_EXISTS]: ['already-exists'],
  // A missing role and an owner conflict (a write by another controller) are both "not allowed".
  [StatusCode.PERMISSION_DENIED]: ['permission-denied', 'owner-conflict'],
  [StatusCode.RESOURCE_EXHAUSTED]: ['resource-exhausted'],
  // COSI servers (Talos's included) answer conflicts and invalid bookmarks alike with FAILED_PRECONDITION; the COSI
  // runtime's own client reads it as a conflict, and so does this table when the server does not say.
  // `failed-precondition` is the node's state refusing a change for now, not a conflict with what the caller read:
  // another ApplyConfiguration in progress (Talos's answer too), a machine config file cosid cannot write.
  [StatusCode.FAILED_PRECONDITION]: ['version-conflict', 'phase-conflict', 'pending-finalizers', 'invalid-bookmark', 'failed-precondition'],
  [StatusCode.ABORTED]: ['aborted'],
  [StatusCode.OUT_OF_RANGE]: ['too-old'],
  [StatusCode.UNIMPLEMENTED]: ['unimplemented'],
  [StatusCode.INTERNAL]: ['internal'],
  [StatusCode.UNAVAILABLE]: ['unavailable'],
  [StatusCode.DATA_LOSS]: ['data-loss'],
  [StatusCode.UNAUTHENTICATED]: ['unauthenticated'],
} as const satisfies { readonly [C in ErrorCode]: readonly [ErrorKind, ...ErrorKind[]] };

// Does not compile while a kind is missing from the table (test/client-errors.test.ts checks each is there once).
type Unlisted = Exclude<ErrorKind, (typeof KINDS_BY_CODE)[ErrorCode][number]>;
const everyKindListed: [Unlisted] extends [never] ? true : Unlisted = true;
void everyKindListed;

/** The trailing metadata key that carries an error's kind from cosid to the client. */
export const ERROR_KIND_METADATA_KEY = 'cosi-error-kind';

const CODE_OF_KIND = new Map<ErrorKind, ErrorCode>();
for (const [code, kinds] of Object.entries(KINDS_BY_CODE)) for (const kind of kinds) CODE_OF_KIND.set(kind, Number(code) as ErrorCode);

/** Every kind, in the table's order. */
export const ERROR_KINDS: readonly ErrorKind[] = [...CODE_OF_KIND.keys()];

/** CosiError is the only error type the store, the API and the client library throw on purpose. */
export class CosiError extends Error {
  override readonly name = 'CosiError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** The gRPC status code this error travels as (a number: see StatusCode). */
  get code(): StatusCode {
    return statusCodeOf(this.kind);
  }
}

/** The gRPC code a kind travels as. */
export function statusCodeOf(kind: ErrorKind): StatusCode {
  return CODE_OF_KIND.get(kind) ?? StatusCode.INTERNAL;
}

/** What an error with this gRPC code is when nothing says more: the code's default kind. */
export function defaultKindOf(code: number): ErrorKind {
  return KINDS_BY_CODE[code as ErrorCode]?.[0] ?? 'unknown';
}

/**
 * The kind of an error that arrived with this code and, maybe, a `cosi-error-kind` value: that value when it is a
 * kind that travels as this code, else the code's default kind.
 */
export function kindOfStatus(code: number, kindFromMetadata?: unknown): ErrorKind {
  if (typeof kindFromMetadata === 'string' && isErrorKind(kindFromMetadata) && CODE_OF_KIND.get(kindFromMetadata) === code) return kindFromMetadata;
  return defaultKindOf(code);
}

export function isErrorKind(s: string): s is ErrorKind {
  return CODE_OF_KIND.has(s as ErrorKind);
}

export function isCosiError(err: unknown, kind?: ErrorKind): err is CosiError {
  return err instanceof CosiError && (kind === undefined || err.kind === kind);
}
