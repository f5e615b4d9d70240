"""intentra: an encrypted, authenticated, DoS-resistant multi-peer UDP transport.

Two delivery intents (RELIABLE: once, in order; REALTIME: on arrival, never
late) and a 0-7 priority, over a Noise XX handshake with stateless cookies.
See README.md for a tour and docs/protocol.md for the wire protocol.
"""

from intentra.aio.peer import Message, Peer, PeerEvent
from intentra.aio.transport import Transport
from intentra.config import EndpointConfig
from intentra.constants import CloseReason, Intent
from intentra.errors import (
    AuthenticationError,
    ConfigError,
    HandshakeTimeoutError,
    IntentraError,
    InvalidArgumentError,
    InvalidMessageError,
    KeyFileError,
    KeyFormatError,
    MessageTooLargeError,
    OperationTimeoutError,
    PeerClosedError,
    ReceiveTimeoutError,
    SendQueueFullError,
    TransportClosedError,
)
from intentra.keys import PrivateKey, PublicKey
from intentra.status import PeerStatus

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CloseReason",
    "ConfigError",
    "EndpointConfig",
    "HandshakeTimeoutError",
    "Intent",
    "IntentraError",
    "InvalidArgumentError",
    "InvalidMessageError",
    "KeyFileError",
    "KeyFormatError",
    "Message",
    "MessageTooLargeError",
    "OperationTimeoutError",
    "Peer",
    "PeerClosedError",
    "PeerEvent",
    "PeerStatus",
    "PrivateKey",
    "PublicKey",
    "ReceiveTimeoutError",
    "SendQueueFullError",
    "Transport",
    "TransportClosedError",
    "__version__",
]
