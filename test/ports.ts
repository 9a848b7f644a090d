// Test-only: ports for servers a test binds later, or binds again after a restart.
import { createServer } from 'node:net';

/**
 * A port free now, for a server a test binds later (or binds again after a restart). Chosen below the kernel's
 * ephemeral range (32768 and up here), where no bind(0) and no outgoing connection of another test can take it
 * meanwhile (with the fleet tests' hundreds of connections, one did); checked by binding it.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (await bindable(port)) return port;
  }
  throw new Error('no free port found between 20000 and 32000');
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}
