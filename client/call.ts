// What every call carries: the caller's AbortSignal, the client's own "closed" signal, and a deadline; and the one
// place a gRPC failure becomes a CosiError on the client.
import * as grpc from '@grpc/grpc-js';
import { CosiError, ERROR_KIND_METADATA_KEY, kindOfStatus, StatusCode } from '../shared/errors.js';
import type { CallOptions } from './client.js';

/** The longest delay a Node timer can wait (a longer one fires after 1 ms). */
const MAX_TIMER_MS = 0x7fffffff;

/** A duration option: a positive number of milliseconds (at most about 24.8 days, a timer's limit), or Infinity for none. */
export function checkMs(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value) || value <= 0) {
    throw new CosiError('invalid-argument', `${name} must be a positive number of milliseconds or Infinity, not ${String(value)}`);
  }
  return value === Infinity ? Infinity : Math.min(value, MAX_TIMER_MS);
}

/** Turns a gRPC failure into the library's one error type: the kind from `cosi-error-kind`, else from the code. */
export function toCosiError(err: unknown, endpoint: string): CosiError {
  if (err instanceof CosiError) return err;
  const e = (err ?? {}) as { code?: unknown; details?: unknown; message?: unknown; metadata?: unknown };
  if (typeof e.code === 'number') {
    const md = e.metadata instanceof grpc.Metadata ? e.metadata : undefined;
    const kindValue = md?.get(ERROR_KIND_METADATA_KEY)[0];
    const details = typeof e.details === 'string' && e.details !== '' ? e.details : typeof e.message === 'string' ? e.message : 'unknown error';
    // When the client could not tell why (see connectionFailure), at least where it tried.
    const hint = isConnectionFailure(err) ? ` (cannot reach cosid at ${endpoint})` : '';
    return new CosiError(kindOfStatus(e.code, kindValue), `${details}${hint}`);
  }
  return new CosiError('internal', err instanceof Error ? err.message : String(err));
}

/**
 * Whether a gRPC failure is the connection's rather than the server's answer: UNAVAILABLE without cosid's headers
 * (an error that carries them came from cosid itself, its runtime being down, say).
 */
export function isConnectionFailure(err: unknown): boolean {
  const e = (err ?? {}) as { code?: unknown; metadata?: unknown };
  if (err instanceof CosiError || e.code !== StatusCode.UNAVAILABLE) return false;
  const md = e.metadata instanceof grpc.Metadata ? e.metadata : undefined;
  return md === undefined || (md.get(ERROR_KIND_METADATA_KEY).length === 0 && md.get('cosi-node').length === 0);
}

/** gRPC metadata naming the node a call is for, as talosctl's `-n`: the endpoint dialled routes it there. */
export const NODE_METADATA_KEY = 'node';

/** Adds `node` to a call's metadata (every call of a client made for a node goes through here). */
export function nodeInterceptor(node: string): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set(NODE_METADATA_KEY, node);
        next(metadata, listener);
      },
    });
}

/** Says in one line why the connection fails (client/diagnose.ts), or undefined when it cannot tell. */
export type ConnectionDiagnosis = (signal: AbortSignal) => Promise<string | undefined>;

/**
 * A failure as a CosiError, and when it is the connection's, the diagnosis's words instead of grpc-js's (the
 * original error is the cause).
 */
export async function connectionFailure(err: unknown, converted: CosiError, diagnose: ConnectionDiagnosis, signal: AbortSignal): Promise<CosiError> {
  if (!isConnectionFailure(err) || converted.kind !== 'unavailable') return converted;
  const why = await diagnose(signal).catch(() => undefined);
  return why === undefined ? converted : new CosiError('unavailable', why, { cause: converted });
}

/**
 * One call's cancellation and deadline. `what` names the call in messages ("Get", "List").
 * The deadline is absolute, so the steps of one call (resolving the type, then the call) share it.
 */
export class CallContext {
  readonly timeoutMs: number;
  /** Epoch milliseconds; Infinity: none. */
  readonly deadline: number;
  private readonly signal: AbortSignal | undefined;

  constructor(
    readonly what: string,
    private readonly endpoint: string,
    opts: CallOptions,
    defaultTimeoutMs: number,
    private readonly closing: AbortSignal,
    private readonly diagnose?: ConnectionDiagnosis,
    /** The node the call names (gRPC metadata `node`: the endpoint passes it on to that node). */
    private readonly node?: string,
  ) {
    this.timeoutMs = checkMs('timeoutMs', opts.timeoutMs, defaultTimeoutMs);
    this.deadline = Number.isFinite(this.timeoutMs) ? Date.now() + this.timeoutMs : Infinity;
    this.signal = opts.signal;
  }

  /** The error of a call stopped by its caller's signal or by the client's close, if it was. */
  cancellation(): CosiError | undefined {
    if (this.signal?.aborted === true) {
      const reason: unknown = this.signal.reason;
      const why = reason instanceof Error && reason.name !== 'AbortError' ? `: ${reason.message}` : typeof reason === 'string' ? `: ${reason}` : '';
      return new CosiError('cancelled', `${this.what} was cancelled${why}`);
    }
    if (this.closing.aborted) return new CosiError('cancelled', `${this.what} was cancelled: the client was closed`);
    return undefined;
  }

  /** Whether the caller stopped the call (its signal), as opposed to the client being closed. */
  get callerAborted(): boolean {
    return this.signal?.aborted === true;
  }

  throwIfCancelled(): void {
    const err = this.cancellation();
    if (err !== undefined) throw err;
  }

  /** Runs `cancel` once when the caller aborts or the client closes; returns what stops listening. */
  onCancel(cancel: () => void): () => void {
    let done = false;
    const once = () => {
      if (done) return;
      done = true;
      cancel();
    };
    this.signal?.addEventListener('abort', once);
    this.closing.addEventListener('abort', once);
    if (this.signal?.aborted === true || this.closing.aborted) once();
    return () => {
      this.signal?.removeEventListener('abort', once);
      this.closing.removeEventListener('abort', once);
    };
  }

  grpcOptions(): grpc.CallOptions {
    return {
      ...(Number.isFinite(this.deadline) ? { deadline: new Date(this.deadline) } : {}),
      ...(this.node !== undefined ? { interceptors: [nodeInterceptor(this.node)] } : {}),
    };
  }

  /** The deadline's own error. */
  deadlineError(): CosiError {
    const from = this.node === undefined ? this.endpoint : `node ${this.node} through ${this.endpoint}`;
    return new CosiError('deadline-exceeded', `${this.what}: no complete answer from ${from} within ${this.timeoutMs} ms (deadline exceeded)`);
  }

  /** Waits for `p` unless the call is cancelled or its deadline passes first. */
  race<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let settled = false;
      let stop = () => {};
      const finish = (settle: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        stop();
        settle();
      };
      stop = this.onCancel(() => finish(() => reject(this.cancellation() ?? new CosiError('cancelled', `${this.what} was cancelled`))));
      if (settled) return stop();
      if (Number.isFinite(this.deadline)) {
        timer = setTimeout(() => finish(() => reject(this.deadlineError())), Math.max(0, this.deadline - Date.now()));
        timer.unref();
      }
      p.then(
        (v) => finish(() => resolve(v)),
        (err: unknown) => finish(() => reject(this.error(err))),
      );
    });
  }

  /** error(), with the diagnosis of a failed connection: what a call's failure is reported as. */
  async failure(err: unknown): Promise<CosiError> {
    const converted = this.error(err);
    if (this.diagnose === undefined || this.cancellation() !== undefined) return converted;
    return connectionFailure(err, converted, this.diagnose, this.closing);
  }

  /** A failure of this call as a CosiError: what cancelled it or timed it out, else the server's answer. */
  error(err: unknown): CosiError {
    const cancelled = this.cancellation();
    if (cancelled !== undefined) return cancelled;
    if (err instanceof CosiError) return err;
    const code = (err as { code?: unknown } | null)?.code;
    if (code === StatusCode.DEADLINE_EXCEEDED && Number.isFinite(this.deadline)) return this.deadlineError();
    return toCosiError(err, this.endpoint);
  }
}
