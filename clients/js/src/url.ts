/** Broker addresses: the URL scheme picks the transport. */

/** The default port of the broker's TCP listener. */
export const DEFAULT_PORT = 7878;

/** Where to connect: a TCP host and port, or a WebSocket URL. */
export type Address =
  | { readonly kind: "tcp"; readonly host: string; readonly port: number }
  | { readonly kind: "ws"; readonly url: string };

/**
 * Parses a broker address: `tcp://host:port`, `host:port` or `host` (port 7878; IPv6 hosts in
 * brackets) → TCP; `ws://…` / `wss://…` → WebSocket (the URL as given). Throws `TypeError`.
 */
export function parseAddress(url: string): Address {
  const match = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(url);
  let rest = url;
  if (match) {
    const scheme = (match[1] ?? "").toLowerCase();
    if (scheme === "ws" || scheme === "wss") {
      return { kind: "ws", url: new URL(url).toString() };
    }
    if (scheme !== "tcp") throw new TypeError(`unsupported scheme ${JSON.stringify(scheme)} (tcp://, ws:// or wss://)`);
    rest = url.slice(match[0].length);
  }
  rest = rest.replace(/\/+$/, "");
  let host: string;
  let portText = "";
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0) throw new TypeError(`unclosed '[' in ${JSON.stringify(url)}`);
    host = rest.slice(1, close);
    const tail = rest.slice(close + 1);
    if (tail && !tail.startsWith(":")) throw new TypeError(`bad address ${JSON.stringify(url)}`);
    portText = tail.slice(1);
  } else if (rest.split(":").length === 2) {
    [host, portText] = rest.split(":") as [string, string];
  } else {
    host = rest;
  }
  if (!host) throw new TypeError(`no host in ${JSON.stringify(url)}`);
  let port = DEFAULT_PORT;
  if (portText) {
    port = /^\d+$/.test(portText) ? Number(portText) : NaN;
    if (!(port > 0 && port < 65536)) throw new TypeError(`bad port ${JSON.stringify(portText)} in ${JSON.stringify(url)}`);
  }
  return { kind: "tcp", host, port };
}
