// The connection's defaults, in a module of their own: the API (client.ts) and its implementation (grpc-client.ts)
// both use them, and neither may import the other for them (grpc-client.ts is what client.ts's connect() makes).

export const DEFAULT_PORT = 50000;

/**
 * HTTP/2 receive window of a connection and of each stream. grpc-js keeps Node's 64 KiB default, so a List of
 * 10,000 resources or a few hundred busy watches on one connection wait on WINDOW_UPDATE round trips; 8 MiB lets
 * the server keep sending (bench/RESULTS.md has the figures). It is also what one stream can hold unread.
 */
export const FLOW_CONTROL_WINDOW = 8 << 20;
