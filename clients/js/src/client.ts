/**
 * The client: {@link connectWith} and {@link Client}, over the sans-IO {@link Session} and any
 * {@link Transport}. Transport-independent: the entry points (`index.ts` for Node, `browser.ts`)
 * pass the dialer.
 *
 * Modules: `client-core.ts` ({@link Client}: lifecycle, reconnect loop, queues, operations),
 * `link.ts` ({@link Link}: one connection, its event routing and routes, heartbeat),
 * `streams.ts` ({@link Response}, {@link IncomingRequest}, {@link Broadcast}), `options.ts`
 * (option types, shared helpers). This module holds {@link connectWith} and re-exports the
 * public names of the others.
 *
 * Structure: one {@link Link} per connection feeds its session and routes each event,
 * synchronously, to the operation waiting for it (an {@link Inbox} or a {@link Deferred}). No
 * locks: everything runs on the event loop, and every frame is written with one `write` call, so
 * frames never interleave.
 *
 * Invariants (as the Python and Rust clients):
 * - An operation registers its route *before* its first frame is written, so no answer arrives
 *   unrouted; it keeps the link it was registered on and writes only there (a frame of an
 *   operation started on one connection never goes out on the next: at-most-once).
 * - Every wait is bounded or wakeable: waits for the broker use the operation's timeout plus a
 *   grace period (`deadlineGraceMs`); losing the link fails every route of that link at once
 *   ({@link ConnectionLost}); closing the client wakes every waiter with the reason.
 * - An operation that ends on the client side without the broker knowing (local deadline, abort,
 *   a failing body source, an iteration left early) sends the CANCEL of its direction.
 * - Reconnection: exponential backoff with jitter under the same client id, the receive window
 *   re-issued first. Operations in flight fail with {@link ConnectionLost} (never retried), new
 *   ones with {@link Reconnecting} until the link is back; the `requests()` / `broadcasts()` /
 *   `presence()` iterations go on. No reconnect after REPLACED, UNAUTHORIZED, CLIENT_ID_IN_USE, a
 *   protocol error, nor after {@link Client.close}.
 * - Identity (PROTOCOL.md §5.2): every HELLO presents the resume secret — the `resumeSecret`
 *   option, else the first WELCOME's — so a reconnect within the presence grace period resumes
 *   the same client id, unseen by the peers.
 */

import { Client } from "./client-core.js";
import type { ConnectOptions } from "./options.js";
import type { Dialer } from "./transport/types.js";
import { parseAddress } from "./url.js";
import { NIL_UUID, type Uuid, channelId as deriveChannelId, parseUuid, uuidFromBytes } from "./uuid.js";

export { Client } from "./client-core.js";
export {
  reconnectDelay,
  type BroadcastOptions,
  type ConnectOptions,
  type ConnectionState,
  type PresenceEvent,
  type ReconnectPolicy,
  type RequestOptions,
} from "./options.js";
export { Broadcast, IncomingRequest, Response } from "./streams.js";

/**
 * Connects to the broker at `url` over the transport `dial` opens, joins `options.channel`, and
 * resolves once the broker welcomed the client. The first connection is not retried: it rejects
 * with {@link ConnectFailed}, {@link Unauthorized}, {@link NotASwitchyardBroker}, {@link Timeout},
 * {@link LimitExceeded}, {@link ClientIdInUse}, ...
 */
export async function connectWith(dial: Dialer, url: string, options: ConnectOptions): Promise<Client> {
  const address = parseAddress(url);
  const token = options.token === undefined ? new Uint8Array(0) : typeof options.token === "string" ? new TextEncoder().encode(options.token) : options.token;
  let resume = NIL_UUID;
  if (options.resumeSecret !== undefined) {
    if (!(options.resumeSecret instanceof Uint8Array) || options.resumeSecret.length !== 16) {
      throw new TypeError("resumeSecret is 16 bytes (a Uint8Array)");
    }
    resume = uuidFromBytes(options.resumeSecret);
  }
  let clientId: Uuid | undefined;
  if (options.clientId !== undefined) {
    clientId = parseUuid(options.clientId);
    if (clientId === undefined) throw new TypeError(`clientId ${JSON.stringify(options.clientId)} is not a UUID`);
  }
  const client = new Client(
    dial,
    address,
    deriveChannelId(options.channel),
    clientId,
    {
      token,
      resume,
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      deadlineGraceMs: options.deadlineGraceMs ?? 2000,
      heartbeatMisses: options.heartbeatMisses ?? 3,
      reconnect: options.reconnect ?? {},
    },
    { broadcast: options.broadcastQueue ?? 1024, presence: options.presenceQueue ?? 1024 },
  );
  const link = await client.openLink();
  client.install(link);
  return client;
}
