/**
 * switchyard-client for browsers (and any runtime with a global `WebSocket`): `ws://` / `wss://`
 * only. Does not import `node:net`.
 */

import { type Client, type ConnectOptions, connectWith } from "./client.js";
import { ConnectFailed } from "./errors.js";
import type { Transport, TransportHandlers } from "./transport/types.js";
import { dialWebSocket } from "./transport/websocket.js";
import type { Address } from "./url.js";

export * from "./api.js";

function dialBrowser(address: Address, handlers: TransportHandlers, timeoutMs: number): Transport {
  if (address.kind !== "ws") {
    const opened = Promise.reject(new ConnectFailed("plain TCP is not available here: use a ws:// or wss:// URL"));
    opened.catch(() => undefined);
    return { opened, write: () => false, drain: () => Promise.resolve(), close: () => undefined };
  }
  return dialWebSocket(address, handlers, timeoutMs);
}

/**
 * Connects to the broker's WebSocket listener at `url` and joins `options.channel`:
 * `const c = await connect("wss://broker.example/ws", { channel: "orders" })`.
 */
export function connect(url: string, options: ConnectOptions): Promise<Client> {
  return connectWith(dialBrowser, url, options);
}
