"""switchyard: a Python client for the switchyard request/reply + broadcast message broker.

``switchyard.connect`` is the asyncio client; ``switchyard.blocking.connect`` the blocking one.
Both run over the same sans-IO protocol core (``_protocol``: frames; ``_session``: the state of
one connection). Standard library only.
"""

from ._aio import (
    Broadcast,
    Client,
    ConnectionState,
    IncomingRequest,
    PresenceChange,
    PresenceEvent,
    PresenceResync,
    ReconnectPolicy,
    Response,
    connect,
)
from ._errors import (
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
)
from ._protocol import CHANNEL_NAMESPACE, Limits, channel_id

__version__ = "0.1.0"

__all__ = [
    "Broadcast",
    "BroadcastIncomplete",
    "BrokerError",
    "CHANNEL_NAMESPACE",
    "Cancelled",
    "Client",
    "ClientIdInUse",
    "Closed",
    "ConnectFailed",
    "ConnectionLost",
    "ConnectionState",
    "ErrorCode",
    "GoingAway",
    "IncomingRequest",
    "LimitExceeded",
    "Limits",
    "NoPeers",
    "NoReceiver",
    "NotASwitchyardBroker",
    "PeerGone",
    "PresenceChange",
    "PresenceEvent",
    "PresenceResync",
    "ProtocolError",
    "ReconnectPolicy",
    "Reconnecting",
    "Replaced",
    "Response",
    "SwitchyardError",
    "Timeout",
    "TooLarge",
    "Unauthorized",
    "channel_id",
    "connect",
]
