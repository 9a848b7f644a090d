// The one closed set of error kinds, and their one mapping to gRPC status codes.
import { status as GrpcStatus } from '@grpc/grpc-js';

export type ErrorKind =
  | 'not-found'
  | 'already-exists'
  | 'version-conflict'
  | 'owner-conflict'
  | 'phase-conflict'
  | 'invalid-bookmark'
  | 'too-old'
  | 'invalid-argument'
  | 'permission-denied'
  | 'unauthenticated'
  | 'unimplemented'
  | 'resource-exhausted'
  | 'unavailable'
  | 'cancelled'
  | 'deadline-exceeded'
  | 'not-registered'
  | 'ambiguous'
  | 'internal';

// Ordered so that fromGrpcCode picks the first (most general) kind for a code.
const KIND_TO_CODE: ReadonlyArray<readonly [ErrorKind, GrpcStatus]> = [
  ['not-found', GrpcStatus.NOT_FOUND],
  ['already-exists', GrpcStatus.ALREADY_EXISTS],
  ['version-conflict', GrpcStatus.FAILED_PRECONDITION],
  ['invalid-bookmark', GrpcStatus.FAILED_PRECONDITION],
  ['phase-conflict', GrpcStatus.FAILED_PRECONDITION],
  ['too-old', GrpcStatus.OUT_OF_RANGE],
  ['invalid-argument', GrpcStatus.INVALID_ARGUMENT],
  ['permission-denied', GrpcStatus.PERMISSION_DENIED],
  ['owner-conflict', GrpcStatus.PERMISSION_DENIED],
  ['unauthenticated', GrpcStatus.UNAUTHENTICATED],
  ['unimplemented', GrpcStatus.UNIMPLEMENTED],
  ['resource-exhausted', GrpcStatus.RESOURCE_EXHAUSTED],
  ['unavailable', GrpcStatus.UNAVAILABLE],
  ['cancelled', GrpcStatus.CANCELLED],
  ['deadline-exceeded', GrpcStatus.DEADLINE_EXCEEDED],
  // Client-side resolution errors never cross the wire; NOT_FOUND is the nearest code.
  ['not-registered', GrpcStatus.NOT_FOUND],
  ['ambiguous', GrpcStatus.INVALID_ARGUMENT],
  ['internal', GrpcStatus.INTERNAL],
];

/** CosiError is the only error type the store, the API and the client library throw on purpose. */
export class CosiError extends Error {
  override readonly name = 'CosiError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
  }

  /** The gRPC status code this error travels as. */
  get code(): GrpcStatus {
    return grpcCodeOf(this.kind);
  }
}

export function grpcCodeOf(kind: ErrorKind): GrpcStatus {
  for (const [k, code] of KIND_TO_CODE) if (k === kind) return code;
  return GrpcStatus.INTERNAL;
}

/** The inverse of grpcCodeOf, for errors that arrive over the wire. */
export function kindOfGrpcCode(code: number): ErrorKind {
  for (const [kind, c] of KIND_TO_CODE) if (c === code) return kind;
  return 'internal';
}

export function isCosiError(err: unknown, kind?: ErrorKind): err is CosiError {
  return err instanceof CosiError && (kind === undefined || err.kind === kind);
}

export const errors = {
  notFound: (what: string) => new CosiError('not-found', `${what} doesn't exist`),
  invalid: (message: string) => new CosiError('invalid-argument', message),
  denied: (message: string) => new CosiError('permission-denied', message),
  unimplemented: (message: string) => new CosiError('unimplemented', message),
};
