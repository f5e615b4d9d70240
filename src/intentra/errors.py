"""The public exceptions. Every one says what happened and what to do."""

from __future__ import annotations


class IntentraError(Exception):
    """Base class of every error intentra raises."""


class ConfigError(IntentraError, ValueError):
    """A configuration value is out of range."""


class KeyFileError(IntentraError):
    """A key file is missing, unreadable or malformed."""


class KeyFormatError(IntentraError, ValueError):
    """A key given as text or bytes (not a file) is not base64 of 32 bytes, or not 32 bytes."""


class InvalidArgumentError(IntentraError, ValueError):
    """An API call got an argument it cannot use; the message says what to pass."""


class EnvelopeError(IntentraError, ValueError):
    """Data is not an origin envelope, or cannot be wrapped in one (intentra.envelope)."""


class MessageTooLargeError(IntentraError, ValueError):
    """A message does not fit in one datagram (intentra does not fragment)."""


class InvalidMessageError(InvalidArgumentError):
    """A message argument is empty, of the wrong type, or has a bad intent or priority."""


class HandshakeTimeoutError(IntentraError, TimeoutError):
    """The handshake did not complete within the handshake timeout."""


class OperationTimeoutError(IntentraError, TimeoutError):
    """A call given a ``timeout`` did not finish within it (``intentra.sync``)."""


class ReceiveTimeoutError(OperationTimeoutError):
    """Nothing arrived within the ``timeout`` given to ``receive``."""


class AuthenticationError(IntentraError):
    """The peer's static key is not the pinned one or not on the allow-list."""


class PeerClosedError(IntentraError):
    """The session has ended; ``reason`` says why and ``by_peer`` who ended it."""

    def __init__(self, message: str, reason: int, by_peer: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.by_peer = by_peer


class TransportClosedError(IntentraError):
    """The transport has been closed; create a new one with Transport.bind()."""


class SendQueueFullError(IntentraError):
    """The session's send queue is full (raised only where a caller asked to be told)."""


class BusError(IntentraError):
    """The NATS bus cannot be used: nats-py missing, no server answered, or a bad setting."""
