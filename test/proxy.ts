// A TCP proxy on loopback that tests can stall (stop reading, so TCP and HTTP/2 flow control push back on the
// server) and cut (drop every connection), to make slow and disconnected watchers for real.
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export class StallableProxy {
  private readonly pairs = new Map<[Socket, Socket], { flowing: boolean }>();
  private stalled = false;

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
  ) {}

  static async start(target: () => { host: string; port: number }): Promise<StallableProxy> {
    let self: StallableProxy | undefined;
    const server = createServer((client) => self?.accept(client, target()));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    self = new StallableProxy(server, `127.0.0.1:${(server.address() as AddressInfo).port}`);
    return self;
  }

  private accept(client: Socket, target: { host: string; port: number }): void {
    const upstream = createConnection(target);
    const pair: [Socket, Socket] = [client, upstream];
    const state = { flowing: !this.stalled };
    this.pairs.set(pair, state);
    client.pipe(upstream);
    if (state.flowing) upstream.pipe(client);
    else upstream.pause();
    const drop = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
  }

  /** Stops reading from the server: its writes back up. */
  stall(): void {
    this.stalled = true;
    for (const [[, upstream], state] of this.pairs) {
      if (!state.flowing) continue;
      state.flowing = false;
      upstream.unpipe();
      upstream.pause();
    }
  }

  resume(): void {
    this.stalled = false;
    for (const [[client, upstream], state] of this.pairs) {
      if (state.flowing) continue;
      state.flowing = true;
      upstream.pipe(client);
      upstream.resume();
    }
  }

  /** Drops every connection (as a network failure would). */
  cut(): void {
    for (const [client, upstream] of [...this.pairs.keys()]) {
      client.destroy();
      upstream.destroy();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}
