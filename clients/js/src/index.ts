/**
 * switchyard-client for Node: `tcp://host:port` / `host:port` over `node:net`, `ws://` / `wss://`
 * over the global `WebSocket` (Node ≥ 22). The sans-IO core is in `./protocol` and `./session`.
 */

import { type Client, type ConnectOptions, connectWith } from "./client.js";
import { dialTcp } from "./transport/tcp.js";
import type { Transport, TransportHandlers } from "./transport/types.js";
import { dialWebSocket } from "./transport/websocket.js";
import type { Address } from "./url.js";

export * from "./api.js";
export { dialTcp } from "./transport/tcp.js";

function dialNode(address: Address, handlers: TransportHandlers, timeoutMs: number): Transport {
  return address.kind === "tcp" ? dialTcp(address, handlers, timeoutMs) : dialWebSocket(address, handlers, timeoutMs);
}

/**
 * Connects to the broker at `url` and joins `options.channel`:
 * `const c = await connect("tcp://127.0.0.1:7878", { channel: "orders" })`.
 */
export function connect(url: string, options: ConnectOptions): Promise<Client> {
  return connectWith(dialNode, url, options);
}
