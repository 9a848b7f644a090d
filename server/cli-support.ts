// What the server binaries (cosid, cosi-fleet) share on their command line: usage errors, the version, durations,
// file errors in a few words, and library log lines routed into our structured log.
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { format, parseArgs, type ParseArgsConfig } from 'node:util';

/** parseArgs's option definitions (the type is not exported by name). */
type OptionsConfig = NonNullable<ParseArgsConfig['options']>;
import type { Logger } from '../shared/log.js';

/** A mistake in the command line: exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The package's version, from the package.json next to dist/. */
export function version(): string {
  const pkg: unknown = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
  return pkg !== null && typeof pkg === 'object' && 'version' in pkg && typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

/** A duration flag: 15s, 500ms, 2m, or a bare number of seconds. */
export function duration(s: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(s.trim());
  if (m === null) throw new UsageError(`invalid duration ${JSON.stringify(s)}: use for example 15s or 500ms`);
  const n = Number(m[1]);
  return m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000;
}

/** What parseArgs gives for a server bin's options. */
export type Flags<O extends OptionsConfig> = ReturnType<typeof parseArgs<{ options: O; strict: true; allowPositionals: false }>>['values'];

/**
 * A server bin's command line: its flags, or the exit code when it was answered here: --help and --version (0), a
 * flag parseArgs refuses (2, with the usage on stderr). `options` must define `help` and `version`.
 */
export function serverFlags<O extends OptionsConfig>(bin: string, usage: string, options: O): Flags<O> | number {
  let values: Flags<O>;
  try {
    values = parseArgs({ options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    process.stderr.write(`${bin}: ${err instanceof Error ? err.message : String(err)}\n${usage}\n`);
    return 2;
  }
  const asked = values as { help?: unknown; version?: unknown };
  if (asked.help === true) {
    process.stdout.write(usage + '\n');
    return 0;
  }
  if (asked.version === true) {
    process.stdout.write(`${bin} ${version()}\n`);
    return 0;
  }
  return values;
}

/** Why a file could not be read, short: its error code (ENOENT, EACCES, EISDIR), else the message. */
export function readProblem(err: unknown): string {
  if (err !== null && typeof err === 'object' && 'code' in err && typeof err.code === 'string') return err.code;
  return err instanceof Error ? err.message : String(err);
}

/**
 * grpc-js's own log lines (a failed bind says "No address added out of total 1 resolved" before we can say why, in
 * our words) go to the debug level. Node's own warnings would be the only lines on stderr that are not JSON. The
 * etcd client (etcd3 over grpc-js) sends an IP endpoint's address as the TLS server name, which Node warns about
 * (DEP0123) at every start: the certificate is still checked against that IP, so that one goes to debug; any other
 * warning is a warn line.
 */
export function routeLibraryLogs(log: Logger): void {
  const grpcLine = (message: unknown, ...rest: unknown[]) => log.debug('grpc-js', { text: format(message, ...rest) });
  grpc.setLogger({ error: grpcLine, info: grpcLine, debug: grpcLine });
  process.removeAllListeners('warning');
  process.on('warning', (w: Error & { code?: string }) => {
    const fields = { code: w.code ?? w.name, text: w.message };
    if (w.code === 'DEP0123') log.debug('node warning', fields);
    else log.warn('node warning', fields);
  });
}

/**
 * SIGTERM and SIGINT (and, under an IPC channel, the parent's end: even its SIGKILL closes the channel) stop the
 * server gracefully, then exit 0; a second signal exits at once with 1. `stopping` says what a stop does.
 */
export function stopOnSignals(log: Logger, stopping: string, stop: () => Promise<void>): void {
  let signalled = false;
  const onSignal = (signal: string) => {
    if (signalled) {
      log.warn('second signal: exiting now', { signal });
      process.exit(1);
    }
    signalled = true;
    log.info(stopping, { signal });
    void stop().then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        log.error('stop failed', { error: err instanceof Error ? err.message : String(err) });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  if (process.send !== undefined) process.on('disconnect', () => onSignal('parent gone'));
}
