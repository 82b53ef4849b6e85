"""The exceptions of the switchyard client, and the mapping from the broker's ERROR codes.

Scope of each exception, at a glance (as in the Rust client's ``error.rs``):

- connection-wide, the client is closed and every later call fails too: :class:`ConnectFailed`,
  :class:`Closed`, :class:`ProtocolError` (and :class:`NotASwitchyardBroker`),
  :class:`Unauthorized`, :class:`Replaced`, :class:`ClientIdInUse`, :class:`TooLarge`, and any :class:`BrokerError`
  whose :attr:`~SwitchyardError.code` is below ``0x0100``;
- the link, not the client (it is reconnecting on its own, retry later):
  :class:`ConnectionLost` (the operation was in flight: *not* retried, at-most-once) and
  :class:`Reconnecting` (the operation was never sent);
- one operation only, the client stays usable: everything else.
"""

from __future__ import annotations

import uuid
from typing import Optional, Sequence

__all__ = [
    "SwitchyardError",
    "ConnectFailed",
    "ConnectionLost",
    "Reconnecting",
    "Closed",
    "ProtocolError",
    "NotASwitchyardBroker",
    "BrokerError",
    "Unauthorized",
    "Replaced",
    "ClientIdInUse",
    "GoingAway",
    "NoReceiver",
    "Timeout",
    "PeerGone",
    "Cancelled",
    "NoPeers",
    "BroadcastIncomplete",
    "LimitExceeded",
    "TooLarge",
    "ErrorCode",
    "error_from_code",
]


class ErrorCode:
    """The ERROR codes of PROTOCOL.md §4 (plain ints, so unknown codes stay representable)."""

    UNSUPPORTED_VERSION = 0x0001
    MALFORMED_FRAME = 0x0002
    UNKNOWN_FRAME_TYPE = 0x0003
    PAYLOAD_TOO_LARGE = 0x0004
    HANDSHAKE_REQUIRED = 0x0005
    DUPLICATE_HELLO = 0x0006
    CHANNEL_MISMATCH = 0x0007
    UNEXPECTED_FRAME = 0x0008
    CLIENT_ID_IN_USE = 0x0009
    GOING_AWAY = 0x000A
    HEARTBEAT_TIMEOUT = 0x000B
    REPLACED = 0x000C
    UNAUTHORIZED = 0x000D
    NO_RECEIVER = 0x0100
    TIMEOUT = 0x0101
    PEER_GONE = 0x0102
    CANCELLED = 0x0103
    NO_PEERS = 0x0104
    BROADCAST_INCOMPLETE = 0x0105
    UNKNOWN_REQUEST = 0x0106
    DUPLICATE_REQUEST = 0x0107
    STREAM_ORDER = 0x0108
    LIMIT_EXCEEDED = 0x0109
    SHUTTING_DOWN = 0x010A
    #: A notice (request id nil, not fatal): presence frames were dropped (PROTOCOL.md §8).
    PRESENCE_OVERFLOW = 0x0200


class SwitchyardError(Exception):
    """Base of every error this package raises.

    ``code`` is the broker's ERROR code when the error came from one, else ``None``;
    ``message`` is a human-readable explanation (never parse it).
    """

    default_message = "switchyard error"

    def __init__(self, message: Optional[str] = None, *, code: Optional[int] = None) -> None:
        self.message = message if message is not None else self.default_message
        self.code = code
        super().__init__(self.message)

    @property
    def is_connection_fatal(self) -> bool:
        """True when the error closed (or found closed) the whole client."""
        return False


class _Fatal(SwitchyardError):
    @property
    def is_connection_fatal(self) -> bool:
        return True


class ConnectFailed(_Fatal):
    """The TCP (or TLS) connection to the broker could not be established. Check the address."""

    default_message = "could not connect to the broker"


class ConnectionLost(SwitchyardError):
    """The connection dropped while this operation was in flight.

    The client reconnects on its own; the operation is *not* retried (at-most-once): the broker
    may or may not have processed it. Retry it yourself if it is idempotent.
    """

    default_message = (
        "the connection to the broker was lost while the operation was in flight "
        "(not retried; the client is reconnecting)"
    )


class Reconnecting(SwitchyardError):
    """The client is between two connections; nothing was sent. Wait and retry."""

    default_message = "the client is reconnecting to the broker; nothing was sent"


class Closed(_Fatal):
    """The client was closed (by :meth:`close`). Connect again if needed."""

    default_message = "the client is closed"


class ProtocolError(_Fatal):
    """The other end broke the wire protocol; the connection was closed. Report it."""

    default_message = "protocol violation"


class NotASwitchyardBroker(ProtocolError):
    """What answered at the address does not speak the switchyard protocol (an HTTP server,
    a TLS port reached without TLS, ...)."""

    default_message = "the server does not speak the switchyard protocol"


class BrokerError(SwitchyardError):
    """An ERROR code without a more specific exception (UNKNOWN_REQUEST, DUPLICATE_REQUEST,
    STREAM_ORDER, a connection-fatal code, or a code newer than this client)."""

    default_message = "the broker reported an error"

    @property
    def is_connection_fatal(self) -> bool:
        return self.code is not None and self.code < 0x0100


class Unauthorized(_Fatal):
    """The access token is missing or wrong for the channel. Not retried."""

    default_message = "the broker refused the access token"


class Replaced(_Fatal):
    """A newer connection with the same client id took this one over. Not retried."""

    default_message = "another connection with the same client id replaced this one"


class ClientIdInUse(_Fatal):
    """The client id is present on the channel and the HELLO did not carry its resume secret
    (PROTOCOL.md §5). Not retried."""

    default_message = "the client id is in use and the resume secret was not presented"


class GoingAway(SwitchyardError):
    """The broker is shutting down (GOING_AWAY / SHUTTING_DOWN): it takes nothing new."""

    default_message = "the broker is shutting down and takes nothing new"


class NoReceiver(SwitchyardError):
    """No receiver took the request within its timeout (or at once, with ``no_wait``)."""

    default_message = "no receiver took the request in time"


class Timeout(SwitchyardError):
    """The operation did not complete in time (the broker's TIMEOUT, or the local deadline).
    The request may or may not have been processed."""

    default_message = "timed out"


class PeerGone(SwitchyardError):
    """The receiver holding the request disconnected before its response completed."""

    default_message = "the receiver disconnected before responding"


class Cancelled(SwitchyardError):
    """The other side cancelled (for a sender: the receiver gave up; for a receiver: the sender
    gave up, or the request timed out). Stop working on it."""

    default_message = "cancelled by the other side"


class NoPeers(SwitchyardError):
    """A broadcast found no other peer on the channel; nobody received it."""

    default_message = "the broadcast found no other peer on the channel"


class BroadcastIncomplete(SwitchyardError):
    """Some peers did not acknowledge a broadcast; ``missing`` lists them. The others got it."""

    default_message = "some peers did not acknowledge the broadcast"

    def __init__(
        self,
        message: Optional[str] = None,
        *,
        code: Optional[int] = ErrorCode.BROADCAST_INCOMPLETE,
        missing: Sequence[uuid.UUID] = (),
    ) -> None:
        self.missing = list(missing)
        text = message if message is not None else self.default_message
        super().__init__(f"{text} ({len(self.missing)} missing)", code=code)


class LimitExceeded(SwitchyardError):
    """A broker limit was hit: with one request, the channel's queue or the connection's
    in-flight limit (retry later); at connect, the broker's connection, channel or peer limit."""

    default_message = "a broker limit was exceeded"

    @property
    def is_connection_fatal(self) -> bool:
        return False


class TooLarge(_Fatal):
    """A frame was over the broker's max payload, or a body needed more frames than a stream's
    31-bit sequence can count."""

    default_message = "too large for the broker"


_BY_CODE = {
    ErrorCode.NO_RECEIVER: NoReceiver,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.PEER_GONE: PeerGone,
    ErrorCode.CANCELLED: Cancelled,
    ErrorCode.NO_PEERS: NoPeers,
    ErrorCode.GOING_AWAY: GoingAway,
    ErrorCode.SHUTTING_DOWN: GoingAway,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.REPLACED: Replaced,
    ErrorCode.CLIENT_ID_IN_USE: ClientIdInUse,
    ErrorCode.PAYLOAD_TOO_LARGE: TooLarge,
}


def error_from_code(code: int, message: str, peers: Sequence[uuid.UUID] = ()) -> SwitchyardError:
    """The exception for an ERROR frame with ``code``, ``message`` and its listed ``peers``."""
    text = f"{message} (code 0x{code:04x})" if message else f"code 0x{code:04x}"
    if code == ErrorCode.BROADCAST_INCOMPLETE:
        return BroadcastIncomplete(message or None, missing=peers)
    cls = _BY_CODE.get(code, BrokerError)
    return cls(text, code=code)
