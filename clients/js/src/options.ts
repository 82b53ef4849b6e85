/**
 * The client's option types and small shared helpers: the public {@link ConnectOptions},
 * {@link ReconnectPolicy} (with {@link reconnectDelay}), {@link RequestOptions},
 * {@link BroadcastOptions}, {@link ConnectionState} and {@link PresenceEvent}; the resolved
 * options a {@link Client} runs with; and the internal helpers the other client modules share
 * (the routed {@link Item} type, timeout conversion, which failures allow a reconnect, bounded
 * waits, abort errors).
 */

import {
  BrokerError,
  Cancelled,
  type ClientIdInUse,
  ConnectFailed,
  ConnectionLost,
  ErrorCode,
  GoingAway,
  LimitExceeded,
  SwitchyardError,
  Timeout,
} from "./errors.js";
import type { Client } from "./client-core.js";
import type { Uuid } from "./uuid.js";

/**
 * How a client reconnects after losing its link. The delay before attempt `n` (1-based) is
 * `min(initialDelayMs * multiplier^(n-1), maxDelayMs)`, shortened by a random fraction of at most
 * `jitter` of itself. `maxAttempts` undefined never gives up.
 */
export interface ReconnectPolicy {
  readonly initialDelayMs?: number;
  readonly maxDelayMs?: number;
  readonly multiplier?: number;
  readonly jitter?: number;
  readonly maxAttempts?: number;
}

/** The delay (ms) before reconnect attempt `attempt` (1-based) under `policy`. */
export function reconnectDelay(policy: ReconnectPolicy, attempt: number): number {
  const nominal = Math.min(
    (policy.initialDelayMs ?? 100) * Math.max(policy.multiplier ?? 2, 1) ** (attempt - 1),
    policy.maxDelayMs ?? 5000,
  );
  const jitter = Math.min(Math.max(policy.jitter ?? 0.5, 0), 1);
  return nominal * (1 - jitter * Math.random());
}

/** Options of {@link connectWith} / `connect`. */
export interface ConnectOptions {
  /** The channel: a UUID string, or a name (UUIDv5, PROTOCOL.md §5.1). */
  readonly channel: string;
  /** The access token (UTF-8 when a string); none by default. */
  readonly token?: string | Uint8Array;
  /** The client id to ask for (to resume one); the broker assigns one by default. */
  readonly clientId?: string;
  /**
   * 16 bytes presented in every HELLO, from the first on (PROTOCOL.md §5.2): while `clientId` is
   * present on the channel (connected, or within its grace period after a disconnect) only a
   * HELLO with its secret may take it over, else the connect fails with {@link ClientIdInUse}.
   * Give another client's {@link Client.resumeSecret}, or a secret of your own shared by every
   * process of this client. Default: none at first, then the first WELCOME's secret (reconnects
   * present it by themselves). Keep it as secret as a token.
   */
  readonly resumeSecret?: Uint8Array;
  /** Bound on the transport connect and on the wait for the WELCOME, each. Default 5000. */
  readonly connectTimeoutMs?: number;
  /** Added to a request's timeout for the local deadline (the broker's answer must arrive). Default 2000. */
  readonly deadlineGraceMs?: number;
  /** Unanswered PINGs after which the client gives the link up (when the broker announces heartbeats). Default 3. */
  readonly heartbeatMisses?: number;
  /** The reconnect policy, or `false` to close on the first loss. Default `{}` (the defaults above). */
  readonly reconnect?: ReconnectPolicy | false;
  /** Unconsumed broadcasts kept; beyond, new ones are dropped without an ACK. Default 1024. */
  readonly broadcastQueue?: number;
  /** Unconsumed presence events kept; beyond, the oldest is dropped. Default 1024. */
  readonly presenceQueue?: number;
}

/** The client's link to the broker. */
export type ConnectionState = "connected" | "reconnecting" | "closed";

/**
 * A peer joined (`{ peer, joined: true }`) or left (`{ peer, joined: false }`) the channel; or
 * `{ resync: true }`: the broker dropped presence events while this client was behind
 * (PRESENCE_OVERFLOW, PROTOCOL.md §8), so the events so far may miss some. The client has asked
 * for the peer list again; when the answer arrives, joined/left events follow for the
 * difference, so the events still add up to {@link Client.knownPeers}.
 */
export type PresenceEvent =
  | { readonly peer: Uuid; readonly joined: boolean; readonly resync?: undefined }
  | { readonly resync: true; readonly peer?: undefined; readonly joined?: undefined };

/** Options of a request. */
export interface RequestOptions {
  /** Bounds waiting for a receiver and for the complete response; default: the broker's. */
  readonly timeoutMs?: number;
  /** Fail at once with {@link NoReceiver} when no receiver has a free slot. */
  readonly noWait?: boolean;
  /** Aborting sends CANCEL; the request rejects with {@link Cancelled} (`cause`: the signal's reason). */
  readonly signal?: AbortSignal;
}

/** Options of a broadcast. */
export interface BroadcastOptions {
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** @internal One chunk of a request or response body, as routed to its stream. */
export interface Chunk {
  readonly data: Uint8Array;
  readonly end: boolean;
  readonly responder?: Uuid;
}
/** @internal What a stream's inbox holds: a chunk, or the error that ends it. */
export type Item = Chunk | SwitchyardError;

/** @internal The TIMEOUT field of a frame: 0 (the broker's default) or whole ms, clamped to u32. */
export function timeoutField(timeoutMs: number | undefined): number {
  if (timeoutMs === undefined || !(timeoutMs > 0)) return 0;
  return Math.max(1, Math.min(Math.ceil(timeoutMs), 0xffff_ffff));
}

/** @internal Whether losing a link for `reason` allows a reconnect. */
export function recoverable(reason: SwitchyardError): boolean {
  if (
    reason instanceof ConnectionLost ||
    reason instanceof Timeout ||
    reason instanceof GoingAway ||
    reason instanceof ConnectFailed ||
    reason instanceof LimitExceeded
  ) {
    return true;
  }
  return reason instanceof BrokerError && reason.code === ErrorCode.HEARTBEAT_TIMEOUT;
}

/** Resolves after `ms` or when `signal` fires, whichever first; clears its timer either way. */
export function raceTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => SwitchyardError): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), Math.max(0, ms));
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** @internal The {@link Cancelled} an aborted operation rejects with. */
export function abortError(signal: AbortSignal, what: string): Cancelled {
  return new Cancelled(`${what} was aborted`, { cause: signal.reason });
}

/** @internal The options a {@link Client} runs with (defaults applied). */
export interface ResolvedOptions {
  readonly token: Uint8Array;
  /** The configured resume secret, or nil. */
  readonly resume: Uuid;
  readonly connectTimeoutMs: number;
  readonly deadlineGraceMs: number;
  readonly heartbeatMisses: number;
  readonly reconnect: ReconnectPolicy | false;
}
