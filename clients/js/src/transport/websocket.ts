/**
 * The WebSocket transport, over the global `WebSocket` (browsers, Node ≥ 22). Binary messages
 * carry protocol bytes; a frame may span messages and a message may carry several frames. A text
 * message is a protocol violation.
 *
 * `WebSocket` has no drain event: when `bufferedAmount` is above {@link HIGH_WATER}, `drain()`
 * re-checks it every {@link DRAIN_POLL_MS} until it is below {@link LOW_WATER} (a timer, not a
 * busy loop).
 */

import { ConnectFailed, ProtocolError } from "../errors.js";
import type { Address } from "../url.js";
import type { Transport, TransportHandlers } from "./types.js";

const HIGH_WATER = 4 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;
const DRAIN_POLL_MS = 5;

/** Connects over WebSocket (`ws://` or `wss://`). */
export function dialWebSocket(address: Address, handlers: TransportHandlers, timeoutMs: number): Transport {
  if (address.kind !== "ws") throw new TypeError("dialWebSocket needs a ws:// or wss:// address");
  const Ctor: typeof WebSocket | undefined = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  if (Ctor === undefined) {
    const opened = Promise.reject(new ConnectFailed("no global WebSocket here (Node ≥ 22 or a browser is needed)"));
    opened.catch(() => undefined);
    return { opened, write: () => false, drain: () => Promise.resolve(), close: () => undefined };
  }
  const ws = new Ctor(address.url);
  ws.binaryType = "arraybuffer";
  let open = false;
  let closed = false;
  let failure: unknown;
  const opened = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new ConnectFailed(`connecting to ${address.url} timed out after ${timeoutMs} ms`));
      ws.close();
    }, timeoutMs);
    ws.addEventListener("open", () => {
      clearTimeout(timer);
      open = true;
      resolve();
    });
    ws.addEventListener("close", (ev) => {
      clearTimeout(timer);
      if (!open) reject(new ConnectFailed(`could not connect to ${address.url} (close code ${ev.code})`));
    });
  });
  opened.catch(() => undefined);
  const finish = (): void => {
    if (closed) return;
    closed = true;
    if (open) handlers.onClose(failure);
  };
  ws.addEventListener("message", (ev: MessageEvent) => {
    if (closed) return;
    if (ev.data instanceof ArrayBuffer) {
      handlers.onData(new Uint8Array(ev.data));
    } else {
      failure = new ProtocolError("the server sent a text WebSocket message (the protocol is binary)");
      ws.close();
      finish();
    }
  });
  ws.addEventListener("error", () => {
    failure ??= new Error("WebSocket error");
  });
  ws.addEventListener("close", finish);
  return {
    opened,
    write: (data) => {
      if (ws.readyState !== ws.OPEN) return false;
      ws.send(data);
      return ws.bufferedAmount < HIGH_WATER;
    },
    drain: () =>
      new Promise<void>((resolve) => {
        const check = (): void => {
          if (closed || ws.bufferedAmount < LOW_WATER) resolve();
          else setTimeout(check, DRAIN_POLL_MS);
        };
        check();
      }),
    close: () => {
      ws.close();
      finish();
    },
  };
}
