// cosictl logs: a container's log (-k <id>) or the kubelet's (kubelet) from one or more nodes, each line prefixed
// with its node as talosctl prints it (`172.20.0.3: 2022-02-10T15:26:01.289208227Z stderr F ...`).
import { CosiError } from '../../shared/errors.js';
import { openTargets, type TargetOptions } from './get.js';

export interface LogsCliOptions extends TargetOptions {
  /** A container ID as `containers -k` lists it (or `<ns>/<pod>:<container>`), or `kubelet`. */
  id: string;
  follow: boolean;
  /** The last N lines (N >= 0); undefined: the whole log. */
  tail: number | undefined;
}

const NEWLINE = 0x0a;
const NEWLINE_BUF = Buffer.from('\n');
/** A node's unfinished line is held up to this size; past it, it is written and the node holds the output. */
const MAX_CARRY = 1 << 20;

export async function runLogs(o: LogsCliOptions): Promise<number> {
  const { targets, labelOf } = await openTargets(o);
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  // Ctrl-C cancels the streams; what arrived is printed. (A closed stdout, `cosictl logs ... | head`, ends the
  // process quietly: main.ts.)
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const out = new LineMerger(stdoutWriter(abort.signal));
  let failed = 0;
  try {
    await Promise.all(
      targets.map(async (t) => {
        const lines = out.node(() => labelOf(t.node));
        try {
          const stream = t.client.logs(o.id, { follow: o.follow, signal: abort.signal, ...(o.tail !== undefined ? { tailLines: o.tail } : {}) });
          for await (const chunk of stream) await lines.push(chunk);
        } catch (err) {
          // One node: its error is the command's. Several: reported next to the others' lines, which go on.
          if (targets.length === 1) throw err;
          failed++;
          process.stderr.write(`error: node ${t.node}: ${err instanceof CosiError || err instanceof Error ? err.message : String(err)}\n`);
        } finally {
          await lines.end();
        }
      }),
    );
    return failed > 0 ? 1 : 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const t of targets) t.client.close();
  }
}

/** Writes to stdout, waiting for it to drain (the streams are pulled no faster than the terminal or pipe reads). */
function stdoutWriter(signal: AbortSignal): (b: Buffer) => Promise<void> {
  return (b) => {
    // A closed pipe: nothing more can be printed (main.ts ends the process on its error event).
    if (process.stdout.destroyed || process.stdout.writableEnded) return Promise.resolve();
    if (process.stdout.write(b)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        process.stdout.off('drain', done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      process.stdout.once('drain', done);
      signal.addEventListener('abort', done);
    });
  };
}

/**
 * Lines of many nodes onto one output, each prefixed with its node and never mixed within a line. A chunk's whole
 * lines go out at once; its unfinished end is carried until the rest of the line comes (or the stream ends: then
 * it is printed with a newline). A line longer than MAX_CARRY is written as it comes, and while it is unfinished
 * its node holds the output: other nodes wait (their streams are not pulled meanwhile).
 */
export class LineMerger {
  private holder: NodeLines | undefined;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly writeOut: (b: Buffer) => Promise<void>,
    readonly maxCarry = MAX_CARRY,
  ) {}

  /** A node's lines; `label` is asked when its first line is printed (the server has named itself by then). */
  node(label: () => string): NodeLines {
    return new NodeLines(this, label);
  }

  /** Writes `b` for `from`; `finishesLine: false` leaves `from` holding the output until it finishes its line. */
  async write(from: NodeLines, b: Buffer, finishesLine: boolean): Promise<void> {
    while (this.holder !== undefined && this.holder !== from) await new Promise<void>((resolve) => this.waiters.push(resolve));
    this.holder = finishesLine ? undefined : from;
    await this.writeOut(b);
    if (finishesLine) for (const w of this.waiters.splice(0)) w();
  }
}

export class NodeLines {
  private prefix: Buffer | undefined;
  private carry: Buffer[] = [];
  private carryBytes = 0;
  /** Part of the current line is out already (it had no room to be carried): the rest goes without a prefix. */
  private midLine = false;

  constructor(
    private readonly merger: LineMerger,
    private readonly label: () => string,
  ) {}

  private lineStart(): Buffer[] {
    if (this.midLine) return [];
    this.prefix ??= Buffer.from(`${this.label()}: `);
    return [this.prefix];
  }

  /** A chunk of the node's log: bytes as stored, written unchanged after the prefix. */
  async push(chunk: Buffer): Promise<void> {
    const last = chunk.lastIndexOf(NEWLINE);
    if (last < 0) {
      this.hold(chunk);
      if (this.carryBytes > this.merger.maxCarry) await this.spill();
      return;
    }
    const first = chunk.indexOf(NEWLINE);
    const parts = [...this.lineStart(), ...this.carry, chunk.subarray(0, first + 1)];
    this.carry = [];
    this.carryBytes = 0;
    this.midLine = false;
    for (let start = first + 1; start <= last; ) {
      const end = chunk.indexOf(NEWLINE, start);
      parts.push(...this.lineStart(), chunk.subarray(start, end + 1));
      start = end + 1;
    }
    const rest = chunk.subarray(last + 1);
    await this.merger.write(this, Buffer.concat(parts), true);
    if (rest.length > 0) {
      this.hold(rest);
      if (this.carryBytes > this.merger.maxCarry) await this.spill();
    }
  }

  /** The stream ended: an unfinished last line is printed with a newline, as talosctl prints it. */
  async end(): Promise<void> {
    if (!this.midLine && this.carryBytes === 0) return;
    const parts = [...this.lineStart(), ...this.carry, NEWLINE_BUF];
    this.carry = [];
    this.carryBytes = 0;
    this.midLine = false;
    await this.merger.write(this, Buffer.concat(parts), true);
  }

  private hold(b: Buffer): void {
    this.carry.push(b);
    this.carryBytes += b.length;
  }

  /** Writes the carried part of a too-long line and keeps the output until the line ends. */
  private async spill(): Promise<void> {
    const parts = [...this.lineStart(), ...this.carry];
    this.carry = [];
    this.carryBytes = 0;
    this.midLine = true;
    await this.merger.write(this, Buffer.concat(parts), false);
  }
}
