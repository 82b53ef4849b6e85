/**
 * The errors of the switchyard client, and the mapping from the broker's ERROR codes
 * (PROTOCOL.md §4). Same names and scopes as the Python client's `_errors.py` and the Rust
 * client's `error.rs`:
 *
 * - connection-wide (the client is closed, every later call fails too): {@link ConnectFailed},
 *   {@link Closed}, {@link ProtocolError} (and {@link NotASwitchyardBroker}), {@link Unauthorized},
 *   {@link Replaced}, {@link ClientIdInUse}, {@link TooLarge}, and a {@link BrokerError} whose `code` is below 0x0100;
 * - the link, not the client (it reconnects on its own): {@link ConnectionLost} (the operation was
 *   in flight: *not* retried, at-most-once) and {@link Reconnecting} (nothing was sent);
 * - one operation only, the client stays usable: everything else.
 */

/** The ERROR codes of PROTOCOL.md §4 (plain numbers, so unknown codes stay representable). */
export const ErrorCode = {
  UNSUPPORTED_VERSION: 0x0001,
  MALFORMED_FRAME: 0x0002,
  UNKNOWN_FRAME_TYPE: 0x0003,
  PAYLOAD_TOO_LARGE: 0x0004,
  HANDSHAKE_REQUIRED: 0x0005,
  DUPLICATE_HELLO: 0x0006,
  CHANNEL_MISMATCH: 0x0007,
  UNEXPECTED_FRAME: 0x0008,
  CLIENT_ID_IN_USE: 0x0009,
  GOING_AWAY: 0x000a,
  HEARTBEAT_TIMEOUT: 0x000b,
  REPLACED: 0x000c,
  UNAUTHORIZED: 0x000d,
  NO_RECEIVER: 0x0100,
  TIMEOUT: 0x0101,
  PEER_GONE: 0x0102,
  CANCELLED: 0x0103,
  NO_PEERS: 0x0104,
  BROADCAST_INCOMPLETE: 0x0105,
  UNKNOWN_REQUEST: 0x0106,
  DUPLICATE_REQUEST: 0x0107,
  STREAM_ORDER: 0x0108,
  LIMIT_EXCEEDED: 0x0109,
  SHUTTING_DOWN: 0x010a,
  PRESENCE_OVERFLOW: 0x0200,
} as const;

/** Options common to every error: the broker's code (when one caused it) and a cause. */
export interface SwitchyardErrorOptions {
  code?: number;
  cause?: unknown;
}

/**
 * Base of every error this package throws. `code` is the broker's ERROR code when the error came
 * from one, else `undefined`; `message` is for humans (never parse it).
 */
export class SwitchyardError extends Error {
  readonly code: number | undefined;

  constructor(message?: string, options: SwitchyardErrorOptions = {}) {
    super(message ?? "switchyard error", options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code;
  }

  /** True when the error closed (or found closed) the whole client. */
  get isConnectionFatal(): boolean {
    return false;
  }
}

/** Base of the errors that close the client. */
abstract class FatalError extends SwitchyardError {
  override get isConnectionFatal(): boolean {
    return true;
  }
}

/** The TCP connection (or WebSocket) to the broker could not be established. */
export class ConnectFailed extends FatalError {
  constructor(message = "could not connect to the broker", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/**
 * The connection dropped while this operation was in flight. The client reconnects on its own;
 * the operation is *not* retried (at-most-once): the broker may or may not have processed it.
 */
export class ConnectionLost extends SwitchyardError {
  constructor(
    message = "the connection to the broker was lost while the operation was in flight (not retried; the client is reconnecting)",
    options?: SwitchyardErrorOptions,
  ) {
    super(message, options);
  }
}

/** The client is between two connections; nothing was sent. `await c.waitConnected()` and retry. */
export class Reconnecting extends SwitchyardError {
  constructor(message = "the client is reconnecting to the broker; nothing was sent", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** The client was closed (by `close()`). */
export class Closed extends FatalError {
  constructor(message = "the client is closed", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** The other end broke the wire protocol; the connection was closed and is not re-opened. */
export class ProtocolError extends FatalError {
  constructor(message = "protocol violation", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** What answered does not speak the switchyard protocol (an HTTP server, a TLS port, ...). */
export class NotASwitchyardBroker extends ProtocolError {
  constructor(message = "the server does not speak the switchyard protocol", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/**
 * An ERROR code without a more specific class (UNKNOWN_REQUEST, DUPLICATE_REQUEST, STREAM_ORDER,
 * a connection-fatal code, or a code newer than this client).
 */
export class BrokerError extends SwitchyardError {
  constructor(message = "the broker reported an error", options?: SwitchyardErrorOptions) {
    super(message, options);
  }

  override get isConnectionFatal(): boolean {
    return this.code !== undefined && this.code < 0x0100;
  }
}

/** The access token is missing or wrong for the channel. Not retried. */
export class Unauthorized extends FatalError {
  constructor(message = "the broker refused the access token", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** A newer connection with the same client id took this one over. Not retried. */
export class Replaced extends FatalError {
  constructor(message = "another connection with the same client id replaced this one", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/**
 * The client id is present on the channel (connected, or departed within its grace period) and
 * the HELLO did not carry its resume secret (PROTOCOL.md §5.2). Not retried.
 */
export class ClientIdInUse extends FatalError {
  constructor(message = "the client id is in use and the resume secret was not presented", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** The broker is shutting down (GOING_AWAY / SHUTTING_DOWN): it takes nothing new. */
export class GoingAway extends SwitchyardError {
  constructor(message = "the broker is shutting down and takes nothing new", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** No receiver took the request within its timeout (or at once, with `noWait`). */
export class NoReceiver extends SwitchyardError {
  constructor(message = "no receiver took the request in time", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/**
 * The operation did not complete in time (the broker's TIMEOUT, or the local deadline). The
 * request may or may not have been processed.
 */
export class Timeout extends SwitchyardError {
  constructor(message = "timed out", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** The receiver holding the request disconnected before its response completed. */
export class PeerGone extends SwitchyardError {
  constructor(message = "the receiver disconnected before responding", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/**
 * The operation was cancelled: by the other side (for a sender: the receiver gave up; for a
 * receiver: the sender gave up, or the request timed out), or locally by an `AbortSignal`
 * (then `cause` is the signal's reason).
 */
export class Cancelled extends SwitchyardError {
  constructor(message = "cancelled by the other side", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** A broadcast found no other peer on the channel; nobody received it. */
export class NoPeers extends SwitchyardError {
  constructor(message = "the broadcast found no other peer on the channel", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** Some peers did not acknowledge a broadcast; `missing` lists them. The others got it. */
export class BroadcastIncomplete extends SwitchyardError {
  /** The client ids of the peers that did not acknowledge. */
  readonly missing: readonly string[];

  constructor(message: string | undefined, missing: readonly string[], options: SwitchyardErrorOptions = {}) {
    super(`${message ?? "some peers did not acknowledge the broadcast"} (${missing.length} missing)`, {
      code: ErrorCode.BROADCAST_INCOMPLETE,
      ...options,
    });
    this.missing = [...missing];
  }
}

/**
 * A broker limit was hit: with one request, the channel's queue or the connection's in-flight
 * limit (retry later); at connect, the broker's connection, channel or peer limit.
 */
export class LimitExceeded extends SwitchyardError {
  constructor(message = "a broker limit was exceeded", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

/** A frame was over the broker's max payload, or a body needed more frames than 2³¹ − 1. */
export class TooLarge extends FatalError {
  constructor(message = "too large for the broker", options?: SwitchyardErrorOptions) {
    super(message, options);
  }
}

type ErrorClass = new (message?: string, options?: SwitchyardErrorOptions) => SwitchyardError;

const BY_CODE: ReadonlyMap<number, ErrorClass> = new Map<number, ErrorClass>([
  [ErrorCode.NO_RECEIVER, NoReceiver],
  [ErrorCode.TIMEOUT, Timeout],
  [ErrorCode.PEER_GONE, PeerGone],
  [ErrorCode.CANCELLED, Cancelled],
  [ErrorCode.NO_PEERS, NoPeers],
  [ErrorCode.GOING_AWAY, GoingAway],
  [ErrorCode.SHUTTING_DOWN, GoingAway],
  [ErrorCode.LIMIT_EXCEEDED, LimitExceeded],
  [ErrorCode.UNAUTHORIZED, Unauthorized],
  [ErrorCode.REPLACED, Replaced],
  [ErrorCode.CLIENT_ID_IN_USE, ClientIdInUse],
  [ErrorCode.PAYLOAD_TOO_LARGE, TooLarge],
]);

/** The error for an ERROR frame with `code`, `text` and its listed client ids `peers`. */
export function errorFromCode(code: number, text: string, peers: readonly string[] = []): SwitchyardError {
  const hex = `0x${code.toString(16).padStart(4, "0")}`;
  if (code === ErrorCode.BROADCAST_INCOMPLETE) {
    return new BroadcastIncomplete(text || undefined, peers);
  }
  const cls = BY_CODE.get(code) ?? BrokerError;
  return new cls(text ? `${text} (code ${hex})` : `code ${hex}`, { code });
}
