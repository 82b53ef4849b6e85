/** The `node:net` TCP transport (Node only; the browser entry point never imports this file). */

import * as net from "node:net";

import { ConnectFailed } from "../errors.js";
import type { Address } from "../url.js";
import type { Transport, TransportHandlers } from "./types.js";

/** Connects over TCP (Nagle off: frames are written whole, latency matters). */
export function dialTcp(address: Address, handlers: TransportHandlers, timeoutMs: number): Transport {
  if (address.kind !== "tcp") throw new TypeError("dialTcp needs a tcp address");
  const where = `${address.host}:${address.port}`;
  const socket = net.connect({ host: address.host, port: address.port });
  socket.setNoDelay(true);
  let open = false;
  let lastError: unknown;
  const opened = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new ConnectFailed(`connecting to ${where} timed out after ${timeoutMs} ms`));
      socket.destroy();
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      open = true;
      resolve();
    });
    socket.once("close", () => {
      clearTimeout(timer);
      if (!open) reject(new ConnectFailed(`could not connect to ${where}: ${String(lastError ?? "closed")}`, { cause: lastError }));
    });
  });
  opened.catch(() => undefined); // observed by the caller; never an unhandled rejection
  socket.on("error", (err) => {
    lastError = err;
  });
  socket.on("data", (data: Buffer) => handlers.onData(data));
  socket.on("close", () => {
    if (open) handlers.onClose(lastError);
  });
  return {
    opened,
    write: (data) => socket.write(data),
    drain: () =>
      new Promise<void>((resolve) => {
        if (socket.destroyed || !socket.writableNeedDrain) return resolve();
        const done = (): void => {
          socket.off("drain", done);
          socket.off("close", done);
          resolve();
        };
        socket.on("drain", done);
        socket.on("close", done);
      }),
    close: () => {
      socket.destroy();
    },
  };
}
