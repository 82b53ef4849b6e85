/**
 * What the client needs from a byte transport: ordered, reliable bytes both ways. A frame may
 * span several `onData` calls and one call may carry several frames (the decoder reassembles).
 */

import type { Address } from "../url.js";

/** Callbacks a transport calls; set before any byte can arrive. */
export interface TransportHandlers {
  /** Bytes from the broker, in order. The transport never reuses `data` afterwards. */
  onData(data: Uint8Array): void;
  /** The transport closed (after `opened` settled, at most once); `error` when it failed. */
  onClose(error?: unknown): void;
}

/** One open (or opening) connection. */
export interface Transport {
  /** Resolves once bytes can be written; rejects with `ConnectFailed`. */
  readonly opened: Promise<void>;
  /** Queues `data` whole; false when the caller should `await drain()` before writing more. */
  write(data: Uint8Array): boolean;
  /** Resolves when the write buffer drained below its low mark, or the transport closed. */
  drain(): Promise<void>;
  /** Closes at once (pending writes may be dropped); `onClose` follows. Idempotent. */
  close(): void;
}

/** Opens a transport to `address`; `opened` rejects after `timeoutMs`. */
export type Dialer = (address: Address, handlers: TransportHandlers, timeoutMs: number) => Transport;
