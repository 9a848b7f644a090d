// Structured logs: one JSON object per line on stderr; quiet by default (info and above).
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  with(fields: Record<string, unknown>): Logger;
}

export function createLogger(opts: { level?: Level; write?: (line: string) => void; fields?: Record<string, unknown> } = {}): Logger {
  const min = ORDER[opts.level ?? 'info'];
  const write = opts.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const base = opts.fields ?? {};
  const emit = (level: Level) => (msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < min) return;
    write(JSON.stringify({ ts: new Date().toISOString(), level, msg, ...base, ...fields }, errorReplacer));
  };
  return {
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
    with: (fields) => createLogger({ level: opts.level ?? 'info', write, fields: { ...base, ...fields } }),
  };
}

export const silentLogger: Logger = createLogger({ write: () => {} });

function errorReplacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? value.message : value;
}

export function parseLevel(s: string | undefined): Level | undefined {
  return s === 'debug' || s === 'info' || s === 'warn' || s === 'error' ? s : undefined;
}

/** How many names a log line lists before it only counts (the full list is one `cosictl get` away). */
export const LOGGED_NAMES = 5;

/**
 * A list of resource names as a log field: its count and the first few names, so a change to 1,000 static pods
 * stays one short line instead of 30 KB.
 */
/** The same as text, for messages: "a, b, c, d, e and 995 more". */
export function namesForText(names: readonly string[]): string {
  const { first, more } = namesForLog(names);
  return more === undefined ? first.join(', ') : `${first.join(', ')} and ${more} more`;
}

export function namesForLog(names: readonly string[]): { count: number; first: string[]; more?: number } {
  const first = names.slice(0, LOGGED_NAMES);
  return names.length > first.length ? { count: names.length, first, more: names.length - first.length } : { count: names.length, first };
}
