// The simulated fleet's changes: a steady rate over random nodes, plus a flood on one node or one node flapping.
// Timer-driven, with each tick writing the changes owed since the last one, so that hundreds per second cost a few
// timer callbacks, not one per change.

/** What the churn needs of a node (SimNode has it). */
export interface ChurnNode {
  readonly name: string;
  readonly isUp: boolean;
  readonly statusIds: readonly string[];
  bumpStatus(id: string, at?: number): void;
  down(): void;
  up(): Promise<void>;
}

export interface ChurnOptions {
  /** Changes per second over the whole fleet (0: none). */
  rate: number;
  /** How often changes are written (default 50 ms). */
  tickMs?: number;
  /** In [0, 1) (default Math.random): which node and which status change. */
  random?: () => number;
  /** Told when a flapping node cannot come back up. */
  onError?: (what: string, err: unknown) => void;
}

interface Owed {
  perSec: number;
  /** Fractional changes carried to the next tick. */
  carry: number;
}

export class Churn {
  private readonly steady: Owed;
  private readonly floods = new Map<ChurnNode, Owed>();
  private readonly flaps = new Map<ChurnNode, NodeJS.Timeout>();
  private timer: NodeJS.Timeout | undefined;
  private last = 0;
  private readonly tickMs: number;
  private readonly random: () => number;
  /** Changes written since the start. */
  changes = 0;

  constructor(
    private readonly nodes: () => readonly ChurnNode[],
    private readonly opts: ChurnOptions,
  ) {
    this.steady = { perSec: checkRate(opts.rate), carry: 0 };
    this.tickMs = opts.tickMs ?? 50;
    this.random = opts.random ?? Math.random;
  }

  get rate(): number {
    return this.steady.perSec;
  }

  start(): void {
    if (this.timer !== undefined) return;
    this.last = Date.now();
    this.timer = setInterval(() => this.tick(), this.tickMs);
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const t of this.flaps.values()) clearInterval(t);
    this.flaps.clear();
  }

  setRate(perSec: number): void {
    this.steady.perSec = checkRate(perSec);
  }

  /** `perSec` more changes on this node alone, on top of the steady rate (0: stop). */
  flood(node: ChurnNode, perSec: number): void {
    if (checkRate(perSec) === 0) this.floods.delete(node);
    else this.floods.set(node, { perSec, carry: 0 });
  }

  /** The node goes down and comes back up every `periodMs` (0: stop flapping, and leave it up). */
  flap(node: ChurnNode, periodMs: number): void {
    clearInterval(this.flaps.get(node));
    this.flaps.delete(node);
    if (periodMs <= 0) {
      void this.bringUp(node);
      return;
    }
    const timer = setInterval(() => {
      if (node.isUp) node.down();
      else void this.bringUp(node);
    }, periodMs);
    this.flaps.set(node, timer);
  }

  /** Ends a flap on this node, if any (a down or up asked for by hand overrides it). */
  unflap(node: ChurnNode): void {
    clearInterval(this.flaps.get(node));
    this.flaps.delete(node);
  }

  /** Writes what is owed since the last tick. A tick that came late writes at most one second's worth. */
  private tick(): void {
    const now = Date.now();
    const elapsed = Math.min(now - this.last, 1000);
    this.last = now;
    const steady = owed(this.steady, elapsed);
    if (steady > 0) {
      const up = this.nodes().filter((n) => n.isUp && n.statusIds.length > 0);
      for (let i = 0; i < steady && up.length > 0; i++) this.bump(up[Math.floor(this.random() * up.length)] as ChurnNode, now);
    }
    for (const [node, flood] of this.floods) {
      const n = owed(flood, elapsed);
      // Down or not: a node cut off from the fleet still runs, and its changes wait in its history.
      for (let i = 0; i < n; i++) this.bump(node, now);
    }
  }

  /** One change on this node now, up or down. */
  bump(node: ChurnNode, at = Date.now()): void {
    const ids = node.statusIds;
    const id = ids[Math.floor(this.random() * ids.length)];
    if (id === undefined) return;
    node.bumpStatus(id, at);
    this.changes++;
  }

  private async bringUp(node: ChurnNode): Promise<void> {
    try {
      await node.up();
    } catch (err) {
      this.opts.onError?.(`node ${node.name} did not come back up`, err);
    }
  }
}

/** Whole changes owed after `elapsedMs`, keeping the fraction for the next tick. */
function owed(o: Owed, elapsedMs: number): number {
  const exact = o.carry + (o.perSec * elapsedMs) / 1000;
  const whole = Math.floor(exact);
  o.carry = exact - whole;
  return whole;
}

function checkRate(perSec: number): number {
  if (!Number.isFinite(perSec) || perSec < 0) throw new Error(`a rate must be a number of changes per second >= 0, not ${perSec}`);
  return perSec;
}
