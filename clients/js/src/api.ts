/** The public surface shared by the Node and browser entry points (everything but `connect`). */

export {
  Broadcast,
  Client,
  IncomingRequest,
  Response,
  connectWith,
  reconnectDelay,
  type BroadcastOptions,
  type ConnectOptions,
  type ConnectionState,
  type PresenceEvent,
  type ReconnectPolicy,
  type RequestOptions,
} from "./client.js";
export {
  BroadcastIncomplete,
  BrokerError,
  Cancelled,
  ClientIdInUse,
  Closed,
  ConnectFailed,
  ConnectionLost,
  ErrorCode,
  GoingAway,
  LimitExceeded,
  NoPeers,
  NoReceiver,
  NotASwitchyardBroker,
  PeerGone,
  ProtocolError,
  Reconnecting,
  Replaced,
  SwitchyardError,
  Timeout,
  TooLarge,
  Unauthorized,
  errorFromCode,
  type SwitchyardErrorOptions,
} from "./errors.js";
export type { Limits } from "./protocol.js";
export type { Dialer, Transport, TransportHandlers } from "./transport/types.js";
export { dialWebSocket } from "./transport/websocket.js";
export { parseAddress, type Address } from "./url.js";
export type { Body, BodySource } from "./util.js";
export { CHANNEL_NAMESPACE, channelId, type Uuid } from "./uuid.js";
