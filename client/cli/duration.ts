// Durations on cosictl's command line, written as Go writes them (kubectl's and talosctl's flags take Go's
// time.ParseDuration form): "30s", "1m30s", "500ms", "1.5h", "0"; one parser for every flag that takes one.

const UNIT_MS: Readonly<Record<string, number>> = { ns: 1e-6, us: 1e-3, µs: 1e-3, μs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION = /^([+-]?)((?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+|0)$/;
const PART = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g;

/** A Go duration in milliseconds (negative when signed so); undefined when `value` is not one. */
export function parseDuration(value: string): number | undefined {
  const m = DURATION.exec(value);
  if (m === null) return undefined;
  let ms = 0;
  for (const part of (m[2] ?? '').matchAll(PART)) ms += Number(part[1]) * (UNIT_MS[part[2] ?? ''] ?? 0);
  return m[1] === '-' && ms > 0 ? -ms : ms;
}
